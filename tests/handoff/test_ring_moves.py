"""Every node that becomes a primary of a key partition during a ring change streamed it first (issue 14, item 1).

The pure membership core and transfer planning, driven step by step: the transfer's target is not the only
node that gains key partitions; when a slot moves to a node that already owns a slot nearby, preference
lists collapse and pull a node further along the ring in, and that node must stream the partition, receive
writes while the move is pending, and be named ready before ``TransferDone`` can apply.
"""

from __future__ import annotations

import random

import pytest

from handoff.transfer import Stream, done_command, incoming, plan_transfer
from ring.membership import (
    NOT_READY,
    Bootstrap,
    Command,
    Commit,
    MemberInfo,
    MembershipState,
    StageJoin,
    StageLeave,
    StageRemove,
    Status,
    TransferDone,
    apply,
    decode_command,
    encode_command,
    pending_write_targets,
    preference_changes,
)


def member(i: str) -> MemberInfo:
    return MemberInfo(i, "h", 1, "h", 2)


def state_after(*cmds: Command, nodes: int = 4, q: int = 16) -> MembershipState:
    s, r = apply(MembershipState(), Bootstrap(tuple(member(f"n{k}") for k in range(1, nodes + 1)), q, 3))
    assert r.ok
    for c in cmds:
        s, r = apply(s, c)
        assert r.ok, r.reason
    return s


def primaries(s: MembershipState, k: int) -> list[str]:
    assert s.ring is not None
    return s.ring.walk(k)[: s.n_val]


def leave_n4() -> MembershipState:
    """The issue's example: 4 nodes, Q=16, ``admin leave n4`` committed."""
    s = state_after(StageLeave("n4"), Commit(1))
    assert s.ring is not None and s.ring.owners[11] == "n4"
    return s


def slot(s: MembershipState, p: int) -> int:
    return next(i for i, t in enumerate(s.transfers) if t.partition == p)


def test_the_issues_example_n1_is_pulled_into_key_partition_9_and_streams_it() -> None:
    s = leave_n4()
    t = s.transfers[slot(s, 11)]
    assert (t.source, t.target) == ("n4", "n3")
    assert primaries(s, 9) == ["n2", "n3", "n4"]
    gained, lost = preference_changes(s.ring, s.n_val, t)  # type: ignore[arg-type]
    assert (9, "n1") in gained and (9, "n4") in lost
    # n1 is a pending owner of key partition 9: writes reach it while the move is pending...
    assert "n1" in pending_write_targets(s, 9)
    # ...and it streams key partition 9 from a replica that holds it
    tp = plan_transfer(s, t)
    assert Stream(9, "n4", "n1") in tp.streams
    assert t in {x.transfer for x in incoming(s, "n1")}
    # the done entry names it ready; applied, n1 is a primary of key partition 9
    s2, r = apply(s, done_command(tp))
    assert r.ok, r.reason
    assert primaries(s2, 9) == ["n2", "n3", "n1"]


def test_transfer_done_is_refused_until_every_gaining_node_is_ready() -> None:
    s = leave_n4()
    t = s.transfers[slot(s, 11)]
    only_target = TransferDone(t.partition, t.source, t.target, s.plan_epoch, ((11, "n3"),))
    new, r = apply(s, only_target)
    assert not r.ok and NOT_READY in r.reason and "n1 (key partition 9)" in r.reason
    assert new == s  # a refusal changes nothing
    cmd = done_command(plan_transfer(s, t))
    assert decode_command(encode_command(cmd)) == cmd  # the ready pairs survive the log's encoding
    legacy = TransferDone(t.partition, t.source, t.target, s.plan_epoch)  # entries from before: unchecked
    assert decode_command(encode_command(legacy)) == legacy and apply(s, legacy)[1].ok


def run_change(s: MembershipState, rng: random.Random) -> tuple[MembershipState, list[str]]:
    """Finish every pending transfer in a random order, each done entry computed on the ring of the moment;
    returns the final state and what went wrong: a node that became a primary of a key partition that no
    stream of the applied transfer (nor any earlier one) gave it."""
    problems: list[str] = []
    holds = {(k, n) for k in range(s.ring.num_partitions) for n in primaries(s, k)}  # type: ignore[union-attr]
    while s.transfers:
        t = rng.choice(s.transfers)
        tp = plan_transfer(s, t)
        received = {(x.key_partition, x.receiver) for x in tp.streams}
        assert all((x.key_partition, x.source) in holds for x in tp.streams), "a stream from a node without the data"
        new, r = apply(s, done_command(tp))
        assert r.ok, r.reason
        holds |= received
        for k in range(new.ring.num_partitions):  # type: ignore[union-attr]
            for n in primaries(new, k):
                if (k, n) not in holds and n not in s.down:
                    problems.append(f"after slot {t.partition} -> {t.target}: {n} is a primary of {k} without data")
        s = new
    return s, problems


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("nodes", [4, 5, 6, 8])
def test_every_new_primary_streamed_its_partition_in_leaves_joins_and_removes(seed: int, nodes: int) -> None:
    rng = random.Random(seed * 100 + nodes)
    q = 32
    for change in (StageLeave(f"n{nodes}"), StageJoin(member(f"n{nodes + 1}")), StageRemove(f"n{rng.randint(1, nodes)}")):
        s = state_after(change, Commit(1), nodes=nodes, q=q)
        s, problems = run_change(s, rng)
        assert problems == []
        assert not s.transfers and all(m.status in (Status.ACTIVE, Status.REMOVED) for m in s.members.values())


def test_operators_see_each_move_with_its_source_pending_owners_and_streams() -> None:
    from dynamostore.api.admin import describe
    from handoff.transfer import moves

    s = leave_n4()
    shown = {m["partition"]: m for m in moves(s)}
    assert sorted(shown) == [t.partition for t in s.transfers]
    eleven = shown[11]
    assert (eleven["source"], eleven["target"]) == ("n4", "n3")
    assert eleven["pending_owners"] == ["n1", "n2", "n3"]  # n1 and n2 too: pulled into key partitions 9 and 10
    assert [9, "n4", "n1"] in eleven["streams"]  # type: ignore[operator]
    doc = describe(s)
    assert doc["moves"] == moves(s) and len(doc["transfers_pending"]) == 4
