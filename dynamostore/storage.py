"""The node's embedded storage: a durable key-value engine per data directory behind an asyncio facade.

Layout and guarantees (details and measurements in docs/storage.md):

* Three namespaces (`data`, `hints`, `meta`), isolated from each other. Data keys are
  `data_key(partition, segment, key)` so one partition, or one Merkle segment of it, is a contiguous range.
* Writes go through ONE writer thread doing group commit: it drains every queued op into one transaction,
  commits once, fsyncs once if any op of the batch asked for `durable=True`, then resolves all the batch's
  futures with one `loop.call_soon_threadsafe`. A commit is written to the page cache before any future is
  resolved, so an acknowledged write survives `kill -9`; a durable one also survives power loss.
  Everything committed is also fsynced every `sync_interval` seconds (by a syncer thread, so a big flush
  never stalls the writer) and on close().
* Point reads: the default engine (LMDB) answers in ~3 us from an MVCC snapshot that never waits on the
  writer, so `get` runs on the loop; otherwise (SQLite) reads run in reader threads. Scans and counts always
  run in reader threads, chunked by `limit` + `start_after`.
* Ops on the same key are applied in call order (one FIFO queue, one writer). An op that was enqueued is
  applied even if its caller is cancelled meanwhile: cancellation abandons the wait, not the write.

`Storage.open` takes an exclusive flock on `DIR/LOCK` (one engine per directory, in this process or any
other) and records the engine in `DIR/ENGINE`, so a directory is always reopened with the engine that wrote it.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import pathlib
import queue
import sqlite3
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar, cast, get_args

import lmdb

from .storage_engine import MAX_KEY_SIZE, NAMESPACES, Engine, Namespace, WriteTxn
from .storage_lmdb import LmdbEngine
from .storage_sqlite import SqliteEngine

__all__ = [
    "DEFAULT_ENGINE", "MAX_KEY_SIZE", "EngineName", "Namespace", "Storage", "StorageError",
    "data_key", "partition_prefix", "segment_prefix", "split_data_key",
]

log = logging.getLogger(__name__)

EngineName = Literal["lmdb", "sqlite"]
DEFAULT_ENGINE: Final[EngineName] = "lmdb"   # chosen by measurement: docs/storage.md

T = TypeVar("T")
UpdateFn = Callable[[bytes | None], tuple[bytes | None, T]]

_HEAD = struct.Struct(">HH")
_PART = struct.Struct(">H")
_ENGINE_ERRORS: Final = (lmdb.Error, sqlite3.Error, OSError)


class StorageError(Exception):
    """The engine failed, the store is closed, or the directory is unusable (locked, other engine)."""


# ---------------------------------------------------------------------------------------------- keys

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


# ------------------------------------------------------------------------------------- writer thread

@dataclass(frozen=True, slots=True)
class _Op:
    ns: Namespace
    key: bytes
    fn: Callable[[bytes | None], tuple[bytes | None, Any]]
    durable: bool
    future: asyncio.Future[Any]


_Outcome = tuple[asyncio.Future[Any], bool, Any]   # (future, ok, result or exception)
_STOP: Final = object()


def _settle(outcomes: list[_Outcome]) -> None:
    """Runs on the loop: hand each op its result (skipping callers that gave up waiting)."""
    for fut, ok, value in outcomes:
        if fut.done():
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)


class _Writer:
    """The single writer thread: group commit, and the write counters behind Storage.stats()."""

    def __init__(self, engine: Engine, loop: asyncio.AbstractEventLoop, *, max_batch: int) -> None:
        self.engine = engine
        self.loop = loop
        self.max_batch = max_batch
        self.queue: queue.SimpleQueue[_Op | object] = queue.SimpleQueue()
        # Guards the closed/broken decision against enqueueing, so no op can slip in after the final drain.
        self.gate = threading.Lock()
        self.accepting = True
        self.broken: BaseException | None = None
        self.nondurable_commits = 0     # read by the syncer: has anything been committed without fsync?
        self.unsynced = False
        self.counters: dict[str, int | float] = dict.fromkeys(
            ("batches", "ops", "ops_failed", "batch_errors", "durable_batches", "fsyncs",
             "batch_ops_max", "batch_ops_last"), 0)
        self.counters.update(batch_seconds_total=0.0, batch_seconds_max=0.0)
        self.thread = threading.Thread(target=self._run, name=f"storage-writer-{engine.name}", daemon=True)

    def submit(self, op: _Op) -> None:
        with self.gate:
            if not self.accepting:
                raise StorageError("storage is closed" if self.broken is None
                                   else f"storage writer failed: {self.broken!r}")
            self.queue.put(op)

    def stop(self) -> None:
        with self.gate:
            if self.accepting:
                self.accepting = False
                self.queue.put(_STOP)

    # -- thread body

    def _run(self) -> None:
        inflight: list[_Op] = []
        try:
            stop = False
            while not stop:
                first = self.queue.get()
                stop = first is _STOP
                inflight = [] if stop else [cast(_Op, first)]
                while not stop and len(inflight) < self.max_batch:
                    try:
                        item = self.queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is _STOP:
                        stop = True
                    else:
                        inflight.append(cast(_Op, item))
                if inflight:
                    self._apply(inflight)
                inflight = []
            if self.unsynced:           # a clean close leaves everything on disk
                try:
                    self.engine.sync()
                    self.counters["fsyncs"] += 1
                except _ENGINE_ERRORS:
                    log.exception("storage final sync failed")
        except BaseException as exc:  # noqa: BLE001 - the writer must never die silently
            log.exception("storage writer thread died")
            with self.gate:
                self.accepting = False
                self.broken = exc
            pending = inflight + self._drain()
            self._resolve([(op.future, False, StorageError(f"storage writer failed: {exc!r}")) for op in pending])

    def _drain(self) -> list[_Op]:
        out: list[_Op] = []
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                return out
            if item is not _STOP:
                out.append(cast(_Op, item))

    def _apply(self, ops: list[_Op]) -> None:
        started = time.perf_counter()
        durable = any(op.durable for op in ops)
        outcomes: list[_Outcome] = []
        txn: WriteTxn | None = None
        try:
            txn = self.engine.begin(durable)
            for op in ops:
                current = txn.get(op.ns, op.key)
                try:
                    new, result = _call(op.fn, current)
                except Exception as exc:        # the op's own failure: nothing written for it
                    outcomes.append((op.future, False, exc))
                    continue
                if new is not None:
                    txn.put(op.ns, op.key, new)
                elif current is not None:
                    txn.delete(op.ns, op.key)
                outcomes.append((op.future, True, result))
            txn.commit()
        except Exception as exc:        # the engine's failure (begin, put, commit, fsync): the whole batch fails
            if txn is not None:
                _abort(txn)
            outcomes = [(op.future, False, _batch_error(exc, len(ops), durable)) for op in ops]
            self.counters["batch_errors"] += 1
        except BaseException:
            if txn is not None:
                _abort(txn)     # aborting a committed or failed transaction is a harmless no-op
            raise
        else:
            if durable:
                self.counters["durable_batches"] += 1
                self.counters["fsyncs"] += 1
                self.unsynced = False
            else:
                self.nondurable_commits += 1
                self.unsynced = True
        elapsed = time.perf_counter() - started
        c = self.counters
        c["batches"] += 1
        c["ops"] += len(ops)
        c["ops_failed"] += sum(1 for _, ok, _ in outcomes if not ok)
        c["batch_ops_last"] = len(ops)
        c["batch_ops_max"] = max(c["batch_ops_max"], len(ops))
        c["batch_seconds_total"] += elapsed
        c["batch_seconds_max"] = max(c["batch_seconds_max"], elapsed)
        self._resolve(outcomes)

    def _resolve(self, outcomes: list[_Outcome]) -> None:
        if not outcomes:
            return
        try:
            self.loop.call_soon_threadsafe(_settle, outcomes)
        except RuntimeError:    # the loop is closed: nobody is left waiting for these
            pass


def _call(fn: Callable[[bytes | None], tuple[bytes | None, Any]], current: bytes | None) -> tuple[bytes | None, Any]:
    new, result = fn(current)
    if new is not None and not isinstance(new, bytes):
        raise TypeError(f"update fn must return (bytes | None, result), got {type(new).__name__} as the value")
    return new, result


def _abort(txn: WriteTxn) -> None:
    try:
        txn.abort()
    except Exception:  # noqa: BLE001 - the transaction is being discarded anyway
        log.debug("abort after failed transaction also failed", exc_info=True)


def _batch_error(exc: Exception, n: int, durable: bool) -> StorageError:
    err = StorageError(f"write transaction of {n} ops failed{' (durable)' if durable else ''}: {exc!r}; "
                       "its outcome is unknown if the failure came after commit (e.g. fsync)")
    err.__cause__ = exc
    return err


class _Syncer:
    """Every `interval` seconds, fsync what was committed without fsync since the last round.

    A thread of its own, not the writer's job: at a million random keys one second of writes dirties ~100k
    pages, and flushing them takes long enough (~1 s measured) to stall group commit if the writer did it.
    """

    def __init__(self, engine: Engine, writer: _Writer, interval: float) -> None:
        self.engine = engine
        self.writer = writer
        self.interval = interval
        self.syncs = 0
        self.errors = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="storage-syncer", daemon=True)

    def _run(self) -> None:
        synced = 0
        while not self.stopping.wait(self.interval):
            commits = self.writer.nondurable_commits
            if commits == synced:
                continue
            synced = commits    # read before syncing: commits after this point wait for the next round
            try:
                self.engine.sync()
                self.syncs += 1
            except _ENGINE_ERRORS:
                self.errors += 1
                log.exception("storage background sync failed")

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join()


# -------------------------------------------------------------------------------------------- facade

def _check_ns(ns: str) -> None:
    if ns not in NAMESPACES:
        raise ValueError(f"unknown namespace {ns!r}; expected one of {NAMESPACES}")


def _check_key(skey: bytes) -> None:
    if not isinstance(skey, bytes):
        raise TypeError(f"storage keys are bytes, not {type(skey).__name__}")
    if not 0 < len(skey) <= MAX_KEY_SIZE:
        raise ValueError(f"storage key length {len(skey)} outside 1..{MAX_KEY_SIZE}")


class Storage:
    """One node's durable key-value store. Create with `await Storage.open(path)`; bound to that loop."""

    def __init__(self, engine: Engine, lock_fd: int, loop: asyncio.AbstractEventLoop, *,
                 max_batch: int, sync_interval: float | None, read_threads: int) -> None:
        self._engine = engine
        self._lock_fd = lock_fd
        self._loop = loop
        self._writer = _Writer(engine, loop, max_batch=max_batch)
        self._syncer = _Syncer(engine, self._writer, sync_interval) if sync_interval else None
        self._readers = ThreadPoolExecutor(max_workers=read_threads, thread_name_prefix="storage-read")
        self._closed = False
        self._close_task: asyncio.Future[None] | None = None
        self._writer.thread.start()
        if self._syncer is not None:
            self._syncer.thread.start()

    @classmethod
    async def open(cls, path: pathlib.Path, *, map_size: int = 64 << 30, engine: EngineName | None = None,
                   sync_interval: float | None = 1.0, max_batch: int = 1024, read_threads: int = 2,
                   lmdb_writemap: bool = False) -> Storage:
        """Open (creating if needed) the store in directory `path`.

        `engine` defaults to whatever the directory was created with, else DEFAULT_ENGINE. `map_size` is LMDB's
        virtual map (sparse; grows the file only as used). `sync_interval` seconds between background fsyncs
        of non-durable commits (None or 0: only durable writes and close() fsync). `max_batch` caps ops per commit.
        `lmdb_writemap` trades safety for write speed (docs/storage.md): a full disk then kills the process.
        """
        if max_batch < 1 or read_threads < 1:
            raise ValueError("max_batch and read_threads must be >= 1")
        loop = asyncio.get_running_loop()
        eng, lock_fd = await asyncio.to_thread(_open_engine, pathlib.Path(path), engine, map_size, lmdb_writemap)
        return cls(eng, lock_fd, loop, max_batch=max_batch, sync_interval=sync_interval, read_threads=read_threads)

    @property
    def engine_name(self) -> str:
        return self._engine.name

    async def __aenter__(self) -> Storage:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- writes

    async def update(self, ns: Namespace, skey: bytes, fn: UpdateFn[T], *, durable: bool = False) -> T:
        """Atomically replace the value of `skey` with `fn(current)[0]` and return `fn(current)[1]`.

        fn runs in the writer thread inside the batch transaction and sees earlier ops of the same batch; it
        must be quick and must not touch the event loop. Returning None as the value deletes the record. If fn
        raises, this op fails with that exception and nothing is written for it. Returns once committed
        (and fsynced if `durable`).
        """
        _check_ns(ns)
        _check_key(skey)
        if asyncio.get_running_loop() is not self._loop:
            raise StorageError("Storage used from a different event loop than the one that opened it")
        fut: asyncio.Future[T] = self._loop.create_future()
        self._writer.submit(_Op(ns, skey, fn, durable, fut))
        return await fut

    async def put(self, ns: Namespace, skey: bytes, value: bytes | None, *, durable: bool = False) -> None:
        """Write `value` (None deletes)."""
        if value is not None and not isinstance(value, bytes):
            raise TypeError(f"values are bytes, not {type(value).__name__}")
        await self.update(ns, skey, lambda _current: (value, None), durable=durable)

    async def delete(self, ns: Namespace, skey: bytes, *, durable: bool = False) -> None:
        await self.put(ns, skey, None, durable=durable)

    # -- reads

    async def get(self, ns: Namespace, skey: bytes) -> bytes | None:
        _check_ns(ns)
        _check_key(skey)
        self._check_open()
        if self._engine.reads_on_loop:
            try:
                return self._engine.get(ns, skey)
            except _ENGINE_ERRORS as exc:
                raise StorageError(f"get failed: {exc!r}") from exc
        return await self._in_reader(self._engine.get, ns, skey)

    async def scan(self, ns: Namespace, prefix: bytes = b"", *, start_after: bytes | None = None,
                   limit: int = 1000) -> list[tuple[bytes, bytes]]:
        """Up to `limit` (key, value) pairs with keys starting with `prefix` and greater than `start_after`,
        ordered by key. Page through a range by passing the last key returned as the next `start_after`."""
        _check_ns(ns)
        if limit < 0:
            raise ValueError("limit must be >= 0")
        self._check_open()
        return await self._in_reader(self._engine.scan, ns, bytes(prefix), start_after, limit)

    async def count(self, ns: Namespace, prefix: bytes = b"") -> int:
        """Number of keys in `ns` starting with `prefix` (O(1) for a whole LMDB namespace, else a key walk)."""
        _check_ns(ns)
        self._check_open()
        return await self._in_reader(self._engine.count, ns, bytes(prefix))

    async def _in_reader(self, fn: Callable[..., T], *args: Any) -> T:
        def call() -> T:
            try:
                return fn(*args)
            except _ENGINE_ERRORS as exc:
                raise StorageError(f"{getattr(fn, '__name__', 'read')} failed: {exc!r}") from exc
        return await self._loop.run_in_executor(self._readers, call)

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError("storage is closed")

    # -- operations

    def stats(self) -> dict[str, int | float]:
        """Counters for /metrics (cheap: a few syscalls, fine on the loop): batches, ops, ops_failed,
        batch_errors, durable_batches, fsyncs (durable batches and close), background_syncs, sync_errors,
        batch_ops_max/last, batch_seconds_total/max, queue_depth, disk_bytes, and per-engine extras
        (LMDB: map_size, map_used_bytes, entries_<ns>)."""
        out = dict(self._writer.counters)
        out["queue_depth"] = self._writer.queue.qsize()
        out["background_syncs"] = self._syncer.syncs if self._syncer else 0
        out["sync_errors"] = self._syncer.errors if self._syncer else 0
        if not self._closed:
            try:
                out.update(self._engine.stats())
            except _ENGINE_ERRORS:
                log.debug("engine stats unavailable", exc_info=True)
        return out

    async def close(self) -> None:
        """Finish every queued op (their callers get their results), fsync, and close the engine.
        Ops submitted after close() began fail with StorageError. Idempotent; cancelling a caller of close()
        does not interrupt the close itself."""
        if self._close_task is None:
            self._closed = True
            self._writer.stop()
            self._close_task = asyncio.ensure_future(self._shutdown())
        await asyncio.shield(self._close_task)

    async def _shutdown(self) -> None:
        try:
            await asyncio.to_thread(self._writer.thread.join)
            if self._syncer is not None:
                await asyncio.to_thread(self._syncer.stop)
            await asyncio.to_thread(self._readers.shutdown, True)
            self._engine.close()
        finally:
            os.close(self._lock_fd)


