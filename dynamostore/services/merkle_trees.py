"""The Merkle trees of the partitions this node replicates, kept current and verified against storage.

One `antientropy.MerkleTree` per local partition. Three ways a leaf is set:

- **Deltas** (`on_change`, the replica's change hook): every committed change to the data namespace
  subtracts the old (key, digest) item and adds the new one: O(1), no storage read. Inner nodes are
  rehashed lazily in bulk when a walk reads them.
- **Verification scans** (`verify_partition`, `verify_segments`): a paced, chunked storage scan recomputes
  leaves and replaces them. Used for the full build at start (the trees begin empty) and by the periodic
  sweep, and for single segments an exchange found stale.
- **A persisted snapshot** (`save` on clean shutdown, `load` at start), so a clean restart skips the scan.

Scans race with writes: a write can commit before or after the scan reads its key, and its delta arrives
on the loop a little later. A *write fence* makes the replacement exact. While a scan runs, segments that
receive a delta are recorded; after the scan a no-op storage write is queued behind every write that
could have been read (one FIFO writer), and awaited. Every delta of a write the scan saw has then been
delivered (futures settle in commit order, each caller notifies right after its await), so a segment
that got no delta in the window has exactly the scanned items; deltas arriving later are for writes the
scan did not see, which is what a delta on top of the scanned leaf needs. Segments that did get a delta
are rescanned (a few times), then left to the exchange's stale-segment check and the next sweep.

Crash safety: `load` deletes the snapshot (durably) before the node serves, so after a crash there is no
snapshot and the trees are rebuilt by scanning. A change that lands after `save` (the RPC server closes
after the services) makes a leaf stale; a stale leaf shows as a differing segment with equal keys, which
both sides of an exchange detect and rescan (see `antientropy.exchange`), and the sweep rescans everything.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from antientropy.merkle import MerkleTree
from dynamostore.kv import versioning as v
from dynamostore.storage.store import Storage
from dynamostore.storage.keys import partition_prefix, segment_prefix, split_data_key

log = logging.getLogger(__name__)

SNAPSHOT_PREFIX = b"ae_tree/"
FENCE_KEY = b"ae_fence"
_RESCANS = 5
_SCAN_PAGE = 256  # records decoded per slice of loop time (~30 us each)
#: A range scan reads the whole stretch between the first and last wanted segments; below this many keys
#: per wanted segment that is cheaper than one reader-thread trip per segment.
_RANGE_SCAN_KEYS_PER_SEGMENT = 32

#: Called for every record a scan reads: (partition, user key, decoded state, digest).
Visitor = Callable[[int, bytes, v.VersionSet, bytes], None]


def _snapshot_key(partition: int) -> bytes:
    return SNAPSHOT_PREFIX + b"%05d" % partition


@dataclass
class ScanStats:
    keys: int = 0
    segments_fixed: int = 0  # leaves a scan found different from what the deltas had made them
    segments_retried: int = 0  # leaves left to a later check because writes kept touching them


class PartitionTrees:
    """Trees of the local partitions. Single-threaded: used from the event loop only."""

    def __init__(self, storage: Storage, partitions: Iterable[int], segments: int, *,
                 scan_keys_per_sec: float, scan_chunk: int = 128) -> None:
        self.storage = storage
        self.segments = segments
        self.trees: dict[int, MerkleTree] = {p: MerkleTree(segments) for p in partitions}
        self.built: set[int] = set()
        self.scan_keys_per_sec = scan_keys_per_sec
        self.scan_chunk = scan_chunk
        self.stats = ScanStats()
        #: Approximate keys per partition (exact after a scan, then kept by deltas): picks scan strategies.
        self.counts: dict[int, int] = {}
        self._watchers: dict[int, list[set[int]]] = {}

    # -- deltas ---------------------------------------------------------------------------------------

    def set_partitions(self, partitions: Iterable[int]) -> list[int]:
        """The ring changed: keep trees for exactly `partitions`. Returns the new ones (not built yet)."""
        wanted = set(partitions)
        for p in set(self.trees) - wanted:
            del self.trees[p]
            self.built.discard(p)
            self.counts.pop(p, None)
        new = sorted(wanted - set(self.trees))
        for p in new:
            self.trees[p] = MerkleTree(self.segments)
        return new

    def on_change(self, partition: int, segment: int, key: bytes, old: bytes | None, new: bytes | None) -> None:
        """The replica's change hook: O(1) leaf update, plus bookkeeping for scans in progress."""
        tree = self.trees.get(partition)
        if tree is None:
            return  # not a partition we replicate (e.g. a stray repair): nothing to keep
        tree.update(key, old, new, segment=segment)
        if (old is None) != (new is None):
            self.counts[partition] = self.counts.get(partition, 0) + (1 if old is None else -1)
        for touched in self._watchers.get(partition, ()):
            touched.add(segment)

    def root_hex(self, partition: int) -> str:
        return self.trees[partition].root().hex()

    # -- scans ----------------------------------------------------------------------------------------

    async def _fence(self) -> None:
        """Wait until every write queued before now has committed and its delta has been delivered."""
        await self.storage.update("meta", FENCE_KEY, lambda cur: (cur, None))

    async def _pace(self, keys: int, started: float) -> None:
        """Sleep so that scans stay under scan_keys_per_sec; always yield to the loop."""
        budget = keys / self.scan_keys_per_sec
        await asyncio.sleep(max(0.0, budget - (time.monotonic() - started)))

    async def verify_partition(self, partition: int, visit: Visitor | None = None) -> int:
        """Scan one partition, replace every leaf that can be set exactly, rescan the others.

        Returns the number of leaves that were wrong. Marks the partition built.
        """
        touched: set[int] = set()
        self._watchers.setdefault(partition, []).append(touched)
        found: dict[int, dict[bytes, bytes]] = {}
        try:
            after: bytes | None = None
            prefix = partition_prefix(partition)
            while True:
                started = time.monotonic()
                rows = await self.storage.scan("data", prefix, start_after=after, limit=self.scan_chunk)
                if not rows:
                    break
                for skey, raw in rows:
                    _, seg, key = split_data_key(skey)
                    digest = self._digest(partition, key, raw, visit)
                    if digest is not None:
                        found.setdefault(seg, {})[key] = digest
                after = rows[-1][0]
                self.stats.keys += len(rows)
                await self._pace(len(rows), started)
            await self._fence()
        finally:
            self._watchers[partition].remove(touched)
        tree = self.trees[partition]
        self.counts[partition] = sum(len(items) for items in found.values())
        fixed = 0
        for seg in range(self.segments):
            if seg not in touched and tree.rebuild_segment(seg, found.get(seg, {}).items()):
                fixed += 1
        if partition in self.built:  # on a first build every leaf "changes": not worth reporting
            self.stats.segments_fixed += fixed
        if touched:
            fixed += await self.verify_segments(partition, sorted(touched))
        self.built.add(partition)
        return fixed

    async def verify_segments(self, partition: int, segments: list[int]) -> int:
        """Rescan a few segments (stale ones an exchange found, or ones a scan could not pin down)."""
        tree = self.trees.get(partition)
        if tree is None:
            return 0
        fixed = 0
        pending = list(segments)
        for _ in range(_RESCANS):
            if not pending:
                break
            touched: set[int] = set()
            self._watchers.setdefault(partition, []).append(touched)
            try:
                items = await self.segment_items(partition, pending)
                await self._fence()
            finally:
                self._watchers[partition].remove(touched)
            for seg in pending:
                if seg not in touched:
                    fixed += tree.rebuild_segment(seg, items[seg].items())
            pending = [s for s in pending if s in touched]
        self.stats.segments_retried += len(pending)
        self.stats.segments_fixed += fixed
        return fixed

    def _digest(self, partition: int, key: bytes, raw: bytes, visit: Visitor | None) -> bytes | None:
        try:
            state = v.decode(raw)
        except v.VersionError:
            log.error("partition %d: undecodable record for key %r skipped by anti-entropy", partition, key)
            return None
        digest = v.digest_raw(raw)  # the stored bytes: no second encoding
        assert digest is not None
        if visit is not None:
            visit(partition, key, state, digest)
        return digest

    async def segment_items(self, partition: int, segments: Iterable[int]) -> dict[int, dict[bytes, bytes]]:
        """Current (key -> digest) of each listed segment, from storage.

        Each storage scan is a trip to a reader thread, so many segments of a small partition are read
        with one range scan (from the first wanted segment to the last) instead of one scan each; only
        records of wanted segments are decoded.
        """
        wanted = sorted(set(segments))
        out: dict[int, dict[bytes, bytes]] = {seg: {} for seg in wanted}
        if not wanted:
            return out
        if len(wanted) >= 4 and self.counts.get(partition, 0) <= _RANGE_SCAN_KEYS_PER_SEGMENT * len(wanted):
            ranges: list[tuple[bytes, bytes | None, int]] = [
                (partition_prefix(partition), segment_prefix(partition, wanted[0]), wanted[-1])]
        else:
            ranges = [(segment_prefix(partition, seg), None, seg) for seg in wanted]
        for prefix, after, last in ranges:
            while True:
                rows = await self.storage.scan("data", prefix, start_after=after, limit=_SCAN_PAGE)
                for skey, raw in rows:
                    _, seg, key = split_data_key(skey)
                    items = out.get(seg)
                    if items is not None:
                        digest = self._digest(partition, key, raw, None)
                        if digest is not None:
                            items[key] = digest
                if len(rows) < _SCAN_PAGE or split_data_key(rows[-1][0])[1] > last:
                    break
                after = rows[-1][0]
                await asyncio.sleep(0)  # a big segment must not hold the loop for the whole read
        return out

    # -- snapshot -------------------------------------------------------------------------------------

    async def save(self) -> int:
        """Persist the leaves of every built tree (clean shutdown). Returns how many were saved."""
        saved = 0
        for p in sorted(self.built):
            await self.storage.put("meta", _snapshot_key(p), self.trees[p].to_bytes())
            saved += 1
        return saved

    async def load(self) -> int:
        """Adopt the snapshot of a clean shutdown, then delete it durably so a crash forces a rebuild.

        Must run before the node accepts writes. Returns how many partitions were loaded.
        """
        rows = await self.storage.scan("meta", SNAPSHOT_PREFIX, limit=1 << 20)
        loaded = 0
        for mkey, raw in rows:
            try:
                p = int(mkey[len(SNAPSHOT_PREFIX):])
                tree = MerkleTree.from_bytes(raw)
            except ValueError as exc:
                log.warning("ignoring anti-entropy snapshot %r: %s", mkey, exc)
                continue
            if p in self.trees and tree.num_segments == self.segments:
                self.trees[p] = tree
                self.built.add(p)
                loaded += 1
        for i, (mkey, _) in enumerate(rows):
            await self.storage.put("meta", mkey, None, durable=i == len(rows) - 1)
        return loaded
