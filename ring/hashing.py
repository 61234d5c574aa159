"""Key hashing shared by placement (ring) and anti-entropy (segments).

One 128-bit murmur3 hash per key: its top 64 bits place the key on the ring (which partition), its low bits
choose the key's Merkle segment inside that partition. Keeping both in one hash means a key is hashed once
per request and the storage layout (partition, segment, key) can be computed from the key alone.
"""

from __future__ import annotations

import mmh3

RING_BITS = 64
RING_SIZE = 1 << RING_BITS


def key_hash(key: bytes) -> int:
    """The 128-bit unsigned murmur3 hash of a key."""
    return mmh3.hash128(key, seed=0, signed=False)


def ring_position(h: int) -> int:
    """Position of a hashed key on the 64-bit ring."""
    return h >> 64


def partition_of(h: int, num_partitions: int) -> int:
    """Which of Q equal partitions of the ring a hashed key falls in."""
    return (ring_position(h) * num_partitions) >> RING_BITS


def segment_of(h: int, num_segments: int) -> int:
    """Which Merkle segment (leaf bucket) of its partition a hashed key falls in."""
    return (h & 0xFFFF_FFFF) % num_segments


def locate(key: bytes, num_partitions: int, num_segments: int) -> tuple[int, int]:
    """A key's partition and segment: `partition_of` and `segment_of` of its `key_hash`, in one call. Every
    request and every replica write places its key, and this module runs interpreted: one call, not four."""
    h = mmh3.hash128(key, seed=0, signed=False)
    return ((h >> 64) * num_partitions) >> RING_BITS, (h & 0xFFFF_FFFF) % num_segments
