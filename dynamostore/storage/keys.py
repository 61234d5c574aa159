"""Storage key layout of the data namespace (pure).

A user key is stored under `data_key(partition, segment, key)`: big-endian u16 partition, u16 Merkle segment,
then the key itself, so one partition, or one Merkle segment of it, is one contiguous range that a scan
reads in key order (ownership transfers stream a partition, anti-entropy rescans a segment).
"""

from __future__ import annotations

import struct

_HEAD = struct.Struct(">HH")
_PART = struct.Struct(">H")


def data_key(partition: int, segment: int, key: bytes) -> bytes:
    """Storage key of a user key: big-endian u16 partition, u16 Merkle segment, then the user key."""
    if not (0 <= partition <= 0xFFFF and 0 <= segment <= 0xFFFF):
        raise ValueError(f"partition {partition} / segment {segment} out of range 0..65535")
    return _HEAD.pack(partition, segment) + key


def split_data_key(skey: bytes) -> tuple[int, int, bytes]:
    """Inverse of data_key: (partition, segment, user key)."""
    if len(skey) < _HEAD.size:
        raise ValueError(f"not a data key (only {len(skey)} bytes)")
    partition, segment = _HEAD.unpack_from(skey)
    return partition, segment, skey[_HEAD.size:]


def partition_prefix(partition: int) -> bytes:
    """Scan prefix of every data key of one partition."""
    return _PART.pack(partition)


def segment_prefix(partition: int, segment: int) -> bytes:
    """Scan prefix of every data key of one Merkle segment of one partition."""
    return data_key(partition, segment, b"")
