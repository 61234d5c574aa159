"""The synchronous engine interface under `dynamostore.storage`, the batch logic of its group commit, and
helpers shared by the engines.

An engine is a plain blocking key-value store with three namespaces. It knows nothing about asyncio:
`Storage` calls `begin()`/`WriteTxn` from the event loop only (it requires an engine whose commits take
microseconds: `writes_on_loop`), `sync()` from any thread, point reads on the loop (`reads_on_loop`) and scans
from a reader thread. (bench/engines/ holds an engine without those properties, measured at this level only.) Keeping this
layer synchronous is also what lets `bench/storage_engines.py` measure the engines without the facade.

`Committer` is the one place that turns a batch of read-modify-write ops into one transaction.
"""

from __future__ import annotations

import logging
import os
import pathlib
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, Literal, Protocol

Namespace = Literal["data", "hints", "meta"]
NAMESPACES: Final[tuple[Namespace, ...]] = ("data", "hints", "meta")

log = logging.getLogger("dynamostore.storage")

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
    # True when a non-durable commit is a few pwrite()s into the page cache and never waits on a lock held by
    # another thread, so the facade may commit batches on the loop (fsyncs still run in a thread).
    writes_on_loop: bool

    def get(self, ns: Namespace, key: bytes) -> bytes | None: ...
    def scan(self, ns: Namespace, prefix: bytes, start_after: bytes | None,
             limit: int) -> list[tuple[bytes, bytes]]: ...
    def count(self, ns: Namespace, prefix: bytes) -> int: ...
    def begin(self, durable: bool) -> WriteTxn:
        """Start the write transaction (one committing thread only; never more than one at a time).

        `durable` is decided up front because SQLite can only change its sync level outside a transaction.
        """
    def sync(self) -> None:
        """Force everything committed so far onto stable storage (any thread, even while a commit runs)."""
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


# ------------------------------------------------------------------------------------ batch logic

class StorageError(Exception):
    """The engine failed, the store is closed, or the directory is unusable (locked, other engine)."""


class BatchOp(Protocol):
    """One queued write: `fn(current value)` -> (new value or None to delete, result for the caller)."""

    @property
    def ns(self) -> Namespace: ...
    @property
    def key(self) -> bytes: ...
    @property
    def fn(self) -> Callable[[bytes | None], tuple[bytes | None, Any]]: ...
    @property
    def durable(self) -> bool: ...


class Committer:
    """Applies a batch of ops in ONE write transaction; keeps the write counters and the commit/sync sequence.

    `apply` is called by one thread at a time (the event loop, or the writer thread); `sync` and
    `unsynced` may be used from other threads (syncer, fsync) concurrently with commits.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.commits = 0        # transactions committed so far
        self.synced = 0         # every commit numbered <= this one is known to be fsynced
        self._sync_lock = threading.Lock()
        self.counters: dict[str, int | float] = dict.fromkeys(
            ("batches", "ops", "ops_failed", "batch_errors", "durable_batches", "fsyncs",
             "batch_ops_max", "batch_ops_last"), 0)
        self.counters.update(batch_seconds_total=0.0, batch_seconds_max=0.0)

    @property
    def unsynced(self) -> bool:
        return self.synced < self.commits

    def sync(self) -> None:
        """fsync everything committed so far (blocking: never on the event loop)."""
        upto = self.commits     # read before syncing: commits after this point may or may not be covered
        self.engine.sync()
        with self._sync_lock:
            self.synced = max(self.synced, upto)

    def apply(self, ops: Sequence[BatchOp], *, fsync: bool) -> list[tuple[bool, Any]]:
        """Run each op's fn on the key's current value inside one transaction (so it sees earlier ops of the
        batch), commit (fsynced if `fsync`), and return (ok, result or exception) per op, in op order.
        A raising fn fails only its op; an engine failure fails every op with StorageError."""
        started = time.perf_counter()
        outcomes: list[tuple[bool, Any]] = []
        failed = 0
        txn: WriteTxn | None = None
        try:
            txn = self.engine.begin(fsync)
            for op in ops:
                current = txn.get(op.ns, op.key)
                try:
                    new, result = op.fn(current)
                    if new is not None and not isinstance(new, bytes):
                        raise TypeError("update fn must return (bytes | None, result), "
                                        f"got {type(new).__name__} as the value")
                except Exception as exc:  # noqa: BLE001 - the op's own failure: nothing written for it
                    outcomes.append((False, exc))
                    failed += 1
                    continue
                if new is not None:
                    txn.put(op.ns, op.key, new)
                elif current is not None:
                    txn.delete(op.ns, op.key)
                outcomes.append((True, result))
            txn.commit()
        except Exception as exc:  # noqa: BLE001 - the engine's failure (begin, put, commit, fsync): all ops fail
            if txn is not None:
                _abort(txn)
            outcomes = [(False, batch_error(exc, len(ops), fsync)) for _ in ops]   # one exception per waiter
            failed = len(ops)
            self.counters["batch_errors"] += 1
        except BaseException:
            if txn is not None:
                _abort(txn)     # aborting a committed or failed transaction is a harmless no-op
            raise
        else:
            self.commits += 1
            if fsync:
                self.counters["fsyncs"] += 1
                with self._sync_lock:
                    self.synced = self.commits      # the only committer: that fsync covered every commit
            if any(op.durable for op in ops):
                self.counters["durable_batches"] += 1
        elapsed = time.perf_counter() - started
        c = self.counters
        c["batches"] += 1
        c["ops"] += len(ops)
        c["ops_failed"] += failed
        c["batch_ops_last"] = len(ops)
        c["batch_ops_max"] = max(c["batch_ops_max"], len(ops))
        c["batch_seconds_total"] += elapsed
        c["batch_seconds_max"] = max(c["batch_seconds_max"], elapsed)
        return outcomes


def batch_error(exc: BaseException, n: int, durable: bool) -> StorageError:
    err = StorageError(f"write transaction of {n} ops failed{' (durable)' if durable else ''}: {exc!r}; "
                       "its outcome is unknown if the failure came after commit (e.g. fsync)")
    err.__cause__ = exc
    return err


def _abort(txn: WriteTxn) -> None:
    try:
        txn.abort()
    except Exception:  # the transaction is being discarded anyway
        log.debug("abort after failed transaction also failed", exc_info=True)
