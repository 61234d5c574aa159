"""The wire codec of Raft messages (pure): `encode_message` / `decode_message`, versioned msgpack.

Each message is one msgpack list, `[WIRE_VERSION, kind, from, to, term, *body]`, with the body's fields in a
fixed order per kind. Decoding checks every field's type and raises `WireError` (a ValueError) on anything
else, never another exception: the bytes come from the network, and the driver (`dynamostore.cluster.raft`)
answers garbage with an error instead of crashing its loop.
"""

from __future__ import annotations

from typing import Any

import msgpack

from .messages import (
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

WIRE_VERSION = 1


class WireError(ValueError):
    """Bytes that are not a Raft message this version understands."""


_KINDS: dict[type, int] = {
    VoteRequest: 1,
    VoteResponse: 2,
    AppendEntries: 3,
    AppendResponse: 4,
    Heartbeat: 5,
    HeartbeatResponse: 6,
    InstallSnapshot: 7,
    TimeoutNow: 8,
}


def _entry_out(e: Entry) -> list[Any]:
    return [e.index, e.term, int(e.type), e.data]


def _snap_out(s: Snapshot) -> list[Any]:
    return [s.index, s.term, sorted(s.conf.voters), sorted(s.conf.learners), s.data]


def encode_message(m: Message) -> bytes:
    head: list[Any] = [WIRE_VERSION, _KINDS[type(m)], m.frm, m.to, m.term]
    if isinstance(m, VoteRequest):
        body: list[Any] = [m.last_index, m.last_term, m.pre_vote, m.transfer]
    elif isinstance(m, VoteResponse):
        body = [m.granted, m.pre_vote]
    elif isinstance(m, AppendEntries):
        body = [m.prev_index, m.prev_term, [_entry_out(e) for e in m.entries], m.commit]
    elif isinstance(m, AppendResponse):
        body = [m.success, m.index, m.conflict_index, m.conflict_term]
    elif isinstance(m, Heartbeat):
        body = [m.commit, m.ctx]
    elif isinstance(m, HeartbeatResponse):
        body = [m.ctx]
    elif isinstance(m, InstallSnapshot):
        body = [_snap_out(m.snapshot)]
    else:
        body = []
    return bytes(msgpack.packb(head + body))


def _i(v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise WireError(f"expected a non-negative integer, got {v!r}")
    return v


def _s(v: Any) -> str:
    if not isinstance(v, str):
        raise WireError(f"expected a string, got {v!r}")
    return v


def _b(v: Any) -> bool:
    if not isinstance(v, bool):
        raise WireError(f"expected a boolean, got {v!r}")
    return v


def _by(v: Any) -> bytes:
    if not isinstance(v, bytes):
        raise WireError(f"expected bytes, got {type(v).__name__}")
    return v


def _entry_in(v: Any) -> Entry:
    index, term, kind, data = v
    return Entry(_i(index), _i(term), EntryType(_i(kind)), _by(data))


def _snap_in(v: Any) -> Snapshot:
    index, term, voters, learners, data = v
    conf = ConfState(frozenset(_s(x) for x in voters), frozenset(_s(x) for x in learners))
    return Snapshot(_i(index), _i(term), conf, _by(data))


def decode_message(data: bytes) -> Message:
    """Inverse of ``encode_message``; anything else raises ``WireError`` (never another exception)."""
    try:
        v = msgpack.unpackb(data)
    except Exception as e:  # msgpack raises several unrelated exception types on garbage
        raise WireError(f"undecodable Raft message: {e}") from e
    if not isinstance(v, list) or len(v) < 5:
        raise WireError("a Raft message is a list of at least 5 fields")
    if v[0] != WIRE_VERSION:
        raise WireError(f"Raft wire version {v[0]!r} is not {WIRE_VERSION}")
    try:
        kind, frm, to, term, body = v[1], _s(v[2]), _s(v[3]), _i(v[4]), v[5:]
        if kind == 1:
            li, lt, pre, tr = body
            return VoteRequest(frm=frm, to=to, term=term, last_index=_i(li), last_term=_i(lt), pre_vote=_b(pre),
                               transfer=_b(tr))
        if kind == 2:
            granted, pre = body
            return VoteResponse(frm=frm, to=to, term=term, granted=_b(granted), pre_vote=_b(pre))
        if kind == 3:
            pi, pt, ents, commit = body
            if not isinstance(ents, list):
                raise WireError("entries must be a list")
            entries = tuple(_entry_in(e) for e in ents)
            return AppendEntries(frm=frm, to=to, term=term, prev_index=_i(pi), prev_term=_i(pt), entries=entries,
                                 commit=_i(commit))
        if kind == 4:
            ok, index, ci, ct = body
            return AppendResponse(
                frm=frm, to=to, term=term, success=_b(ok), index=_i(index), conflict_index=_i(ci),
                conflict_term=None if ct is None else _i(ct),
            )
        if kind == 5:
            commit, ctx = body
            return Heartbeat(frm=frm, to=to, term=term, commit=_i(commit), ctx=_by(ctx))
        if kind == 6:
            (ctx,) = body
            return HeartbeatResponse(frm=frm, to=to, term=term, ctx=_by(ctx))
        if kind == 7:
            (snap,) = body
            return InstallSnapshot(frm=frm, to=to, term=term, snapshot=_snap_in(snap))
        if kind == 8:
            if body:
                raise WireError("TimeoutNow has no body")
            return TimeoutNow(frm=frm, to=to, term=term)
    except WireError:
        raise
    except (TypeError, ValueError) as e:  # wrong arity or an unknown enum value
        raise WireError(f"malformed Raft message of kind {v[1]!r}: {e}") from e
    raise WireError(f"unknown Raft message kind {v[1]!r}")
