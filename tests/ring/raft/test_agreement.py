"""Log agreement (6.824 2B): basic agreement, failures, no agreement without a majority, concurrent
proposals, rejoin of a partitioned leader, fast backup over divergent logs, message counts."""

from __future__ import annotations

import random

import pytest

from ring.raft import AppendEntries, AppendResponse

from .sim import Cluster, seeds


@pytest.mark.parametrize("seed", seeds(5))
def test_basic_agree(seed: int) -> None:
    c = Cluster(3, seed)
    ld = c.check_one_leader()
    noop = c.nodes[ld].r.log.last_index  # after the 3 bootstrap configuration entries and the no-op
    assert noop == 4
    for k in range(1, 4):
        assert c.applied_count(noop + k)[0] == 0, "committed before proposed"
        idx = c.one(b"cmd%d" % k, 3, retry=False)
        assert idx == noop + k, f"seed {seed}: got index {idx}, want {noop + k}"


@pytest.mark.parametrize("seed", seeds(5))
def test_follower_failure(seed: int) -> None:
    c = Cluster(3, seed)
    c.one(b"101", 3)
    ld = c.check_one_leader()
    f1, f2 = sorted(i for i in c.nodes if i != ld)
    c.isolate(f1)
    c.one(b"102", 2)
    c.run(10)
    c.one(b"103", 2)
    c.isolate(f2)  # the leader is alone now
    ld2 = c.leader()
    assert ld2 is not None
    idx = c.propose(b"104", via=ld2)
    assert idx is not None
    c.run(30)
    assert c.applied_count(idx)[1] != b"104", f"seed {seed}: committed with no majority"


@pytest.mark.parametrize("seed", seeds(5))
def test_leader_failure(seed: int) -> None:
    c = Cluster(3, seed)
    c.one(b"101", 3)
    ld1 = c.check_one_leader()
    c.isolate(ld1)
    c.one(b"102", 2)
    c.run(10)
    c.one(b"103", 2)
    ld2 = c.check_one_leader()
    c.partition([ld1], [ld2], [i for i in c.nodes if i not in (ld1, ld2)])
    indices = [c.propose(b"104", via=i) for i in c.nodes]
    c.run(30)
    for idx in indices:
        if idx is not None:
            assert c.applied_count(idx)[1] != b"104", f"seed {seed}: committed with no majority"


@pytest.mark.parametrize("seed", seeds(5))
def test_fail_agree_then_rejoin(seed: int) -> None:
    c = Cluster(3, seed)
    c.one(b"101", 3)
    ld = c.check_one_leader()
    f = next(i for i in c.nodes if i != ld)
    c.isolate(f)
    for k in range(102, 106):
        c.one(b"%d" % k, 2)
    c.heal()
    c.one(b"106", 3)  # the rejoined follower catches up
    c.run(5)
    c.one(b"107", 3)


@pytest.mark.parametrize("seed", seeds(5))
def test_fail_no_agree(seed: int) -> None:
    c = Cluster(5, seed)
    c.one(b"10", 5)
    ld = c.check_one_leader()
    followers = sorted(i for i in c.nodes if i != ld)
    c.partition([ld, followers[0]], *[[f] for f in followers[1:]])
    last = c.nodes[ld].r.log.last_index
    idx = c.propose(b"20", via=ld)
    assert idx == last + 1, f"seed {seed}: expected index {last + 1}, got {idx}"
    c.run(40)
    assert c.applied_count(idx)[0] == 0, f"seed {seed}: committed without a majority"
    c.heal()
    c.check_one_leader()
    c.one(b"30", 5)


@pytest.mark.parametrize("seed", seeds(5))
def test_concurrent_starts(seed: int) -> None:
    c = Cluster(3, seed)
    ld = c.check_one_leader()
    term = c.nodes[ld].r.term
    indices = [c.propose(b"c%d" % k, via=ld) for k in range(5)]
    assert None not in indices
    assert c.run_until(lambda: all(c.applied_count(i)[0] == 3 for i in indices if i is not None), 30)
    if c.nodes[ld].r.term == term:  # no election meanwhile: all five landed, in proposal order
        got = [c.applied_count(i)[1] for i in indices if i is not None]
        assert got == [b"c%d" % k for k in range(5)]


@pytest.mark.parametrize("seed", seeds(5))
def test_rejoin_partitioned_leader(seed: int) -> None:
    c = Cluster(3, seed)
    c.one(b"101", 3)
    ld1 = c.check_one_leader()
    c.isolate(ld1)
    for k in (102, 103, 104):  # the old leader appends entries nobody else will ever have
        c.propose(b"%d" % k, via=ld1)
    c.one(b"103", 2)
    ld2 = c.check_one_leader()
    c.partition([i for i in c.nodes if i != ld2], [ld2])  # new leader out, old leader back
    c.one(b"104", 2)
    c.heal()
    c.one(b"105", 3)


