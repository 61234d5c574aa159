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
import threading
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import msgpack

Clock = Mapping[str, int]



_packers = threading.local()  # one packer per thread: any thread that encodes (the loop, a reader) gets its own


def packb(obj: Any) -> bytes:
    """msgpack.packb without building a Packer per call (a measurable share of a replica's CPU per write)."""
    try:
        packer = _packers.packer
    except AttributeError:
        packer = _packers.packer = msgpack.Packer(use_bin_type=True, autoreset=True)
    out: bytes = packer.pack(obj)
    return out


def _unpackb(raw: bytes) -> list[Any]:
    out: list[Any] = msgpack.unpackb(raw, raw=False)
    return out

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


class VersionSet:
    """A key's causal state. Immutable by convention (nothing assigns to a built one); a slotted class rather
    than a frozen dataclass because replicas build several per request and a frozen dataclass's __init__
    costs four times as much."""

    __slots__ = ("clock", "siblings", "local_actor")

    def __init__(self, clock: Mapping[str, int], siblings: tuple[Sibling, ...], local_actor: str | None = None):
        self.clock = clock
        self.siblings = siblings
        # Local bookkeeping of one stored copy, never causal information: the actor this copy minted dots
        # with (see replica.py, "actor epochs"). Ignored by equality, sync, same_version and digest; a copy
        # that is merged in from elsewhere never brings its own.
        self.local_actor = local_actor

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, VersionSet):
            return NotImplemented
        return dict(self.clock) == dict(other.clock) and self.siblings == other.siblings

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"VersionSet(clock={dict(self.clock)!r}, siblings={self.siblings!r}, local_actor={self.local_actor!r})"

    @property
    def live(self) -> tuple[Sibling, ...]:
        sibs = self.siblings
        if len(sibs) == 1:  # the common case, without a generator
            return sibs if sibs[0].value is not None else ()
        return tuple([s for s in sibs if s.value is not None])

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
    dots: tuple[Dot, ...] = (),
) -> VersionSet:
    """Apply a client write at coordinator `node`: drop what the context saw, add a sibling with a new dot.

    The context is a version vector `context` plus a dot cloud `dots` (sorted): the dots it covers beyond
    the vector, which a write's own answer adds (see `written_context`). A cloud dot this copy has not seen
    cannot be recorded in its clock without covering the writes before it on that actor, which nobody read:
    it is then left out, and the write it names survives as a sibling when it arrives (never a lost write).
    """
    state = state or EMPTY
    if dots:
        kept = [s for s in state.siblings if not covers(context, s.dot) and s.dot not in dots]
    else:
        kept = [s for s in state.siblings if not covers(context, s.dot)]
    clock = merge_clocks(state.clock, context)
    for actor, n in dots:  # sorted: a run of consecutive dots extends the clock one by one
        if clock.get(actor, 0) == n - 1:
            clock[actor] = n
    counter = clock.get(node, 0) + 1
    clock[node] = counter
    new = Sibling((node, counter), value, content_type, now_ms)
    return VersionSet(clock, _ordered([*kept, new]))


def context_covers(clock: Clock, dots: tuple[Dot, ...], dot: Dot) -> bool:
    """Does the context (vector `clock`, cloud `dots`) cover `dot`?"""
    return clock.get(dot[0], 0) >= dot[1] or dot in dots


def compact_context(clock: Clock, dots: Iterable[Dot]) -> tuple[dict[str, int], tuple[Dot, ...]]:
    """The same context, in its smallest form: cloud dots the vector covers go, a dot right after the
    vector's entry for its actor extends the entry (repeatedly), the rest stays in the cloud, sorted."""
    out = dict(clock)
    rest: list[Dot] = []
    for actor, n in sorted(set(dots)):  # ascending per actor: one pass settles every run
        have = out.get(actor, 0)
        if n == have + 1:
            out[actor] = n
        elif n > have:
            rest.append((actor, n))
    return out, tuple(rest)


def written_context(clock: Clock, dots: tuple[Dot, ...], dot: Dot) -> tuple[dict[str, int], tuple[Dot, ...]]:
    """The context a write answers with: exactly what its request's context covered, plus its own dot.

    Never the key's merged clock, which covers siblings the writer did not see: a client that writes again
    with the answer's context then supersedes only what it read or wrote itself."""
    if not dots and clock.get(dot[0], 0) == dot[1] - 1:  # the careful writer's usual case: a plain vector
        out = dict(clock)
        out[dot[0]] = dot[1]
        return out, ()
    return compact_context(clock, (*dots, dot))


def minted_dot(state: VersionSet) -> Dot | None:
    """The dot of the write that produced `state` at its coordinator: that copy's actor, at its clock entry
    (`update` mints the entry's next counter). None for a state that was not minted here."""
    actor = state.local_actor
    if actor is None or actor not in state.clock:
        return None
    return (actor, state.clock[actor])


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


def supersedes(new: VersionSet, old: VersionSet) -> bool:
    """`sync(old, new)` is exactly `new`: its clock has seen all of `old`'s, and each of its siblings is one
    `old` holds or one `old` never saw. The usual case of a replica receiving its coordinator's write,
    checked without building the merge."""
    clock = old.clock
    if not descends(new.clock, clock):
        return False
    if len(new.siblings) == 1 and len(old.siblings) == 1 and new.siblings[0].dot == old.siblings[0].dot:
        return True
    held = {s.dot for s in old.siblings}
    return all(s.dot in held or not covers(clock, s.dot) for s in new.siblings)


