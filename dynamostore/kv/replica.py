"""The local replica: what one node does with its own copy of keys (the vnode of riak_kv, for all partitions).

Every state change is a read-modify-write run inside the storage's group commit, so concurrent requests for
one key on one node serialise without locks on the event loop. Three kinds of change:

- `coordinate`: a client write this node coordinates; it mints the write's dot.
- `merge`: a replica copy (or a repair, a handoff, an anti-entropy fix) merged in with causality.
- hints: copies held for a down primary, kept in the separate "hints" namespace until handed off.

Background services reach the store only through the replica too: handoff reads and drops hints
(`hints_for`, `drop_hint_if_unchanged`), transfers stream a partition (`scan_partition`), anti-entropy and
read repair merge, the reaper removes tombstones (`reap`). So every change of a data record passes the
one place that keeps the Merkle trees and the hint counts in step with what is stored.

Actor epochs. A dot (actor, n) must name exactly one write: if two writes ever shared a dot, a merge would
keep one and silently drop the other. Continuing an actor at n+1 is safe only in the very copy that minted
(actor, n) and has held the key ever since. A node holds several copies of one key over time and at once:
its data record, a hint record per down primary it stands in for, and records that are deleted (handed
off, reaped) and later re-created by a merge from a stale replica. Seeing its own actor in a copy therefore
proves nothing (the fault tests caught exactly that: a dot minted in one hint record reached another hint
record of the same node through replication, and was minted again there). So each stored copy records the
actor it minted with (`VersionSet.local_actor`, local bookkeeping that merges never import), and the node
continues that actor only there, and only if the client's context is not ahead of it; otherwise it starts
a new actor `<node>.<epoch>` (hex) from a never reused epoch counter (as Riak 2.0 does against "key amnesia").

Incarnations. The epoch counter itself must never run twice over the same numbers for one node id, including
across lives the store does not remember: a data directory lost or replaced (or restored from a copy), a
joiner reusing a removed member's id, a store rolled back by a power loss. Nothing stored can prove it was
not rolled back, so every life (every `open`) starts at a random 64-bit epoch: its range of at most 2^32
epochs overlaps another life's with probability below 2^-31 per pair of lives. Continuing the previous
life's counter after a clean stop would save nothing: once a store's first life started at random, the
numbers are as long. The cost is the actor's length, up to 16 hex digits instead of a few
(bench/context_sizes.py).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable

from dynamostore.kv import versioning as v
from dynamostore.storage.keys import data_key, partition_prefix, split_data_key
from dynamostore.storage.store import Namespace, Storage
from handoff.hints import hint_key, hint_prefix, split_hint_key
from ring.hashing import locate

log = logging.getLogger(__name__)

EPOCH_BLOCK = 1 << 32  # epochs one life may mint (a life starting at random needs its range small)

ChangeHook = Callable[[int, int, bytes, "bytes | None", "bytes | None"], None]


class SiblingLimitError(Exception):
    """A write would leave more siblings than the configured cap."""


class KeyRef:
    """A user key with its placement computed once: partition, Merkle segment and storage key. Read-only by
    convention; a plain class because one is made per request (compiled, a frozen dataclass's generated
    __init__ stays interpreted)."""

    __slots__ = ("key", "partition", "segment", "skey")

    def __init__(self, key: bytes, partition: int, segment: int, skey: bytes) -> None:
        self.key = key
        self.partition = partition
        self.segment = segment
        self.skey = skey

    @classmethod
    def of(cls, key: bytes, partitions: int, segments: int) -> KeyRef:
        p, s = locate(key, partitions, segments)
        return cls(key, p, s, data_key(p, s, key))


class EpochAllocator:
    """Hands out the fresh actor epochs of one life: `start` onwards, below `reserved_until`."""

    def __init__(self, start: int, reserved_until: int) -> None:
        self.next = start
        self.reserved_until = reserved_until

    def take(self) -> int:
        if self.next >= self.reserved_until:  # pragma: no cover - a billion fresh keys in one process lifetime
            raise RuntimeError("actor epoch block exhausted; restart the node to start another")
        e = self.next
        self.next += 1
        return e


def fresh_incarnation() -> int:
    """A random first epoch: a life cannot know what earlier lives of its node id used."""
    return secrets.randbits(64)


class LocalReplica:
    def __init__(
        self,
        node_id: str,
        storage: Storage,
        epochs: EpochAllocator,
        *,
        partitions: int,
        segments: int,
        max_siblings: int,
        warn_siblings: int,
    ) -> None:
        self.node_id = node_id
        self.storage = storage
        self.epochs = epochs
        self.partitions = partitions
        self.segments = segments
        self.max_siblings = max_siblings
        self.warn_siblings = warn_siblings
        self.on_change: ChangeHook | None = None  # the Merkle trees subscribe here
        # Concurrent values that formed here (the console's "siblings created"): writes coordinated here
        # that left the key with more than one live value, and merges of a copy from elsewhere (a replica
        # write of another coordinator, a hint, a repair) that combined concurrent values neither side had.
        self.siblings_written = 0
        self.siblings_merged = 0
        self.on_new_hint: Callable[[str], None] | None = None  # the handoff worker counts pending hints

    @classmethod
    async def open(cls, node_id: str, storage: Storage, **kw: int) -> LocalReplica:
        """Open this node's replica under a new incarnation (module doc, "Incarnations")."""
        start = fresh_incarnation()
        return cls(node_id, storage, EpochAllocator(start, start + EPOCH_BLOCK), **kw)

    def ref(self, key: bytes) -> KeyRef:
        return KeyRef.of(key, self.partitions, self.segments)

    def _actor_for(self, current: v.VersionSet | None, context: v.Clock, dots: tuple[v.Dot, ...] = ()) -> str:
        """The actor of the next dot: this copy's own actor if it has one, else a fresh one (module doc)."""
        if current is not None and current.local_actor is not None:
            actor = current.local_actor
            mine = current.clock.get(actor, 0)
            if context.get(actor, 0) <= mine and (not dots or all(n <= mine for a, n in dots if a == actor)):
                return actor
        return f"{self.node_id}.{self.epochs.take():x}"

    def _notify(self, ref: KeyRef, old: bytes | None, new: bytes | None) -> None:
        if self.on_change is not None and old != new:
            self.on_change(ref.partition, ref.segment, ref.key, old, new)

    # --- reads ---------------------------------------------------------------------------------------

    async def get(self, ref: KeyRef, hint_for: str | None = None) -> v.VersionSet | None:
        raw = await self.read(ref, hint_for)
        return v.decode(raw) if raw is not None else None

    async def read(self, ref: KeyRef, hint_for: str | None = None) -> bytes | None:
        """This copy's causal encoding (`versioning.causal`): what a read compares and sends."""
        skey = ref.skey if hint_for is None else hint_key(hint_for, ref.skey)
        raw = await self.storage.get("data" if hint_for is None else "hints", skey)
        return v.causal(raw) if raw is not None else None

    def read_now(self, ref: KeyRef, hint_for: str | None = None) -> bytes | None:
        """`read` without a coroutine (an LMDB point read is a few microseconds): the read hot path of the
        coordinator and of kv.get."""
        skey = ref.skey if hint_for is None else hint_key(hint_for, ref.skey)
        raw = self.storage.get_nowait("data" if hint_for is None else "hints", skey)
        return v.causal(raw) if raw is not None else None

    # --- writes --------------------------------------------------------------------------------------

    async def coordinate(
        self,
        ref: KeyRef,
        context: v.Clock,
        value: bytes | None,
        content_type: str,
        *,
        durable: bool,
        hint_for: str | None = None,
        dots: tuple[v.Dot, ...] = (),
    ) -> v.VersionSet:
        """Apply a client write here as its coordinator; returns the new state to replicate."""
        state, _ = await self.coordinate_then(ref, context, value, content_type, durable=durable, hint_for=hint_for,
                                              dots=dots)
        return state

    def coordinate_then(
        self,
        ref: KeyRef,
        context: v.Clock,
        value: bytes | None,
        content_type: str,
        *,
        durable: bool,
        hint_for: str | None = None,
        committed: Callable[[v.VersionSet, bytes, bytes | None], None] | None = None,
        dots: tuple[v.Dot, ...] = (),
    ) -> asyncio.Future[tuple[v.VersionSet, bytes]]:
        """`coordinate`, as the storage op's future of (new state, its causal encoding: what replicas are sent).

        `committed(state, encoding, replaced)` runs the moment the write is committed, before the future
        resolves (and before the fsync a durable write waits for): the coordinator sends to the replicas from
        there, in the same loop pass, instead of in a task step after it. `replaced` is the digest of the
        state the write replaced here (None: there was none); a replica holding that very state can store
        the write as it comes (`merge`'s `replaces`). `dots` is the context's dot cloud (`versioning.update`)."""
        now_ms = int(time.time() * 1000)

        digests: list[bytes | None] = [None, None]  # (old, new), for the Merkle hook

        def apply(raw: bytes | None) -> tuple[bytes | None, tuple[v.VersionSet, bytes]]:
            cur = v.decode(raw) if raw is not None else None
            actor = self._actor_for(cur, context, dots)
            new = v.update(cur, context, actor, value, content_type, now_ms, dots)
            new = v.VersionSet(new.clock, new.siblings, actor)
            if len(new.siblings) > self.max_siblings:
                raise SiblingLimitError(
                    f"key would have {len(new.siblings)} siblings, more than the limit of {self.max_siblings}; "
                    "read the key and write back with its X-Context to resolve them"
                )
            wire = v.encode(new, local=False)
            digests[0], digests[1] = v.digest_raw(raw), v.digest_wire(wire)
            return v.with_local(wire, actor), (new, wire)

        merkle = self._hook(ref, hint_for, digests)

        def on_commit(result: tuple[v.VersionSet, bytes]) -> None:
            merkle(result)
            new, wire = result
            n = len(new.siblings)
            if n > 1:  # rare: the common write supersedes what it read
                if len(new.live) > 1:
                    self.siblings_written += 1
                if n >= self.warn_siblings:
                    log.warning("key %r has %d siblings (limit %d)", ref.key, n, self.max_siblings)
            if committed is not None:
                committed(new, wire, digests[0])

        ns: Namespace = "data" if hint_for is None else "hints"
        skey = ref.skey if hint_for is None else hint_key(hint_for, ref.skey)
        return self.storage.update(ns, skey, apply, durable=durable, on_commit=on_commit)

    def merge(
        self, ref: KeyRef, incoming: v.VersionSet, *, durable: bool, hint_for: str | None = None,
        wire: bytes | None = None, replaces: bytes | None = None,
    ) -> asyncio.Future[bool]:
        """Merge a copy in with causality; the future says whether the stored state changed.

        `wire` is `incoming` as it was received (its causal encoding), if at hand: when the incoming copy
        supersedes this one, as a coordinator's write usually does, it is stored as received, without
        building the merge or encoding it again. `replaces`, from a coordinator, is the digest of the state
        its write replaced: when this copy has that digest, it is that state, which the write supersedes by
        construction (`update` keeps or drops its siblings and adds a newer dot), so it is not even decoded.
        That is the coordinator's word, taken from a peer that holds the cluster secret; the incoming bytes
        themselves are still checked (decoded by the caller, and canonical here).

        The storage op's own future, not a coroutine: replicas answer kv.put straight from the commit, without
        a task or a chained future."""

        digests: list[bytes | None] = [None, None]  # (old, new), for the Merkle hook
        as_received = wire if wire is not None and wire[:1] == b"\x92" and v.canonical(incoming) else None

        def apply(raw: bytes | None) -> tuple[bytes | None, bool]:
            old_digest: bytes | None = None
            if raw is not None and as_received is not None and replaces is not None:
                old_wire, actor = v.split_local(raw)
                old_digest = v.digest_wire(old_wire)
                if old_digest == replaces and (actor is None or isinstance(actor, str)):
                    # this copy is the state the coordinator's write replaced: the write supersedes it
                    new_digest = v.digest_wire(as_received)
                    digests[0], digests[1] = old_digest, new_digest
                    if old_digest == new_digest:
                        return raw, False
                    return v.with_local(as_received, actor), True
            if old_digest is None:  # not taken above: the stored copy is hashed once either way
                old_digest = v.digest_raw(raw)
            cur = v.decode(raw) if raw is not None else None
            if as_received is not None and (cur is None or v.supersedes(incoming, cur)):
                new_digest = v.digest_wire(as_received)
                digests[0], digests[1] = old_digest, new_digest
                if old_digest == new_digest:
                    return raw, False
                return v.with_local(as_received, cur.local_actor if cur is not None else None), True
            # the copy keeps its own actor bookkeeping; whatever the incoming copy minted stays its own
            synced = v.sync(cur, incoming)
            merged = v.VersionSet(synced.clock, synced.siblings, cur.local_actor if cur is not None else None)
            if cur is not None and v.same_version(cur, merged):
                digests[0] = digests[1] = old_digest
                return raw, False
            if cur is not None and len(merged.siblings) > 1:
                self._count_merged_siblings(cur, incoming, merged)
            wire = v.encode(merged, local=False)
            digests[0], digests[1] = old_digest, v.digest_wire(wire)
            return v.with_local(wire, merged.local_actor), True

        ns: Namespace = "data" if hint_for is None else "hints"
        skey = ref.skey if hint_for is None else hint_key(hint_for, ref.skey)
        return self.storage.update(ns, skey, apply, durable=durable, on_commit=self._hook(ref, hint_for, digests))

    def _count_merged_siblings(self, cur: v.VersionSet, incoming: v.VersionSet, merged: v.VersionSet) -> None:
        """Count a merge that combined concurrent values: more live ones than either side held (the storage
        writer thread runs it; only the event loop reads the counter, and a torn read is impossible for an int)."""
        live = len(merged.live)
        if live > 1 and live > len(cur.live) and live > len(incoming.live):
            self.siblings_merged += 1

    def _hook(self, ref: KeyRef, hint_for: str | None, digests: list[bytes | None]) -> Callable[[object], None]:
        """What follows a committed change, once `apply` has filled `digests` with (old, new): the Merkle trees
        hear of it, or the new hint is counted. Storage runs it right after the commit, even if the caller
        stopped waiting (a client that went away), so the trees always match what is stored."""
        if hint_for is None:
            return lambda _: self._notify(ref, digests[0], digests[1])
        return lambda _: self._hinted(hint_for, digests[0])

    def _hinted(self, target: str, old_digest: bytes | None) -> None:
        if old_digest is None and self.on_new_hint is not None:
            self.on_new_hint(target)

    def merge_raw(self, skey: bytes, incoming: v.VersionSet, *, durable: bool = False) -> asyncio.Future[bool]:
        """Merge by storage key (handoff and anti-entropy deal in storage keys)."""
        p, s, key = split_data_key(skey)
        return self.merge(KeyRef(key, p, s, skey), incoming, durable=durable)

    def reap(self, ref: KeyRef, expected: bytes, before_ms: int) -> asyncio.Future[bool]:
        """Remove a fully deleted key's record if it is still the tombstone state whose digest is `expected`
        and its newest tombstone is older than `before_ms` by this node's clock (the reaper's rule 3: a write
        racing the reap survives). The future says whether the record was removed."""

        def apply(raw: bytes | None) -> tuple[bytes | None, bool]:
            if raw is None:
                return None, False
            state = v.decode(raw)
            if v.digest(state) != expected or v.reap_tombstones(state, before_ms) is not None:
                return raw, False  # changed since the check, or not past grace by this clock
            return None, True

        def removed(gone: bool) -> None:
            if gone:
                self._notify(ref, expected, None)

        return self.storage.update("data", ref.skey, apply, on_commit=removed)

    async def drop_partition(self, partition: int, batch: int = 500) -> int:
        """Delete every record of a key partition this node no longer replicates (its new primaries hold it):
        kept, an old copy would come back to life if the partition ever returned here. Returns how many."""
        dropped = 0
        while True:
            rows = await self.scan_partition(partition, None, batch)
            if not rows:
                return dropped
            gone = await asyncio.gather(*(self._drop(skey) for skey, _ in rows))
            dropped += sum(1 for g in gone if g)
            if len(rows) < batch:
                return dropped

    def _drop(self, skey: bytes) -> asyncio.Future[bool]:
        p, s, key = split_data_key(skey)
        ref = KeyRef(key, p, s, skey)
        old: list[bytes | None] = [None]

        def apply(raw: bytes | None) -> tuple[bytes | None, bool]:
            old[0] = v.digest_raw(raw)
            return None, raw is not None

        def removed(gone: bool) -> None:
            if gone:
                self._notify(ref, old[0], None)

        return self.storage.update("data", skey, apply, on_commit=removed)

    # --- what background services read ---------------------------------------------------------------

    async def stored(self, ref: KeyRef) -> bytes | None:
        """The stored record of a key as it is on disk (anti-entropy sends it to a peer, which decodes it)."""
        return await self.storage.get("data", ref.skey)

    async def scan_partition(self, partition: int, after: bytes | None, limit: int) -> list[tuple[bytes, bytes]]:
        """Up to `limit` (storage key, record) pairs of one key partition, in key order after `after`."""
        return await self.storage.scan("data", partition_prefix(partition), start_after=after, limit=limit)

    async def hint_records(self, ref: KeyRef, targets: list[str]) -> list[tuple[str, bytes]]:
        """The hint records this node holds for one key, as (target, record), for the targets named."""
        out: list[tuple[str, bytes]] = []
        for target in targets:
            raw = await self.storage.get("hints", hint_key(target, ref.skey))
            if raw is not None:
                out.append((target, raw))
        return out

    async def holds_hint(self, skey: bytes, targets: list[str]) -> bool:
        """Whether this node holds a hint for storage key `skey` for any of `targets`."""
        for target in targets:
            if await self.storage.get("hints", hint_key(target, skey)) is not None:
                return True
        return False

    async def has_hints(self) -> bool:
        """Whether this node holds any hint (a leaving node is removed only once it holds none)."""
        return bool(await self.storage.scan("hints", b"", limit=1))

    async def hint_counts(self) -> dict[str, int]:
        """Hints held per target (hints survive restarts: the handoff service counts them at start)."""
        counts: dict[str, int] = {}
        after: bytes | None = None
        while True:
            rows = await self.storage.scan("hints", b"", start_after=after, limit=5000)
            if not rows:
                return counts
            for hkey, _ in rows:
                target, _ = split_hint_key(hkey)
                counts[target] = counts.get(target, 0) + 1
            after = rows[-1][0]

    async def hints_for(self, target: str, limit: int) -> list[tuple[bytes, bytes]]:
        """Up to `limit` hints held for `target`, as (storage key, record)."""
        rows = await self.storage.scan("hints", hint_prefix(target), limit=limit)
        return [(split_hint_key(hkey)[1], raw) for hkey, raw in rows]

    def drop_hint_if_unchanged(self, target: str, skey: bytes, sent: bytes) -> asyncio.Future[bool]:
        """Delete a delivered hint, unless a newer hinted write merged into it since it was read (then it stays
        for the next round). The future says whether it was deleted."""

        def apply(raw: bytes | None) -> tuple[bytes | None, bool]:
            if raw == sent:
                return None, True
            return raw, False

        return self.storage.update("hints", hint_key(target, skey), apply)

    # --- bookkeeping of background services (not data) ------------------------------------------------

    async def load_meta(self, key: bytes) -> bytes | None:
        return await self.storage.get("meta", key)

    async def save_meta(self, key: bytes, value: bytes, *, durable: bool = True) -> None:
        await self.storage.put("meta", key, value, durable=durable)
