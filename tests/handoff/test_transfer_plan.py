"""Transfer planning (handoff/transfer.py): streams, cursors, batches, completion."""

from __future__ import annotations

import pytest

from handoff.transfer import (
    BatchPolicy,
    Cursor,
    cursor_key,
    decode_cursor,
    done_command,
    encode_cursor,
    gained_key_partitions,
    incoming,
    new_cursor,
    outgoing,
    plan_transfer,
    resume,
    start_after,
    still_pending,
    transfer_complete,
)
from ring.membership import (
    Bootstrap,
    Command,
    Commit,
    MemberInfo,
    MembershipState,
    StageJoin,
    StageRemove,
    apply,
)
from ring.placement import Ring

Q = 32


def member(i: str) -> MemberInfo:
    return MemberInfo(i, "h", 1, "h", 2)


def state_after(*cmds: Command, nodes: int = 4) -> MembershipState:
    s, r = apply(MembershipState(), Bootstrap(tuple(member(f"n{k}") for k in range(1, nodes + 1)), Q, 3))
    assert r.ok
    for c in cmds:
        s, r = apply(s, c)
        assert r.ok, r.reason
    return s


def test_streams_cover_exactly_the_key_partitions_the_target_gains() -> None:
    s = state_after(StageJoin(member("n5")), Commit(1))
    assert s.ring is not None
    for t in s.transfers:
        tp = plan_transfer(s, t)
        owners = list(s.ring.owners)
        owners[t.partition] = t.target
        after = Ring(tuple(owners))
        gained = {k for k in range(Q) if t.target in after.walk(k)[:3] and t.target not in s.ring.walk(k)[:3]}
        assert {x.key_partition for x in tp.streams} == gained == set(gained_key_partitions(s, t))
        assert all(x.source == t.source for x in tp.streams)  # a live old owner holds all of them
        assert all(t.source in s.ring.walk(x.key_partition)[:3] for x in tp.streams)


def test_dead_source_streams_come_from_surviving_primaries() -> None:
    s = state_after(StageRemove("n2"), Commit(1), nodes=5)
    assert s.ring is not None
    for t in s.transfers:
        for x in plan_transfer(s, t).streams:
            assert x.source != "n2" and x.source != t.target
            assert x.source in s.ring.walk(x.key_partition)[:3]  # it holds that key partition


def test_outgoing_and_incoming_split_by_node() -> None:
    s = state_after(StageJoin(member("n5")), Commit(1))
    assert [tp.transfer for tp in incoming(s, "n5")] == list(s.transfers)
    sent = [(tp.transfer, x) for n in ("n1", "n2", "n3", "n4") for tp, x in outgoing(s, n)]
    every = [(t, x) for t in s.transfers for x in plan_transfer(s, t).streams]
    assert sorted(sent, key=repr) == sorted(every, key=repr)
    assert outgoing(s, "n5") == [] and incoming(s, "n1") == []


def test_cursor_moves_forward_persists_and_resumes() -> None:
    s = state_after(StageJoin(member("n5")), Commit(1))
    tp = plan_transfer(s, s.transfers[0])
    stream = tp.streams[0]
    c = new_cursor(tp, stream)
    assert start_after(c) is None
    c = c.advance(b"k010", 10).advance(b"k020", 10)
    with pytest.raises(ValueError):
        c.advance(b"k015", 1)
    saved = decode_cursor(encode_cursor(c))
    assert saved == c
    # a restarted sender continues after the last key the receiver stored
    resumed = resume(tp, stream, saved)
    assert start_after(resumed) == b"k020" and resumed.keys == 20
    # a cursor of another plan epoch is ignored
    stale = Cursor(tp.plan_epoch - 1, c.slot, c.target, c.key_partition, b"zzz", 5)
    assert resume(tp, stream, stale) == new_cursor(tp, stream)
    assert cursor_key(tp, stream) == f"transfer/{tp.plan_epoch}/{tp.transfer.partition}/n5/{stream.key_partition}".encode()
    with pytest.raises(ValueError):
        decode_cursor(b"not a cursor")


def test_completion_only_when_every_stream_is_done() -> None:
    s = state_after(StageJoin(member("n5")), Commit(1))
    tp = plan_transfer(s, s.transfers[0])
    assert len(tp.streams) >= 2
    cursors = {x.key_partition: new_cursor(tp, x).advance(b"a", 1) for x in tp.streams}
    assert not transfer_complete(tp, cursors)
    first = tp.streams[0].key_partition
    cursors[first] = cursors[first].finish().finish()
    assert not transfer_complete(tp, cursors)
    cursors = {k: c.finish() for k, c in cursors.items()}
    assert not transfer_complete(tp, cursors)  # the catch-up pass is not done yet
    cursors = {k: c if c.done else c.finish() for k, c in cursors.items()}
    assert transfer_complete(tp, cursors)
    cmd = done_command(tp)
    assert still_pending(s, tp)
    s2, r = apply(s, cmd)
    assert r.ok and s2.ring is not None and s2.ring.owners[tp.transfer.partition] == "n5"
    assert not still_pending(s2, tp)


def test_batch_policy_limits_keys_and_bytes() -> None:
    p = BatchPolicy(max_keys=4, max_bytes=100)
    assert p.cut([10] * 10) == 4
    assert p.cut([40, 40, 40]) == 2
    assert p.cut([500, 1]) == 1  # an oversized value still moves alone
    assert p.cut([]) == 0
