"""Dotted version vector sets: the causal versioning of every stored key.

A key's state is a `VersionSet`: one version vector `clock` that summarises every write this replica has
seen for the key, and the surviving `siblings`, each tagged with the *dot* (node, counter) of the write
that created it. This is the information a server-side DVV set (Almeida et al.; Riak 2.0's dvvset) holds:
dvvset packs siblings of one node as a run of consecutive counters below that node's clock entry, we keep
the dots explicit. Because a client context is a version vector, it always discards a prefix of each
node's dots, so the two encodings describe the same states.

Why dots and not plain per-node vector clocks: two clients that read the same context and write through
the same coordinator would get clocks where the second dominates the first, and one write would be lost
silently. With dots, each write discards only the siblings its context covers; the other write's dot is
not covered, so both survive as siblings.

Tombstones are siblings whose value is None: a delete is a write like any other and carries causality.
Everything here is pure and deterministic.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import msgpack

Clock = Mapping[str, int]
Dot = tuple[str, int]


class VersionError(ValueError):
    """A stored or transmitted version set could not be decoded."""


class Sibling(NamedTuple):
    """One surviving write. A NamedTuple, not a frozen dataclass: replicas decode several per request and
    tuple construction is several times cheaper."""

    dot: Dot
    value: bytes | None  # None marks a tombstone
    content_type: str
    timestamp_ms: int  # when the coordinator accepted the write; for tombstone grace, never for ordering

    @property
    def is_tombstone(self) -> bool:
        return self.value is None


@dataclass(frozen=True, slots=True)
class VersionSet:
    clock: Mapping[str, int]
    siblings: tuple[Sibling, ...]
    # Local bookkeeping of one stored copy, never causal information: the actor this copy minted dots
    # with (see replica.py, "actor epochs"). Ignored by sync, same_version and digest; a copy that is
    # merged in from elsewhere never brings its own.
    local_actor: str | None = field(default=None, compare=False)

    @property
    def live(self) -> tuple[Sibling, ...]:
        return tuple(s for s in self.siblings if s.value is not None)

    @property
    def is_deleted(self) -> bool:
        """True when nothing but tombstones remain (a read answers 404)."""
        return not self.live


EMPTY = VersionSet({}, ())


def covers(clock: Clock, dot: Dot) -> bool:
    return clock.get(dot[0], 0) >= dot[1]


def merge_clocks(a: Clock, b: Clock) -> dict[str, int]:
    out = dict(a)
    for node, counter in b.items():
        if counter > out.get(node, 0):
            out[node] = counter
    return out


def descends(a: Clock, b: Clock) -> bool:
    """a has seen everything b has."""
    return all(a.get(node, 0) >= counter for node, counter in b.items())


def _ordered(siblings: Iterable[Sibling]) -> tuple[Sibling, ...]:
    return tuple(sorted(siblings, key=lambda s: s.dot))


def update(
    state: VersionSet | None,
    context: Clock,
    node: str,
    value: bytes | None,
    content_type: str,
    now_ms: int,
) -> VersionSet:
    """Apply a client write at coordinator `node`: drop what the context saw, add a sibling with a new dot."""
    state = state or EMPTY
    kept = [s for s in state.siblings if not covers(context, s.dot)]
    clock = merge_clocks(state.clock, context)
    counter = clock.get(node, 0) + 1
    clock[node] = counter
    new = Sibling((node, counter), value, content_type, now_ms)
    return VersionSet(clock, _ordered([*kept, new]))


def sync(a: VersionSet | None, b: VersionSet | None) -> VersionSet:
    """Merge two replicas' states of one key (commutative, associative, idempotent).

    A sibling survives unless the other side has seen its dot (its clock covers it) and no longer holds it,
    which means a later write on that side superseded it.
    """
    if a is None or a is b:
        return b or EMPTY
    if b is None:
        return a
    a_dots = {s.dot for s in a.siblings}
    b_dots = {s.dot for s in b.siblings}
    kept: dict[Dot, Sibling] = {}
    for s in a.siblings:
        if s.dot in b_dots or not covers(b.clock, s.dot):
            kept[s.dot] = s
    for s in b.siblings:
        if s.dot not in kept and (s.dot in a_dots or not covers(a.clock, s.dot)):
            kept[s.dot] = s
    return VersionSet(merge_clocks(a.clock, b.clock), _ordered(kept.values()))


def sync_all(states: Iterable[VersionSet | None]) -> VersionSet | None:
    merged: VersionSet | None = None
    for s in states:
        if s is not None:
            merged = s if merged is None else sync(merged, s)
    return merged


def same_version(a: VersionSet | None, b: VersionSet | None) -> bool:
    """Do two replicas hold the same causal version (what read repair and anti-entropy compare)?"""
    if a is None or b is None:
        return a is b
    return dict(a.clock) == dict(b.clock) and [s.dot for s in a.siblings] == [s.dot for s in b.siblings]


def digest(state: VersionSet | None) -> bytes | None:
    """16-byte digest of a state's causal version (clock and sibling dots), None for absent.

    A dot names exactly one write, so equal clocks and dots mean equal contents.
    """
    if state is None:
        return None
    body = msgpack.packb([sorted(state.clock.items()), [list(s.dot) for s in state.siblings]])
    return hashlib.blake2b(body, digest_size=16).digest()


def encode(state: VersionSet) -> bytes:
    body: list[object] = [
        sorted(state.clock.items()),
        [[s.dot[0], s.dot[1], s.value, s.content_type, s.timestamp_ms] for s in state.siblings],
    ]
    if state.local_actor is not None:
        body.append(state.local_actor)
    return msgpack.packb(body, use_bin_type=True)


def decode(raw: bytes) -> VersionSet:
    try:
        clock_items, sibs, *local = msgpack.unpackb(raw, raw=False)
        local_actor = local[0] if local else None
        clock = {n: c for n, c in clock_items}
        siblings = tuple([Sibling((n, c), val, ct, ts) for n, c, val, ct, ts in sibs])
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise VersionError(f"undecodable version set: {exc}") from exc
    # Reject anything encode() would not have written (a peer's bytes are checked, not trusted).
    for n, c in clock.items():
        if type(n) is not str or type(c) is not int:
            raise VersionError("undecodable version set: bad clock entry")
    for sib in siblings:
        n, c = sib.dot
        if (type(n) is not str or type(c) is not int or type(sib.content_type) is not str
                or type(sib.timestamp_ms) is not int or not (sib.value is None or type(sib.value) is bytes)):
            raise VersionError("undecodable version set: bad sibling")
    if local_actor is not None and type(local_actor) is not str:
        raise VersionError("undecodable version set: bad local actor")
    return VersionSet(clock, siblings, local_actor)


def reap_tombstones(state: VersionSet, before_ms: int) -> VersionSet | None:
    """Drop a fully deleted state whose newest tombstone is older than `before_ms` (None = reap the key)."""
    if state.live or any(s.timestamp_ms >= before_ms for s in state.siblings):
        return state
    return None