@pytest.mark.parametrize("seed", seeds(5))
def test_backup_over_divergent_logs(seed: int) -> None:
    """6.824 TestBackup2B: a leader quickly brings back followers whose logs diverge by many entries."""
    c = Cluster(5, seed)
    rng = random.Random(seed)
    c.one(b"start", 5)
    ld1 = c.check_one_leader()
    others = sorted(i for i in c.nodes if i != ld1)
    f1 = others[0]
    c.partition([ld1, f1], others[1:])
    for k in range(50):  # lots of entries that will never commit
        c.propose(b"lost1-%d" % k, via=ld1)
    c.run(5)
    c.one(b"maj", 3)  # the other three elect a leader and go on
    for k in range(50):
        c.one(b"ok1-%d" % k, 3)
    ld2 = c.check_one_leader()
    rest = [i for i in others[1:] if i != ld2]
    out = rng.choice(rest)
    c.partition([ld2] + [i for i in rest if i != out], [out], [ld1, f1])
    for k in range(50):
        c.propose(b"lost2-%d" % k, via=ld2)
    c.run(5)
    c.partition([ld1, f1, out], [ld2] + [i for i in rest if i != out])
    c.one(b"back", 3)
    for k in range(50):
        c.one(b"ok2-%d" % k, 3)
    c.heal()
    c.one(b"all", 5)


def test_fast_backup_needs_one_round_trip_per_term() -> None:
    """A follower with 100 conflicting entries in one term is repaired with O(terms) rejections, not O(n)."""
    c = Cluster(3, 11)
    c.one(b"base", 3)
    ld1 = c.check_one_leader()
    f1, f2 = sorted(i for i in c.nodes if i != ld1)
    c.partition([ld1], [f1, f2])
    for k in range(100):
        c.propose(b"stale-%d" % k, via=ld1)
    c.run(2)
    ld2 = c.check_one_leader(among=[f1, f2])
    for k in range(30):
        c.one(b"new-%d" % k, 2)
    c.sent.clear()
    rejections: list[AppendResponse] = []
    orig = c._send

    def spy(m: object) -> None:
        if isinstance(m, AppendResponse) and not m.success and m.frm == ld1:
            rejections.append(m)
        orig(m)  # type: ignore[arg-type]

    c._send = spy  # type: ignore[method-assign]
    c.heal()
    c.one(b"healed", 3)
    assert c.nodes[ld1].r.log.term(c.nodes[ld1].r.log.last_index) == c.nodes[ld2].r.term
    assert len(rejections) <= 3, f"{len(rejections)} rejections: fast backup is not skipping whole terms"


@pytest.mark.parametrize("seed", seeds(3))
def test_rpc_count(seed: int) -> None:
    """Message counts stay bounded: elections are cheap, agreement costs about one round trip per peer per
    command, and an idle cluster sends only heartbeats."""
    c = Cluster(3, seed)
    c.check_one_leader()
    election = sum(c.sent.values())
    assert election < 60, f"seed {seed}: {election} messages to elect a leader"
    c.sent.clear()
    ld = c.check_one_leader()
    term = c.nodes[ld].r.term
    for k in range(10):
        c.one(b"r%d" % k, 3)
    if c.nodes[ld].r.term == term:
        appends = c.sent["AppendEntries"]
        assert appends <= (10 + 3) * 2, f"seed {seed}: {appends} appends for 10 commands"
    c.sent.clear()
    c.run(20)
    idle = c.sent
    assert set(idle) <= {"Heartbeat", "HeartbeatResponse"}, f"seed {seed}: idle traffic {idle}"
    assert idle["Heartbeat"] <= 2 * 21, f"seed {seed}: {idle['Heartbeat']} heartbeats in 20 ticks"


def test_catch_up_appends_respect_max_entries_per_msg() -> None:
    c = Cluster(3, 5)
    ld = c.check_one_leader()
    lagger = sorted(i for i in c.nodes if i != ld)[0]
    c.isolate(lagger)
    for k in range(200):
        c.nodes[ld].r.propose(b"b%d" % k)
    c.process(c.nodes[ld])
    c.run(3)
    captured: list[AppendEntries] = []
    orig = c._send

    def spy(m: object) -> None:
        if isinstance(m, AppendEntries) and m.to == lagger:
            captured.append(m)
        orig(m)  # type: ignore[arg-type]

    c._send = spy  # type: ignore[method-assign]
    c.heal()
    last = c.nodes[ld].r.log.last_index
    assert c.run_until(lambda: c.applied_count(last)[0] == 3, 20)
    sizes = [len(m.entries) for m in captured]
    assert max(sizes) == c.cfg.max_entries_per_msg  # batched, and never more than the limit
    assert sum(1 for n in sizes if n) <= 6, f"catch-up took {sizes}"
