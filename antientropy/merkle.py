"""An incrementally maintained Merkle tree over one partition's (key, version digest) items.

Shape: the leaves are the partition's ``num_segments`` segments (a key's segment is
``segment_of(key_hash(key), num_segments)``, the same function that lays out storage). Above them sit
inner levels of ``fanout`` children each, up to a single root. Levels are numbered top-down: level 0 is
the root, level ``depth`` is the leaf (segment) level. With 1024 segments and fanout 32 the depth is 2.

Leaf hash: the sum mod 2**128 of a 128-bit BLAKE2b hash of every (key, digest) item in the segment. A sum
is order-independent and invertible, so one write changes a leaf in O(1) by subtracting the old item and
adding the new one, without reading the segment. Inner hash: BLAKE2b of the concatenated child hashes,
recomputed lazily (``rehash``) only along the paths above dirty segments, like riak_core's hashtree.erl.

Why a sum and not XOR (Cassandra's choice): both are order-independent and invertible, but XOR cancels
identical items. In a consistent map a key occurs once, so identical items never legitimately meet; they
meet only when the caller's old-digest bookkeeping is wrong (an insert applied twice, a replayed write).
XOR would then silently hide the item (the tree claims the key is absent and anti-entropy never looks);
the sum leaves a visible mismatch. XOR is also linear over GF(2): with ~129 chosen keys an adversary can
solve for a set whose hashes XOR to any target, making two different segments look equal. Addition does
not yield to plain linear algebra. A leaf that disagrees with storage (wrong bookkeeping, lost update of
the tree) shows up as a segment that differs while none of its keys do; ``rebuild_segment`` fixes it from
a storage scan, and the exchange reports such segments.

The tree is pure: no I/O, no clock. ``to_bytes``/``from_bytes`` let the node persist the leaf array on a
clean shutdown (inner levels are recomputed on load: 1024 leaves are cheap to hash).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Sequence

from ring.hashing import key_hash, segment_of

HASH_BYTES = 16
_MASK = (1 << (8 * HASH_BYTES)) - 1
_ITEM_PERSON = b"dsmt-item"
_INNER_PERSON = b"dsmt-inner"
_FILE_MAGIC = b"DSMT"
_FILE_VERSION = 2  # 2: version digests hash the causal encoding (leaves saved by 1 are rebuilt)
_HEADER = struct.Struct(">4sBIH")  # magic, version, num_segments, fanout

DEFAULT_SEGMENTS = 1024
DEFAULT_FANOUT = 32


# Personalised hashers are copied, not built per call: a copy costs half as much (two per write per node).
_ITEM_HASHER = hashlib.blake2b(digest_size=HASH_BYTES, person=_ITEM_PERSON)
_INNER_HASHER = hashlib.blake2b(digest_size=HASH_BYTES, person=_INNER_PERSON)


def item_hash(key: bytes, digest: bytes) -> int:
    """128-bit hash of one (key, digest) item. The key is length-prefixed so (k, d) pairs cannot alias."""
    h = _ITEM_HASHER.copy()
    h.update(len(key).to_bytes(4, "big") + key + digest)
    return int.from_bytes(h.digest(), "big")


def sum_items(items: Iterable[tuple[bytes, bytes]]) -> int:
    """The order-independent combination of items (what a leaf or a sub-bucket holds)."""
    acc = 0
    for key, digest in items:
        acc += item_hash(key, digest)
    return acc & _MASK


def int_to_hash(value: int) -> bytes:
    return value.to_bytes(HASH_BYTES, "big")


def _inner_hash(children: Iterable[bytes]) -> bytes:
    h = _INNER_HASHER.copy()
    h.update(b"".join(children))
    return h.digest()


def level_sizes(num_segments: int, fanout: int) -> tuple[int, ...]:
    """Number of nodes per level, root (level 0) first, leaves last."""
    sizes = [num_segments]
    while sizes[-1] > 1:
        sizes.append(-(-sizes[-1] // fanout))
    return tuple(reversed(sizes))


class MerkleTree:
    """Merkle tree of one partition. Not thread-safe: the node's single writer thread owns it."""

    def __init__(self, num_segments: int = DEFAULT_SEGMENTS, fanout: int = DEFAULT_FANOUT) -> None:
        if num_segments < 1 or num_segments > 0xFFFF_FFFF:
            raise ValueError(f"num_segments must be in [1, 2**32), got {num_segments}")
        if fanout < 2 or fanout > 0xFFFF:
            raise ValueError(f"fanout must be in [2, 65536), got {fanout}")
        self.num_segments = num_segments
        self.fanout = fanout
        self._sizes = level_sizes(num_segments, fanout)
        self._leaves: list[int] = [0] * num_segments
        # The leaves as hash bytes, brought up to date by rehash for the dirty segments only: a rehash under
        # steady writes converts the few hundred changed leaves, not all 1024 below its dirty parents.
        self._leaf_bytes: list[bytes] = [b""] * num_segments
        # _inner[level] for level in 0..depth-1; filled by the first rehash.
        self._inner: list[list[bytes]] = [[b""] * n for n in self._sizes[:-1]]
        self._dirty: set[int] = set(range(num_segments))
        #: Inner nodes recomputed since creation (observability, and tests that rehash stays local).
        self.inner_hashes_computed = 0

    # -- construction -------------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        items: Iterable[tuple[bytes, bytes]],
        num_segments: int = DEFAULT_SEGMENTS,
        fanout: int = DEFAULT_FANOUT,
    ) -> MerkleTree:
        """Full build from a scan of (key, digest) items, for a first start or a periodic rebuild."""
        tree = cls(num_segments, fanout)
        leaves = tree._leaves
        for key, digest in items:
            seg = segment_of(key_hash(key), num_segments)
            leaves[seg] += item_hash(key, digest)
        tree._leaves = [v & _MASK for v in leaves]
        tree._dirty = set(range(num_segments))
        tree.rehash()
        return tree

    def copy(self) -> MerkleTree:
        other = MerkleTree(self.num_segments, self.fanout)
        other._leaves = list(self._leaves)
        other._leaf_bytes = list(self._leaf_bytes)
        other._inner = [list(level) for level in self._inner]
        other._dirty = set(self._dirty)
        return other

    # -- writes -------------------------------------------------------------------------------------

    def segment_for(self, key: bytes) -> int:
        return segment_of(key_hash(key), self.num_segments)

    def update(
        self,
        key: bytes,
        old_digest: bytes | None,
        new_digest: bytes | None,
        *,
        segment: int | None = None,
    ) -> None:
        """Replace one item: ``None`` means absent. O(1); marks the segment dirty for the next rehash.

        ``segment`` may be passed when the caller already computed it (storage keys carry it).
        """
        if old_digest == new_digest:
            return
        seg = self.segment_for(key) if segment is None else segment
        acc = self._leaves[seg]
        if old_digest is not None:
            acc -= item_hash(key, old_digest)
        if new_digest is not None:
            acc += item_hash(key, new_digest)
        self._leaves[seg] = acc & _MASK
        self._dirty.add(seg)

    def rebuild_segment(self, segment: int, items: Iterable[tuple[bytes, bytes]]) -> bool:
        """Reset one leaf from a storage scan of that segment. Returns True if the leaf was wrong."""
        value = sum_items(items)
        if value == self._leaves[segment]:
            return False
        self._leaves[segment] = value
        self._dirty.add(segment)
        return True

    def rehash(self) -> int:
        """Recompute the inner nodes above dirty segments, bottom-up. Returns how many were recomputed."""
        if not self._dirty:
            return 0
        computed = 0
        depth = self.depth
        dirty = self._dirty
        leaves, leaf_bytes = self._leaves, self._leaf_bytes
        for seg in dirty:
            leaf_bytes[seg] = int_to_hash(leaves[seg])
        for level in range(depth - 1, -1, -1):
            parents = {i // self.fanout for i in dirty}
            for p in parents:
                self._inner[level][p] = _inner_hash(self._raw_children(level, p))
            computed += len(parents)
            dirty = parents
        self._dirty = set()
        self.inner_hashes_computed += computed
        return computed

    # -- reads --------------------------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Index of the leaf level (0 when there is a single segment)."""
        return len(self._sizes) - 1

    @property
    def dirty_segments(self) -> int:
        return len(self._dirty)

    def level_size(self, level: int) -> int:
        return self._sizes[level]

    def children(self, level: int, index: int) -> range:
        """Indices at ``level + 1`` of the children of node ``index`` at ``level``."""
        if not 0 <= level < self.depth:
            raise IndexError(f"level {level} has no children (depth {self.depth})")
        start = index * self.fanout
        return range(start, min(start + self.fanout, self._sizes[level + 1]))

    def node(self, level: int, index: int) -> bytes:
        """Hash of one node; rehashes first if needed so the answer is current."""
        if level == self.depth:
            return self.segment_hash(index)
        if self._dirty:
            self.rehash()
        return self._inner[level][index]

    def children_hashes(self, level: int, index: int) -> list[bytes]:
        """Hashes of the children of one node (the unit the exchange ships per differing node)."""
        if self._dirty:
            self.rehash()
        return self._raw_children(level, index)

    def _raw_children(self, level: int, index: int) -> list[bytes]:
        rng = self.children(level, index)
        if level + 1 == self.depth:
            return self._leaf_bytes[rng.start : rng.stop]
        return self._inner[level + 1][rng.start : rng.stop]

    def segment_hash(self, segment: int) -> bytes:
        return int_to_hash(self._leaves[segment])

    def root(self) -> bytes:
        return self.node(0, 0)

    def leaves(self) -> Sequence[bytes]:
        return [int_to_hash(v) for v in self._leaves]

    # -- persistence --------------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """Leaf array with a header and a trailing checksum, for persisting on a clean shutdown."""
        body = _HEADER.pack(_FILE_MAGIC, _FILE_VERSION, self.num_segments, self.fanout) + b"".join(
            int_to_hash(v) for v in self._leaves
        )
        return body + hashlib.blake2b(body, digest_size=HASH_BYTES).digest()

    @classmethod
    def from_bytes(cls, data: bytes) -> MerkleTree:
        """Inverse of ``to_bytes``. Raises ValueError on a torn or foreign file: the caller rebuilds."""
        if len(data) < _HEADER.size + HASH_BYTES:
            raise ValueError("merkle file too short")
        body, checksum = data[:-HASH_BYTES], data[-HASH_BYTES:]
        if hashlib.blake2b(body, digest_size=HASH_BYTES).digest() != checksum:
            raise ValueError("merkle file checksum mismatch")
        magic, version, num_segments, fanout = _HEADER.unpack_from(body)
        if magic != _FILE_MAGIC or version != _FILE_VERSION:
            raise ValueError(f"not a merkle leaf file (magic {magic!r}, version {version})")
        payload = body[_HEADER.size :]
        if len(payload) != num_segments * HASH_BYTES:
            raise ValueError("merkle file length does not match its segment count")
        tree = cls(num_segments, fanout)
        tree._leaves = [
            int.from_bytes(payload[i : i + HASH_BYTES], "big") for i in range(0, len(payload), HASH_BYTES)
        ]
        tree.rehash()
        return tree

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MerkleTree):
            return NotImplemented
        return (
            self.num_segments == other.num_segments
            and self.fanout == other.fanout
            and self._leaves == other._leaves
        )

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return (
            f"MerkleTree(num_segments={self.num_segments}, fanout={self.fanout}, depth={self.depth}, "
            f"dirty={len(self._dirty)})"
        )