def _open_engine(path: pathlib.Path, engine: EngineName | None, map_size: int,
                 writemap: bool) -> tuple[Engine, int]:
    """Blocking part of Storage.open: lock the directory, agree on the engine, open it."""
    if engine is not None and engine not in get_args(EngineName):
        raise ValueError(f"unknown engine {engine!r}; expected one of {get_args(EngineName)}")
    path.mkdir(parents=True, exist_ok=True)
    lock_fd = os.open(path / "LOCK", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StorageError(f"{path} is already open by another Storage (in this or another process)") from None
        name = _engine_marker(path, engine)
        try:
            eng: Engine = (LmdbEngine(path, map_size=map_size, writemap=writemap) if name == "lmdb"
                           else SqliteEngine(path))
        except _ENGINE_ERRORS as exc:
            raise StorageError(f"cannot open {name} store in {path}: {exc!r}") from exc
    except BaseException:
        os.close(lock_fd)
        raise
    return eng, lock_fd


def _engine_marker(path: pathlib.Path, wanted: EngineName | None) -> EngineName:
    marker = path / "ENGINE"
    if marker.exists():
        found = marker.read_text().strip()
        if found not in get_args(EngineName):
            raise StorageError(f"{marker} names an unknown engine {found!r}")
        if wanted is not None and wanted != found:
            raise StorageError(f"{path} holds a {found} store; cannot open it as {wanted}")
        return cast(EngineName, found)
    name = wanted or DEFAULT_ENGINE
    tmp = path / "ENGINE.tmp"
    with open(tmp, "w") as f:
        f.write(name + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, marker)
    dir_fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return name
