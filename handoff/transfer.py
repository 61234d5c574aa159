"""Ownership transfer planning (pure): what a node streams or receives when ring slots change owner.

A ``Transfer(partition=slot, source, target)`` of the membership state (ring/membership.py) changes the
primaries of the key partitions whose N primaries reach the slot: ``target`` joins some of them, and when
the preference lists collapse (the target already owns a slot nearby) a node further along the ring joins
others. Every (key partition, gaining node) pair (``membership.preference_changes``) is one ``Stream``: the
key partition's data, a contiguous storage-key range (``storage.partition_prefix``), is copied to the
gaining node (the stream's ``receiver``) from a node that holds it: the transfer's source when that is one
of the key partition's primaries, otherwise (the old owner is being removed as dead) the first surviving
primary. A node sends the streams whose source is itself and receives those whose receiver is itself.

Each stream makes two passes: the second (``Cursor.final``) catches the writes that reached the old
primaries only (made by coordinators that had not applied the commit yet, or while the first pass was
already past their key).

Resumability: a ``Cursor`` per stream records the last storage key the *receiver* has durably written.
The receiver persists it (``encode_cursor`` under ``cursor_key`` in its "meta" namespace) after each
batch; a (re)starting sender asks the receiver for it and continues after ``last_key``, so a crash of
either side loses at most one unacknowledged batch, which is re-sent (writes are idempotent merges).
A cursor from an older plan epoch is obsolete.

Pacing: the receiver sizes each batch with the shared token bucket (``ring.pacing.TokenBucket``, keys per
second, time passed in) and ``BatchPolicy``.
Completion: the transfer's target asks the other receivers whether their streams are done, and when every
stream is, proposes ``done_command(...)`` naming them; ownership moves only when that entry is applied, and
the state machine refuses it if the ring changed since so that another node gains too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import msgpack

from ring import membership
from ring.membership import MembershipState, Transfer, TransferDone

CURSOR_VERSION = 1


@dataclass(frozen=True, slots=True)
class Stream:
    """Copy key partition ``key_partition`` from ``source`` to ``receiver`` (a node that gains it)."""

    key_partition: int
    source: str
    receiver: str


@dataclass(frozen=True, slots=True)
class TransferPlan:
    transfer: Transfer
    plan_epoch: int
    streams: tuple[Stream, ...]
    unsourced: tuple[tuple[int, str], ...] = ()  # gained pairs no surviving replica can stream (nothing to wait for)


def gained_key_partitions(state: MembershipState, t: Transfer) -> tuple[int, ...]:
    """Key partitions whose primaries gain ``t.target`` when slot ``t.partition`` moves to it."""
    ring = state.ring
    assert ring is not None, "not bootstrapped"
    return tuple(membership.gained_key_partitions(ring, state.n_val, t))


def plan_transfer(state: MembershipState, t: Transfer) -> TransferPlan:
    """The streams of one pending transfer against the current ring (deterministic)."""
    ring = state.ring
    assert ring is not None, "not bootstrapped"
    streams: list[Stream] = []
    unsourced: list[tuple[int, str]] = []
    for k, node in membership.required_ready(state, t):
        primaries = ring.walk(k)[: state.n_val]
        if t.source in primaries and t.source not in state.down:
            src: str | None = t.source
        else:
            src = next((p for p in primaries if p not in state.down and p != node), None)
        if src is not None:
            streams.append(Stream(k, src, node))
        else:  # no surviving replica: nothing to copy (the plan refuses that case for the slot upfront)
            unsourced.append((k, node))
    return TransferPlan(t, state.plan_epoch, tuple(streams), tuple(unsourced))


def outgoing(state: MembershipState, me: str) -> list[tuple[TransferPlan, Stream]]:
    """Streams this node must send now, in a stable order."""
    out: list[tuple[TransferPlan, Stream]] = []
    for t in state.transfers:
        tp = plan_transfer(state, t)
        out.extend((tp, s) for s in tp.streams if s.source == me)
    return out


def incoming(state: MembershipState, me: str) -> list[TransferPlan]:
    """Transfers this node receives a stream of, or is the target of (the target tracks every receiver's
    completion and proposes TransferDone)."""
    out: list[TransferPlan] = []
    for t in state.transfers:
        tp = plan_transfer(state, t)
        if t.target == me or any(s.receiver == me for s in tp.streams):
            out.append(tp)
    return out


def moves(state: MembershipState) -> list[dict[str, object]]:
    """Every pending transfer, for operators (/status, admin members): the slot, its source and target, the
    pending owners (every node the move makes a primary of some key partition) and each stream still to
    finish before ownership flips (key partition, from, to)."""
    out: list[dict[str, object]] = []
    for t in state.transfers:
        tp = plan_transfer(state, t)
        out.append({
            "partition": t.partition,
            "source": t.source,
            "target": t.target,
            "pending_owners": sorted({s.receiver for s in tp.streams}),
            "streams": [[s.key_partition, s.source, s.receiver] for s in tp.streams],
        })
    return out


def my_streams(tp: TransferPlan, me: str) -> tuple[Stream, ...]:
    return tuple(s for s in tp.streams if s.receiver == me)


# ---- cursors -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cursor:
    plan_epoch: int
    slot: int
    target: str
    key_partition: int
    last_key: bytes | None = None  # last storage key durably written at the target; None: start
    keys: int = 0  # keys received so far by the first pass (for progress reports)
    done: bool = False
    final: bool = False  # the catch-up pass (the second scan of the key partition)

    def advance(self, last_key: bytes, count: int) -> Cursor:
        if self.done:
            raise ValueError("stream already finished")
        if self.last_key is not None and last_key <= self.last_key:
            raise ValueError("a cursor only moves forward")
        return replace(self, last_key=last_key, keys=self.keys + (0 if self.final else count))

    def finish(self) -> Cursor:
        """The end of a pass: the first one starts the catch-up pass over, the catch-up pass is the end."""
        if self.final:
            return replace(self, done=True)
        return replace(self, last_key=None, final=True)


def new_cursor(tp: TransferPlan, stream: Stream) -> Cursor:
    return Cursor(tp.plan_epoch, tp.transfer.partition, tp.transfer.target, stream.key_partition)


def cursor_key(tp: TransferPlan, stream: Stream) -> bytes:
    """Meta-namespace key of a stream's cursor on its receiver (one per plan epoch, slot, target and key
    partition)."""
    return cursor_key_of(tp.plan_epoch, tp.transfer.partition, tp.transfer.target, stream.key_partition)


def cursor_key_of(plan_epoch: int, slot: int, target: str, key_partition: int) -> bytes:
    return f"transfer/{plan_epoch}/{slot}/{target}/{key_partition}".encode()


def encode_cursor(c: Cursor) -> bytes:
    return bytes(msgpack.packb([CURSOR_VERSION, c.plan_epoch, c.slot, c.target, c.key_partition, c.last_key, c.keys,
                                c.done, c.final]))


def decode_cursor(data: bytes) -> Cursor:
    try:
        v, epoch, slot, target, kp, last, keys, done, *more = msgpack.unpackb(data)
    except Exception as e:  # msgpack's many error types, or the wrong shape
        raise ValueError(f"not a transfer cursor: {e}") from e
    if v != CURSOR_VERSION:
        raise ValueError(f"cursor version {v!r} is not {CURSOR_VERSION}")
    final = bool(more[0]) if more else bool(done)  # a cursor saved before the catch-up pass existed
    return Cursor(int(epoch), int(slot), str(target), int(kp), None if last is None else bytes(last), int(keys),
                  bool(done), final)


def resume(tp: TransferPlan, stream: Stream, saved: Cursor | None) -> Cursor:
    """The cursor to continue from: the saved one if it belongs to this plan and stream, else a fresh one."""
    fresh = new_cursor(tp, stream)
    if saved is None:
        return fresh
    same = (saved.plan_epoch, saved.slot, saved.target, saved.key_partition) == (
        fresh.plan_epoch,
        fresh.slot,
        fresh.target,
        fresh.key_partition,
    )
    return saved if same else fresh


def start_after(c: Cursor) -> bytes | None:
    """Exclusive lower bound for the sender's next scan (None: from the start of the key partition)."""
    return c.last_key


