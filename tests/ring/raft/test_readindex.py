"""ReadIndex: linearizable reads without writing to the log (Raft thesis 6.4)."""

from __future__ import annotations

import random

import pytest

from ring.raft import NotLeader, RaftConfig, ReadState

from .sim import Cluster, seeds


def _read(c: Cluster, via: str, ctx: bytes, max_ticks: int = 10) -> ReadState | None:
    node = c.nodes[via]
    node.r.read_index(ctx)
    c.process(node)

    def got() -> ReadState | None:
        return next((rs for rs in node.read_states if rs.ctx == ctx), None)

    c.run_until(lambda: got() is not None, max_ticks)
    return got()


def test_read_index_basic() -> None:
    c = Cluster(3, 1)
    ld = c.check_one_leader()
    idx = c.one(b"w1", 3)
    rs = _read(c, ld, b"r1")
    assert rs is not None and rs.index >= idx
    f = next(i for i in c.nodes if i != ld)
    with pytest.raises(NotLeader) as err:
        c.nodes[f].r.read_index(b"r2")
    assert err.value.leader_hint == ld


def test_single_voter_reads_immediately() -> None:
    c = Cluster(1, 1)
    ld = c.check_one_leader()
    c.one(b"w", 1)
    node = c.nodes[ld]
    node.r.read_index(b"now")
    rd = node.r.ready()
    assert [rs.ctx for rs in rd.read_states] == [b"now"]
    node.r.advance(rd)


def test_read_waits_for_leader_first_commit() -> None:
    c = Cluster(3, 4, cfg=RaftConfig(pre_vote=False, check_quorum=False))
    c.campaign("n1")
    c.one(b"x", 3)
    c.partition(["n1"], ["n2", "n3"])
    c.intercept = lambda m: None if type(m).__name__ == "AppendEntries" else m
    c.campaign("n2")
    r = c.nodes["n2"].r
    noop = r.log.last_index
    assert r.commit < noop
    r.read_index(b"early")
    c.run(3)
    assert c.nodes["n2"].read_states == [], "served a read before knowing the commit index is current"
    c.intercept = None
    c.run(3)
    assert [rs.ctx for rs in c.nodes["n2"].read_states] == [b"early"]
    assert c.nodes["n2"].read_states[0].index >= noop  # covers everything committed before n2 led


@pytest.mark.parametrize("seed", seeds(5))
def test_stale_leader_cannot_serve_reads(seed: int) -> None:
    c = Cluster(5, seed, cfg=RaftConfig(check_quorum=False))  # even without check-quorum stepping it down
    old = c.check_one_leader()
    c.one(b"before", 5)
    minority = [old, next(i for i in c.nodes if i != old)]
    c.partition(minority, [i for i in c.nodes if i not in minority])
    c.check_one_leader()
    c.one(b"after", 3)  # written by the new leader; the old one does not know
    assert _read(c, old, b"stale", max_ticks=30) is None, f"seed {seed}: a deposed leader served a read"


@pytest.mark.parametrize("seed", seeds(15))
def test_read_index_linearizable(seed: int) -> None:
    """Random writes, reads, partitions and crashes. Every read that completes must see every write that was
    acknowledged (committed on a majority) before the read was issued."""
    rng = random.Random(seed)
    c = Cluster(3, seed, unreliable=rng.random() < 0.5)
    served = 0
    for it in range(40):
        ld = c.leader()
        if ld is not None:
            c.propose(b"w%d" % it, via=ld)
            acked = max(n.r.commit for n in c.nodes.values() if n.up)  # every acknowledged write is <= this
            ctx = b"r%d" % it
            try:
                c.nodes[ld].r.read_index(ctx)
                c.process(c.nodes[ld])
                pending = (ld, ctx, acked)
            except NotLeader:
                pending = None
        else:
            pending = None
        roll = rng.random()
        if roll < 0.1:
            c.isolate(rng.choice(sorted(c.nodes)))
        elif roll < 0.2:
            c.heal()
        c.run(rng.randrange(1, 6))
        if pending is not None:
            node = c.nodes[pending[0]]
            for rs in node.read_states if node.up else []:
                if rs.ctx == pending[1]:
                    assert rs.index >= pending[2], (
                        f"seed {seed}: read {rs.ctx!r} at index {rs.index} misses writes acknowledged up to {pending[2]}"
                    )
                    served += 1
        for n in c.nodes.values():
            n.read_states.clear()
    c.heal()
    c.unreliable, c.drop, c.min_latency, c.max_latency = False, 0.0, 1, 3
    ld = c.check_one_leader(max_ticks=300)
    idx = c.one(b"final", 3, max_ticks=300)
    rs = _read(c, c.check_one_leader(), b"final-read", max_ticks=30)
    assert rs is not None and rs.index >= idx, f"seed {seed}: read after healing missed the last write"