def canonical(state: VersionSet) -> bool:
    """Clock entries and sibling dots in the order `encode` writes them: the state's encoding as received
    is the one this node would write, so it can be stored as it came."""
    # plain loops: a replica checks every coordinator's write, and slices and zips would allocate
    prev_name: str | None = None
    for name in state.clock:
        if prev_name is not None and not prev_name < name:
            return False
        prev_name = name
    prev_dot: Dot | None = None
    for s in state.siblings:
        if prev_dot is not None and not prev_dot < s.dot:
            return False
        prev_dot = s.dot
    return True


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


_DIGESTER = hashlib.blake2b(digest_size=16)  # copied per digest: cheaper than a new hasher


def digest(state: VersionSet | None) -> bytes | None:
    """16-byte digest of a state's causal version, None for absent: BLAKE2b-128 of its causal encoding.

    The causal encoding is canonical (sorted clock, siblings sorted by dot) and a dot names exactly one
    write, so two copies have equal digests exactly when they hold the same version. Hashing the encoding,
    rather than packing the clock and dots once more, lets a write digest the bytes it stores anyway
    (`digest_wire`, `digest_raw`).
    """
    if state is None:
        return None
    return digest_wire(encode(state, local=False))


def digest_wire(wire: bytes) -> bytes:
    """`digest` of the state whose causal encoding (`encode(state, local=False)`) is `wire`."""
    h = _DIGESTER.copy()
    h.update(wire)
    return h.digest()


def digest_raw(raw: bytes | None) -> bytes | None:
    """`digest` of the state stored as `raw` (its local bookkeeping included), without decoding it."""
    return None if raw is None else digest_wire(causal(raw))


def encode(state: VersionSet, *, local: bool = True) -> bytes:
    """The stored form; `local=False` leaves out the copy's local bookkeeping (what replicas send each other)."""
    body: list[object] = [
        sorted(state.clock.items()),
        [[s.dot[0], s.dot[1], s.value, s.content_type, s.timestamp_ms] for s in state.siblings],
    ]
    if local and state.local_actor is not None:
        body.append(state.local_actor)
    return packb(body)


def with_local(wire: bytes, local_actor: str | None) -> bytes:
    """The stored form of a state from its causal encoding: `encode(state)` without packing it twice."""
    if local_actor is None:
        return wire
    return b"\x93" + wire[1:] + packb(local_actor)


def causal(raw: bytes) -> bytes:
    """A stored encoding without its local bookkeeping: what `encode(decode(raw), local=False)` gives, without
    decoding. Two replicas holding the same version have byte-equal causal encodings (a dot names exactly one
    write, and the encoding is canonical: sorted clock, sorted siblings), so a read compares replies as bytes."""
    return split_local(raw)[0]


def split_local(raw: bytes) -> tuple[bytes, object]:
    """`causal(raw)` and the stored copy's local actor (None when it has none), without decoding the siblings.
    The actor is as stored: `decode` is what checks it is a string."""
    if raw[:1] != b"\x93":
        return raw, None
    # One Unpacker per thread, drained after each use (making one costs more than the skipping).
    try:
        unpacker = _packers.unpacker
    except AttributeError:
        unpacker = _packers.unpacker = msgpack.Unpacker()
    try:
        unpacker.feed(raw)
        start = unpacker.tell()
        unpacker.read_array_header()
        unpacker.skip()
        unpacker.skip()
        end = unpacker.tell()
        actor = unpacker.unpack()  # the local actor: the buffer is empty again
    except Exception:
        _packers.unpacker = msgpack.Unpacker()  # whatever is left of a bad record goes with the old one
        raise
    if unpacker.tell() - start != len(raw):  # trailing bytes: never left for the next record to meet
        _packers.unpacker = msgpack.Unpacker()
    return b"\x92" + raw[1:end - start], actor


_new_sibling = tuple.__new__  # Sibling's own __new__ is a Python function; the fields are checked below


def decode(raw: bytes) -> VersionSet:
    try:
        body = _unpackb(raw)
        clock = dict(body[0])
        siblings = tuple([_new_sibling(Sibling, ((n, c), val, ct, ts)) for n, c, val, ct, ts in body[1]])
        local_actor = body[2] if len(body) > 2 else None
    except (ValueError, TypeError, IndexError, KeyError, msgpack.UnpackException) as exc:
        raise VersionError(f"undecodable version set: {exc}") from exc
    # Reject anything encode() would not have written (a peer's bytes are checked, not trusted).
    for n, c in clock.items():
        if type(n) is not str or type(c) is not int:
            raise VersionError("undecodable version set: bad clock entry")
    for (n, c), val, ct, ts in siblings:
        if (type(n) is not str or type(c) is not int or type(ct) is not str or type(ts) is not int
                or not (val is None or type(val) is bytes)):
            raise VersionError("undecodable version set: bad sibling")
    if local_actor is not None and type(local_actor) is not str:
        raise VersionError("undecodable version set: bad local actor")
    return VersionSet(clock, siblings, local_actor)


def reap_tombstones(state: VersionSet, before_ms: int) -> VersionSet | None:
    """Drop a fully deleted state whose newest tombstone is older than `before_ms` (None = reap the key)."""
    if state.live or any(s.timestamp_ms >= before_ms for s in state.siblings):
        return state
    return None
