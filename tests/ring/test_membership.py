"""The membership state machine (ring/membership.py): staged changes, plans, transfers, epochs, refusals."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ring.membership import (
    Bootstrap,
    ClearStaged,
    Command,
    CommandError,
    Commit,
    MemberInfo,
    MembershipState,
    StageJoin,
    StageLeave,
    StageRemove,
    StageReplace,
    Status,
    TransferDone,
    apply,
    apply_bytes,
    covered_key_partitions,
    decode_command,
    decode_state,
    encode_command,
    encode_state,
    pending_write_targets,
    plan,
    validate_commit,
)
from ring.placement import Ring

Q = 32


def member(i: str) -> MemberInfo:
    return MemberInfo(i, "127.0.0.1", 8000 + int(i[1:]), "127.0.0.1", 9000 + int(i[1:]))


def boot(n_nodes: int = 4, n_val: int = 3, voters: tuple[str, ...] = ("n1", "n2", "n3")) -> MembershipState:
    s, r = apply(MembershipState(), Bootstrap(tuple(member(f"n{k}") for k in range(1, n_nodes + 1)), Q, n_val, voters))
    assert r.ok, r.reason
    return s


def ok(s: MembershipState, cmd: Command) -> MembershipState:
    new, r = apply(s, cmd)
    assert r.ok, r.reason
    assert r.epoch == new.epoch
    return new


def refused(s: MembershipState, cmd: Command, reason_part: str) -> None:
    new, r = apply(s, cmd)
    assert not r.ok
    assert reason_part in r.reason, r.reason
    assert new == s  # a refusal changes nothing


def finish_transfers(s: MembershipState) -> MembershipState:
    while s.transfers:
        t = s.transfers[0]
        before = s.epoch
        s = ok(s, TransferDone(t.partition, t.source, t.target, s.plan_epoch))
        assert s.epoch == before + 1
        assert s.ring is not None and s.ring.owners[t.partition] == t.target
    return s


def test_plan_shows_exactly_the_moves_and_commit_does_not_move_ownership() -> None:
    s = boot()
    s = ok(s, StageJoin(member("n5")))
    p = plan(s)
    assert not p.errors and p.ring is not None and s.ring is not None
    moved = [k for k in range(Q) if p.ring.owners[k] != s.ring.owners[k]]
    assert [t.partition for t in p.transfers] == moved
    for t in p.transfers:
        assert t.source == s.ring.owners[t.partition] and t.target == "n5"
    assert len(moved) in (Q // 5, Q // 5 + 1)
    assert p.moves() == {src: {"n5": [t.partition for t in p.transfers if t.source == src]}
                         for src in {t.source for t in p.transfers}}
    epoch = s.epoch
    s = ok(s, Commit(epoch))
    assert s.epoch == epoch + 1 and s.members["n5"].status is Status.JOINING
    assert s.transfers == p.transfers
    assert s.ring is not None and "n5" not in s.ring.owners  # no read traffic for n5 until transfers are done


def test_join_flow_to_completion() -> None:
    s = ok(ok(boot(), StageJoin(member("n5"))), Commit(1))
    last = s.transfers[-1]
    s = finish_transfers(s)
    assert s.members["n5"].status is Status.ACTIVE
    assert s.ring is not None and s.ring.owners[last.partition] == "n5"
    loads = Counter(s.ring.owners)
    assert max(loads.values()) - min(loads.values()) <= 1


def test_leave_flow_to_completion() -> None:
    s = ok(ok(boot(5), StageLeave("n4")), Commit(1))
    assert s.members["n4"].status is Status.LEAVING
    assert all(t.source == "n4" for t in s.transfers)
    s = finish_transfers(s)
    assert s.members["n4"].status is Status.REMOVED
    assert s.ring is not None and "n4" not in s.ring.owners


def test_remove_dead_node_streams_from_surviving_replicas() -> None:
    s = ok(ok(boot(5), StageRemove("n2")), Commit(1))
    assert s.transfers and all(t.source != "n2" for t in s.transfers)
    assert s.ring is not None
    for t in s.transfers:
        assert s.ring.owners[t.partition] == "n2"
        assert t.source == next(x for x in s.ring.walk(t.partition)[1:3] if x not in ("n2", t.target))
    s = finish_transfers(s)
    assert s.members["n2"].status is Status.REMOVED
    assert "n2" not in s.down


def test_replace_hands_over_exactly_the_old_nodes_partitions() -> None:
    s = boot(4)
    assert s.ring is not None
    owned = [k for k in range(Q) if s.ring.owners[k] == "n4"]
    s = ok(ok(s, StageReplace("n4", member("n9"))), Commit(1))
    assert [(t.partition, t.source, t.target) for t in s.transfers] == [(k, "n4", "n9") for k in owned]
    s = finish_transfers(s)
    assert s.members["n4"].status is Status.REMOVED and s.members["n9"].status is Status.ACTIVE


def test_replace_dead_node_uses_other_replicas() -> None:
    s = ok(ok(boot(4), StageReplace("n4", member("n9"), dead=True)), Commit(1))
    assert s.transfers and all(t.source not in ("n4", "n9") for t in s.transfers)


def test_voter_bookkeeping_replaces_a_leaving_voter() -> None:
    s = finish_transfers(ok(ok(boot(5), StageLeave("n1")), Commit(1)))
    assert "n1" not in s.voters and len(s.voters) == 3


@pytest.mark.parametrize(
    "setup, cmd, reason",
    [
        ([], StageJoin(member("n2")), "already exists"),
        ([], StageLeave("n7"), "unknown member"),
        ([], StageRemove("n7"), "unknown member"),
        ([], StageReplace("n7", member("n8")), "unknown member"),
        ([StageLeave("n4")], StageRemove("n4"), "already staged"),
        ([StageLeave("n4")], StageLeave("n1"), "fewer than N=3"),  # 4 members, N=3
        ([], Commit(1), "nothing is staged"),
        ([StageJoin(member("n5"))], Commit(0), "stale plan"),
        ([], TransferDone(0, "n1", "n5", 1), "transfer done for plan epoch 1"),
    ],
)
def test_refusals_with_reasons(setup: list[Command], cmd: Command, reason: str) -> None:
    s = boot()
    for c in setup:
        s = ok(s, c)
    refused(s, cmd, reason)


def test_refuses_removing_a_majority_of_voters() -> None:
    s = boot(6)
    s = ok(s, StageRemove("n1"))
    refused(s, StageRemove("n2"), "majority of voters must stay")


def test_refuses_second_commit_while_transfers_pending_and_removed_members() -> None:
    s = ok(ok(boot(), StageJoin(member("n5"))), Commit(1))
    s = ok(s, StageJoin(member("n6")))  # staging is fine, committing is not
    refused(s, Commit(s.epoch), "still pending")
    s = finish_transfers(s)
    s = ok(s, Commit(s.epoch))
    s = finish_transfers(s)
    s = finish_transfers(ok(ok(s, StageLeave("n6")), Commit(s.epoch)))
    refused(s, StageLeave("n6"), "already removed")
    refused(s, TransferDone(0, "n1", "n6", s.plan_epoch), "no pending transfer")


def test_clear_staged() -> None:
    s = ok(boot(), StageJoin(member("n5")))
    s = ok(s, ClearStaged())
    assert s.staged == () and plan(s).errors == ("nothing is staged",)


def test_validate_commit_requires_participants_reachable() -> None:
    s = ok(boot(), StageJoin(member("n5")))
    everyone = {"n1", "n2", "n3", "n4", "n5"}
    assert validate_commit(s, everyone) == []
    assert validate_commit(s, everyone - {"n5"}) == ["n5 is not reachable"]
    d = ok(boot(), StageRemove("n4"))
    assert validate_commit(d, everyone - {"n4"}) == []  # the dead node itself need not answer


def test_pending_write_targets_cover_every_key_partition_that_gains_the_target() -> None:
    s = ok(ok(boot(), StageJoin(member("n5"))), Commit(1))
    assert s.ring is not None
    for t in s.transfers:
        covered = covered_key_partitions(s.ring, s.n_val, t.partition)
        assert t.partition in covered
        for k in covered:
            # after the move n5 is a primary of k; before it, writes must already reach n5
            owners = list(s.ring.owners)
            owners[t.partition] = "n5"
            assert "n5" in Ring(tuple(owners)).walk(k)[: s.n_val]
            assert "n5" in pending_write_targets(s, k)
    # key partitions not touched by any move get no extra target
    touched = {k for t in s.transfers for k in covered_key_partitions(s.ring, s.n_val, t.partition)}
    assert all(pending_write_targets(s, k) == () for k in range(Q) if k not in touched)
    assert all(pending_write_targets(finish_transfers(s), k) == () for k in range(Q))


def test_codecs_round_trip_and_garbage_is_refused() -> None:
    cmds: list[Command] = [
        Bootstrap((member("n1"),), 8, 1, ("n1",)),
        StageJoin(member("n2")),
        StageLeave("n1"),
        StageRemove("n1"),
        StageReplace("n1", member("n3"), True),
        ClearStaged(),
        Commit(4),
        TransferDone(3, "n1", "n2", 5),
    ]
    for c in cmds:
        assert decode_command(encode_command(c)) == c
    for junk in (b"", b"\xc1", b"\x93\x01\x02\x03", encode_command(Commit(1))[:-1]):
        with pytest.raises(CommandError):
            decode_command(junk)
    s = ok(ok(boot(), StageJoin(member("n5"))), Commit(1))
    s = ok(s, StageLeave("n5"))
    assert decode_state(encode_state(s)) == s
    same, r = apply_bytes(s, b"garbage")
    assert not r.ok and same == s


# ---- determinism and invariants over random command sequences ----


def random_commands(rng: random.Random, state: MembershipState, count: int) -> list[Command]:
    """Commands an operator (and the streamers) might issue, including nonsense that must be refused."""
    cmds: list[Command] = []
    next_id = 10
    s = state
    for _ in range(count):
        live = s.live_members()
        roll = rng.random()
        if s.transfers and roll < 0.5:
            t = rng.choice(s.transfers)
            cmd: Command = TransferDone(t.partition, t.source, t.target, s.plan_epoch)
        elif roll < 0.62:
            cmd = StageJoin(member(f"n{next_id}"))
            next_id += 1
        elif roll < 0.72:
            cmd = StageLeave(rng.choice(live + ["n99"]))
        elif roll < 0.78:
            cmd = StageRemove(rng.choice(live))
        elif roll < 0.84:
            cmd = StageReplace(rng.choice(live), member(f"n{next_id}"), rng.random() < 0.5)
            next_id += 1
        elif roll < 0.88:
            cmd = ClearStaged()
        else:
            cmd = Commit(s.epoch if rng.random() < 0.9 else s.epoch - 1)
        cmds.append(cmd)
        s, _ = apply(s, cmd)
    return cmds


def check_invariants(s: MembershipState, prev_epoch: int) -> None:
    assert s.ring is not None
    assert s.epoch >= prev_epoch
    assert len(s.ring.owners) == Q and all(o in s.members for o in s.ring.owners)  # ownership total
    removed = set(s.member_ids(Status.REMOVED))
    assert not removed & set(s.ring.owners)
    assert not removed & {x for t in s.transfers for x in (t.source, t.target)}
    for t in s.transfers:
        assert s.ring.owners[t.partition] != t.target
        assert t.source not in s.down
    assert set(s.voters) <= set(s.members) and not set(s.voters) & removed
    if not s.transfers:
        assert not s.member_ids(Status.JOINING, Status.LEAVING)
        active = s.member_ids(Status.ACTIVE)
        assert set(s.ring.owners) == set(active)
        per = Counter(s.ring.owners)
        assert max(per.values()) <= -(-Q // len(active)) + 1
        assert len(active) >= s.n_val


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10**9), st.integers(3, 6))
def test_random_sequences_keep_invariants_and_replicas_agree(seed: int, nodes: int) -> None:
    rng = random.Random(seed)
    start = boot(nodes)
    cmds = random_commands(rng, start, 50)
    # a second replica applies the same log from the encoded bytes: it must reach the identical state
    a, b = start, start
    for c in cmds:
        before = a.epoch
        a, ra = apply(a, c)
        b, rb = apply_bytes(b, encode_command(c))
        assert ra == rb and a == b
        if ra.ok and isinstance(c, (Commit, TransferDone)):
            assert a.epoch == before + 1  # every change of ownership or status bumps the epoch
        check_invariants(a, before)
    # drive whatever is pending to completion: it always can finish
    a = finish_transfers(a)
    check_invariants(a, a.epoch)
    assert decode_state(encode_state(a)) == a