# ---- completion --------------------------------------------------------------------------------------------


def transfer_complete(tp: TransferPlan, cursors: Mapping[int, Cursor]) -> bool:
    """Every stream of the transfer finished (cursors by key partition, of this plan epoch)."""
    for s in tp.streams:
        c = cursors.get(s.key_partition)
        if c is None or not c.done or c.plan_epoch != tp.plan_epoch:
            return False
    return True


def done_command(tp: TransferPlan) -> TransferDone:
    """The entry that moves ownership; it names every stream's receiver as ready (the state machine refuses
    it if, on the ring it is applied to, some other node gains a key partition)."""
    t = tp.transfer
    ready = tuple(sorted({(s.key_partition, s.receiver) for s in tp.streams} | set(tp.unsourced)))
    return TransferDone(t.partition, t.source, t.target, tp.plan_epoch, ready)


def still_pending(state: MembershipState, tp: TransferPlan) -> bool:
    """Whether the transfer is still part of the current plan (else stop streaming it)."""
    return state.plan_epoch == tp.plan_epoch and tp.transfer in state.transfers


# ---- pacing ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    max_keys: int = 500
    max_bytes: int = 4 << 20

    def cut(self, sizes: list[int]) -> int:
        """How many of the next items (their encoded sizes, in scan order) go in one batch: at least one,
        so a single oversized value still moves."""
        total = 0
        for n, size in enumerate(sizes[: self.max_keys]):
            if n > 0 and total + size > self.max_bytes:
                return n
            total += size
        return min(len(sizes), self.max_keys)
