"""The synchronous engine interface under `dynamostore.storage`, plus helpers shared by the engines.

An engine is a plain blocking key-value store with three namespaces. It knows nothing about asyncio:
`Storage` calls `begin()`/`WriteTxn` only from its single writer thread, and the read methods from a reader
thread (or, for engines whose reads take a few microseconds, from the event loop itself). Keeping this
layer synchronous is also what lets `bench/storage_engines.py` measure the engines without the facade.
"""

from __future__ import annotations

import os
import pathlib
from typing import Final, Literal, Protocol

Namespace = Literal["data", "hints", "meta"]
NAMESPACES: Final[tuple[Namespace, ...]] = ("data", "hints", "meta")

# LMDB's compiled-in key limit; both engines enforce it so that switching engines never changes behaviour.
MAX_KEY_SIZE: Final = 511


class WriteTxn(Protocol):
    """One write transaction; reads inside it see its own earlier writes."""

    def get(self, ns: Namespace, key: bytes) -> bytes | None: ...
    def put(self, ns: Namespace, key: bytes, value: bytes) -> None: ...
    def delete(self, ns: Namespace, key: bytes) -> None: ...
    def commit(self) -> None:
        """Commit; for a durable transaction the commit is on stable storage (fsynced) when this returns."""
    def abort(self) -> None: ...


class Engine(Protocol):
    name: str
    # True when a point read is a few microseconds and never waits on a lock, so it may run on the loop.
    reads_on_loop: bool

    def get(self, ns: Namespace, key: bytes) -> bytes | None: ...
    def scan(self, ns: Namespace, prefix: bytes, start_after: bytes | None,
             limit: int) -> list[tuple[bytes, bytes]]: ...
    def count(self, ns: Namespace, prefix: bytes) -> int: ...
    def begin(self, durable: bool) -> WriteTxn:
        """Start the write transaction (writer thread only; never more than one at a time).

        `durable` is decided up front because SQLite can only change its sync level outside a transaction.
        """
    def sync(self) -> None:
        """Force everything committed so far onto stable storage."""
    def stats(self) -> dict[str, int | float]: ...
    def close(self) -> None: ...


def prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with `prefix` (None: no such bound)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


def scan_start(prefix: bytes, start_after: bytes | None) -> tuple[bytes, bool]:
    """Where a scan begins: (key, exclusive). `start_after` only matters when it lies past `prefix`."""
    if start_after is not None and start_after >= prefix:
        return start_after, True
    return prefix, False


def disk_bytes(path: pathlib.Path) -> int:
    """Bytes really allocated by the files in `path` (LMDB's map is sparse, so st_size would lie)."""
    total = 0
    with os.scandir(path) as it:
        for entry in it:
            if entry.is_file(follow_symlinks=False):
                total += entry.stat(follow_symlinks=False).st_blocks * 512
    return total
