"""The Raft wire codec (ring.raft.wire): every message round-trips; garbage and corruption are WireErrors."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ring.raft import (
    AppendEntries,
    AppendResponse,
    ConfState,
    Entry,
    EntryType,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Message,
    Snapshot,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)
from ring.raft.wire import WireError, decode_message, encode_message

ENTRIES = (Entry(5, 2), Entry(6, 2, EntryType.CONF_CHANGE, b"0:n4"), Entry(7, 3, EntryType.NORMAL, b"\x00\xff"))
SNAP = Snapshot(9, 3, ConfState(frozenset({"a", "b"}), frozenset({"c"})), b"state")
EVERY_MESSAGE: list[Message] = [
    VoteRequest(frm="a", to="b", term=3, last_index=9, last_term=2, pre_vote=True, transfer=False),
    VoteRequest(frm="a", to="b", term=3, last_index=9, last_term=2, pre_vote=False, transfer=True),
    VoteResponse(frm="b", to="a", term=3, granted=True, pre_vote=True),
    AppendEntries(frm="a", to="b", term=3, prev_index=4, prev_term=2, entries=ENTRIES, commit=5),
    AppendEntries(frm="a", to="b", term=3, prev_index=4, prev_term=2, entries=(), commit=5),
    AppendResponse(frm="b", to="a", term=3, success=False, index=4, conflict_index=2, conflict_term=1),
    AppendResponse(frm="b", to="a", term=3, success=True, index=7),
    Heartbeat(frm="a", to="b", term=3, commit=5, ctx=b"r1"),
    HeartbeatResponse(frm="b", to="a", term=3, ctx=b"r1"),
    InstallSnapshot(frm="a", to="b", term=3, snapshot=SNAP),
    TimeoutNow(frm="a", to="b", term=3),
]


@pytest.mark.parametrize("msg", EVERY_MESSAGE, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(msg: Message) -> None:
    assert decode_message(encode_message(msg)) == msg


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_garbage_is_a_wire_error(blob: bytes) -> None:
    try:
        decode_message(blob)
    except WireError:
        pass


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(EVERY_MESSAGE), st.integers(0, 200), st.binary(min_size=1, max_size=3))
def test_corrupted_messages_never_crash(msg: Message, pos: int, junk: bytes) -> None:
    enc = encode_message(msg)
    pos %= len(enc)
    for bad in (enc[:pos], enc[:pos] + junk + enc[pos + 1 :]):
        try:
            decode_message(bad)
        except WireError:
            pass


def test_wrong_field_types_are_refused() -> None:
    with pytest.raises(WireError):
        decode_message(msgpack.packb([1, 8, "a", "b", "three"]))
    with pytest.raises(WireError):
        decode_message(msgpack.packb([2, 8, "a", "b", 3]))  # future wire version
    with pytest.raises(WireError):
        decode_message(msgpack.packb([1, 99, "a", "b", 3]))
