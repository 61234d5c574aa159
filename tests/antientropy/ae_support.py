"""In-memory replica for the anti-entropy tests: segment-indexed storage and its Merkle tree."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from antientropy.merkle import MerkleTree


class Replica:
    """A partition replica as the node would hold it: storage by segment, and its Merkle tree kept in
    step by update() calls (the writer thread's job in the real node)."""

    def __init__(self, num_segments: int = 1024, fanout: int = 32) -> None:
        self.tree = MerkleTree(num_segments, fanout)
        self.segments: dict[int, dict[bytes, bytes]] = {}
        self.scans: list[int] = []

    @classmethod
    def of(cls, items: Mapping[bytes, bytes], num_segments: int = 1024, fanout: int = 32) -> "Replica":
        r = cls(num_segments, fanout)
        for k, d in items.items():
            r.put(k, d)
        return r

    def put(self, key: bytes, digest: bytes | None) -> None:
        seg = self.tree.segment_for(key)
        bucket = self.segments.setdefault(seg, {})
        old = bucket.get(key)
        self.tree.update(key, old, digest, segment=seg)
        if digest is None:
            bucket.pop(key, None)
        else:
            bucket[key] = digest

    def items(self) -> Iterable[tuple[bytes, bytes]]:
        for bucket in self.segments.values():
            yield from bucket.items()

    def segment_items(self, seg: int) -> Mapping[bytes, bytes]:
        self.scans.append(seg)
        return dict(self.segments.get(seg, {}))

    def clone(self) -> "Replica":
        r = Replica(self.tree.num_segments, self.tree.fanout)
        r.tree = self.tree.copy()
        r.segments = {s: dict(b) for s, b in self.segments.items()}
        return r
