"""The node's embedded storage: a durable key-value engine per data directory behind an asyncio facade.

Layout and guarantees (details and measurements in docs/storage.md):

* Three namespaces (`data`, `hints`, `meta`), isolated from each other. Data keys are
  `data_key(partition, segment, key)` so one partition, or one Merkle segment of it, is a contiguous range.
* Writes are group-committed (`Committer`, storage/engine.py: every op queued meanwhile, in order, up to
  `max_batch`, in ONE LMDB transaction). The driver follows LMDB's sync mode (`lmdb_sync`, lmdb_engine.py):
  - `"nometasync"` (default, safe across power loss): each commit fdatasync()s, so commits run in ONE writer
    thread; ops queued while it waits for the disk form the next batch. The thread fsyncs once more (the meta
    page) after a batch holding durable ops, then resolves the batch on the loop with one call_soon_threadsafe.
  - `"nosync"` (the old fast mode): commits are pwrite()s into the page cache, run on the event loop itself:
    the first op queued in a loop iteration schedules one flush with call_soon, which commits and resolves
    the futures directly (no thread hop per write). Durable ops then wait for an fsync run in a thread (one
    in flight; durable ops committed meanwhile share the next one). The loop never fsyncs.
  A commit is in the page cache (or on disk) before any future is resolved, so an acknowledged write survives
  `kill -9`; a durable one (resolved after its fsync) also survives power loss. Everything committed is also
  fsynced every `sync_interval` seconds (by a syncer thread, so a big flush never stalls writes) and on close().
* Point reads answer in ~3 us from an LMDB MVCC snapshot that never waits on the writer, so `get` runs on the
  loop. Scans and counts run in reader threads, chunked by `limit` + `start_after`.
* Ops on the same key are applied in call order (one FIFO queue, one committer). An op once queued is
  applied even if its caller is cancelled meanwhile: cancellation abandons the wait, not the write.

`Storage.open` takes an exclusive flock on `DIR/LOCK` (one store per directory, in this process or any other)
and records the engine in `DIR/ENGINE`. LMDB is the one engine, chosen by measurement (docs/storage.md: the
SQLite side of that comparison lives in bench/engines/, outside the package).
"""

from __future__ import annotations

import asyncio
import collections
import fcntl
import functools
import logging
import os
import pathlib
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, Literal, TypeVar, cast, get_args

import lmdb

from .engine import (
    MAX_KEY_SIZE, NAMESPACES, Committer, Engine, Namespace, StorageError, batch_error,
)
from .lmdb_engine import DEFAULT_LMDB_SYNC, LMDB_SYNC_MODES, LmdbEngine, LmdbSync

__all__ = [
    "DEFAULT_ENGINE", "DEFAULT_LMDB_SYNC", "LMDB_SYNC_MODES", "MAX_KEY_SIZE", "EngineName", "LmdbSync",
    "Namespace", "Storage", "StorageError",
]

log = logging.getLogger(__name__)

EngineName = Literal["lmdb"]
DEFAULT_ENGINE: Final[EngineName] = "lmdb"   # chosen by measurement: docs/storage.md
# Ops per commit on the loop. One flush holds the loop ~7 us per op at 10k keys, ~12 us at 200k; 64 ops cost no
# throughput against 256 (bench/storage_loop.py --max-batch, docs/storage.md) and keep a flush under ~1 ms.
LOOP_MAX_BATCH: Final = 64
THREAD_MAX_BATCH: Final = 1024   # ops per commit in the writer thread (it does not hold the loop)

T = TypeVar("T")
UpdateFn = Callable[[bytes | None], tuple[bytes | None, T]]

_ENGINE_ERRORS: Final = (lmdb.Error, OSError)


# ------------------------------------------------------------------------------------- group commit

class _Op:
    """One queued write. A plain slotted class: one is built per write, and compiled, a NamedTuple's
    `__new__` (or a dataclass's `__init__`) would run interpreted."""

    __slots__ = ("ns", "key", "fn", "durable", "future", "on_commit")

    def __init__(self, ns: Namespace, key: bytes, fn: Callable[[bytes | None], tuple[bytes | None, Any]],
                 durable: bool, future: asyncio.Future[Any], on_commit: Callable[[Any], None] | None = None
                 ) -> None:
        self.ns = ns
        self.key = key
        self.fn = fn
        self.durable = durable
        self.future = future
        self.on_commit = on_commit


_Outcome = tuple[asyncio.Future[Any], bool, Any]   # (future, ok, result or exception)


def _committed(ops: Sequence[_Op], outcomes: Sequence[tuple[bool, Any]]) -> None:
    """Runs on the loop right after a commit, before any future is resolved: each successful op's on_commit
    hook gets its result, whether or not its caller is still waiting."""
    for op, (ok, value) in zip(ops, outcomes):
        if ok and op.on_commit is not None:
            try:
                op.on_commit(value)
            except Exception:  # noqa: BLE001 - a hook's bug must not fail the writes of the batch
                log.exception("storage on_commit hook failed")


def _hooks_then_settle(ops: Sequence[_Op], outcomes: list[tuple[bool, Any]], sync_error: BaseException | None
                       ) -> None:
    """Runs on the loop after the writer thread committed a batch (and fsynced it if it held durable ops):
    on_commit hooks first, then the futures. A failed fsync fails exactly the durable ops (outcome unknown)."""
    _committed(ops, outcomes)
    settled: list[_Outcome] = []
    n_durable = sum(1 for op, (ok, _) in zip(ops, outcomes) if ok and op.durable)
    for op, (ok, value) in zip(ops, outcomes):
        if ok and op.durable and sync_error is not None:
            settled.append((op.future, False, batch_error(sync_error, n_durable, True)))
        else:
            settled.append((op.future, ok, value))
    _settle(settled)


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


def _final_sync(committer: Committer) -> None:
    """At close: fsync if anything committed is not yet known to be on disk (logs a failure)."""
    if not committer.unsynced:
        return
    try:
        committer.sync()
        committer.counters["fsyncs"] += 1
    except _ENGINE_ERRORS:
        log.exception("storage final sync failed")


def _refused(broken: BaseException | None) -> StorageError:
    return StorageError("storage is closed" if broken is None else f"storage writer failed: {broken!r}")


class _ThreadWriter:
    """Group commit in ONE writer thread, for commits that wait for the disk (LMDB in nometasync mode: each
    commit fdatasync()s). The thread takes every queued op (up to `max_batch`) into one transaction, commits,
    fsyncs once more if the batch holds durable ops (the meta page: LMDB defers it to the next commit), and
    resolves the batch's futures on the loop with one call_soon_threadsafe (on_commit hooks first). Ops queued
    while it waits for the disk form the next batch: that is the group commit.

    The ops' fns run in this thread (they must not touch loop-only state). An engine failure fails its batch
    and the thread carries on; if the thread itself dies, every queued op fails and later ones are refused.
    """

    def __init__(self, committer: Committer, loop: asyncio.AbstractEventLoop, *, max_batch: int) -> None:
        self.committer = committer
        self.loop = loop
        self.max_batch = max_batch
        self.queue: queue.SimpleQueue[_Op | object] = queue.SimpleQueue()
        # Guards the closed/broken decision against enqueueing, so no op can slip in after the final drain.
        self.gate = threading.Lock()
        self.accepting = True
        self.broken: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"storage-writer-{committer.engine.name}",
                                       daemon=True)
        self.thread.start()

    def submit(self, op: _Op) -> None:
        with self.gate:
            if not self.accepting:
                raise _refused(self.broken)
            self.queue.put(op)

    def stop(self) -> None:
        with self.gate:
            if self.accepting:
                self.accepting = False
                self.queue.put(_STOP)

    async def finish(self) -> None:
        """After stop(): wait until every queued op is applied and the final fsync is done."""
        await asyncio.to_thread(self.thread.join)

    def depth(self) -> tuple[int, int]:
        return self.queue.qsize(), 0

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
                    self._commit(inflight)
                inflight = []
            _final_sync(self.committer)     # a clean close leaves everything on disk
        except BaseException as exc:  # the writer must never die silently
            log.exception("storage writer thread died")
            with self.gate:
                self.accepting = False
                self.broken = exc
            pending = inflight + self._drain()
            self._resolve([(op.future, False, StorageError(f"storage writer failed: {exc!r}")) for op in pending])

    def _commit(self, ops: list[_Op]) -> None:
        committer = self.committer
        outcomes = committer.apply(ops, fsync=False)
        sync_error: BaseException | None = None
        if any(ok and op.durable for op, (ok, _) in zip(ops, outcomes)):
            try:
                committer.sync()
                committer.counters["fsyncs"] += 1
            except Exception as exc:  # noqa: BLE001 - fails the durable ops of the batch, the thread carries on
                log.error("storage fsync of a durable batch failed: %r", exc)
                committer.counters["batch_errors"] += 1
                sync_error = exc
        try:
            self.loop.call_soon_threadsafe(_hooks_then_settle, ops, outcomes, sync_error)
        except RuntimeError:    # the loop is closed: nobody is left waiting for these
            pass

    def _drain(self) -> list[_Op]:
        out: list[_Op] = []
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                return out
            if item is not _STOP:
                out.append(cast(_Op, item))

    def _resolve(self, outcomes: list[_Outcome]) -> None:
        if not outcomes:
            return
        try:
            self.loop.call_soon_threadsafe(_settle, outcomes)
        except RuntimeError:    # the loop is closed: nobody is left waiting for these
            pass


class _LoopWriter:
    """Group commit driven by the event loop (LMDB in nosync mode): no thread hop per write.

    The first op queued in a loop iteration schedules one `flush` with call_soon; when it runs, every op queued
    meanwhile is waiting, and up to `max_batch` of them commit in one transaction on the loop itself (LMDB with
    NOSYNC: pwrite()s into the page cache). Their futures are resolved right there; the rest of the queue goes
    in the next iteration, so one flush never holds the loop for long. Durable ops, once committed, wait for an
    fsync run in a thread: one at a time; durable ops committed while it runs share the next one.
    """

    def __init__(self, committer: Committer, loop: asyncio.AbstractEventLoop, *, max_batch: int) -> None:
        self.committer = committer
        self.loop = loop
        self.max_batch = max_batch
        self.queue: collections.deque[_Op] = collections.deque()
        self.scheduled = False
        self.accepting = True
        self.broken: BaseException | None = None
        self.fsync_waiting: list[tuple[asyncio.Future[Any], Any]] = []   # committed, need the next fsync
        self.fsync_running: asyncio.Future[None] | None = None
        self.fsync_running_ops = 0
        self.fsync_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="storage-fsync")

    def submit(self, op: _Op) -> None:
        if not self.accepting:
            raise _refused(self.broken)
        self.queue.append(op)
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.flush)

    def stop(self) -> None:
        self.accepting = False

    def depth(self) -> tuple[int, int]:
        return len(self.queue), len(self.fsync_waiting) + self.fsync_running_ops

    def flush(self) -> None:
        self.scheduled = False
        q = self.queue
        if not q:
            return
        ops = [q.popleft() for _ in range(min(len(q), self.max_batch))]
        if q and not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.flush)
        try:
            outcomes = self.committer.apply(ops, fsync=False)
        except BaseException as exc:  # fail every waiter, refuse later ops, then let it propagate
            log.exception("storage write on the loop failed")
            self.accepting = False
            self.broken = exc
            pending, self.queue = ops + list(q), collections.deque()
            _settle([(op.future, False, StorageError(f"storage writer failed: {exc!r}")) for op in pending])
            raise
        _committed(ops, outcomes)
        settled: list[_Outcome] = []
        for op, (ok, value) in zip(ops, outcomes):
            if ok and op.durable:
                self.fsync_waiting.append((op.future, value))  # resolved once its fsync is done
            else:
                settled.append((op.future, ok, value))
        _settle(settled)
        if self.fsync_waiting and self.fsync_running is None:
            self._start_fsync()

    def _start_fsync(self) -> None:
        waiters, self.fsync_waiting = self.fsync_waiting, []
        self.fsync_running_ops = len(waiters)
        running = self.loop.run_in_executor(self.fsync_pool, self.committer.sync)
        self.fsync_running = running
        running.add_done_callback(functools.partial(self._fsynced, waiters))

    def _fsynced(self, waiters: list[tuple[asyncio.Future[Any], Any]], running: asyncio.Future[None]) -> None:
        self.fsync_running = None
        self.fsync_running_ops = 0
        exc = asyncio.CancelledError() if running.cancelled() else running.exception()
        if exc is None:
            self.committer.counters["fsyncs"] += 1
            outcomes: list[_Outcome] = [(fut, True, value) for fut, value in waiters]
        else:
            log.error("storage fsync of %d durable ops failed: %r", len(waiters), exc)
            self.committer.counters["batch_errors"] += 1
            outcomes = [(fut, False, batch_error(exc, len(waiters), True)) for fut, _ in waiters]
        _settle(outcomes)
        if self.fsync_waiting:
            self._start_fsync()

    async def finish(self) -> None:
        """After stop(): apply what is queued (one batch per loop iteration, as usual), wait for the durable
        ops' fsyncs, then fsync whatever is still unsynced."""
        while self.queue:
            self.flush()
            await asyncio.sleep(0)
        while self.fsync_running is not None:
            await asyncio.wait([self.fsync_running])
        await self.loop.run_in_executor(self.fsync_pool, _final_sync, self.committer)
        await asyncio.to_thread(self.fsync_pool.shutdown)


class _Syncer:
    """Every `interval` seconds, fsync what was committed since the last fsync (any: syncer, durable, close).

    A thread of its own, not the writer's job: at a million random keys one second of writes dirties ~100k
    pages, and flushing them takes long enough (~1 s measured) to stall group commit if the writer did it.
    """

    def __init__(self, committer: Committer, interval: float) -> None:
        self.committer = committer
        self.interval = interval
        self.syncs = 0
        self.errors = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="storage-syncer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.wait(self.interval):
            if not self.committer.unsynced:
                continue
            try:
                self.committer.sync()
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

    def __init__(self, engine: Engine, lock_fd: int, loop: asyncio.AbstractEventLoop, *, max_batch: int,
                 sync_interval: float | None, read_threads: int) -> None:
        if not engine.reads_on_loop:
            # Point reads run on the loop (get_nowait); an engine whose reads may block does not fit.
            raise ValueError(f"the {engine.name} engine cannot read on the event loop")
        self._engine = engine
        self._lock_fd = lock_fd
        self._loop = loop
        self._committer = Committer(engine)
        # Commits that take microseconds run on the loop; commits that wait for the disk, in a writer thread.
        self._writer: _LoopWriter | _ThreadWriter = (
            _LoopWriter(self._committer, loop, max_batch=max_batch) if engine.writes_on_loop
            else _ThreadWriter(self._committer, loop, max_batch=max_batch))
        self._syncer = _Syncer(self._committer, sync_interval) if sync_interval else None
        self._readers = ThreadPoolExecutor(max_workers=read_threads, thread_name_prefix="storage-read")
        self._closed = False
        self._close_task: asyncio.Future[None] | None = None

    @classmethod
    async def open(cls, path: pathlib.Path, *, map_size: int = 64 << 30, engine: EngineName | None = None,
                   sync_interval: float | None = 1.0, max_batch: int | None = None, read_threads: int = 2,
                   lmdb_writemap: bool = False, lmdb_sync: LmdbSync = DEFAULT_LMDB_SYNC) -> Storage:
        """Open (creating if needed) the store in directory `path`.

        `engine` is the one LMDB engine (a directory recorded with another one is refused). `map_size` is LMDB's
        virtual map (sparse; grows the file only as used). `sync_interval` seconds between background fsyncs
        of non-durable commits (None or 0: only durable writes and close() fsync). `max_batch` caps ops per
        commit (default LOOP_MAX_BATCH on the loop, THREAD_MAX_BATCH in the writer thread). `lmdb_writemap`
        trades safety for write speed (docs/storage.md): a full disk then kills the process. `lmdb_sync`:
        "nometasync" (default: the store survives power loss intact, commits run in a writer thread) or
        "nosync" (faster, commits on the loop; an OS crash may corrupt the store), see lmdb_engine.py.
        """
        if (max_batch is not None and max_batch < 1) or read_threads < 1:
            raise ValueError("max_batch and read_threads must be >= 1")
        if lmdb_sync not in LMDB_SYNC_MODES:
            raise ValueError(f"unknown lmdb_sync {lmdb_sync!r}; expected one of {LMDB_SYNC_MODES}")
        loop = asyncio.get_running_loop()
        eng, lock_fd = await asyncio.to_thread(_open_engine, pathlib.Path(path), engine, map_size, lmdb_writemap,
                                               lmdb_sync)
        try:
            batch = max_batch or (LOOP_MAX_BATCH if eng.writes_on_loop else THREAD_MAX_BATCH)
            return cls(eng, lock_fd, loop, max_batch=batch, sync_interval=sync_interval,
                       read_threads=read_threads)
        except BaseException:
            await asyncio.to_thread(_close_engine, eng, lock_fd)
            raise

    @property
    def engine_name(self) -> str:
        return self._engine.name

    @property
    def writes_on_loop(self) -> bool:
        """True when commits run on the event loop (nosync); False when in the writer thread (nometasync), where
        update fns then run too."""
        return isinstance(self._writer, _LoopWriter)

    async def __aenter__(self) -> Storage:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- writes

    def update(self, ns: Namespace, skey: bytes, fn: UpdateFn[T], *, durable: bool = False,
               on_commit: Callable[[T], None] | None = None) -> asyncio.Future[T]:
        """Atomically replace the value of `skey` with `fn(current)[0]`; the future gets `fn(current)[1]`.

        Use as `await storage.update(...)`. The op is queued by this call (so ops on one key apply in call
        order); the returned future resolves once it is committed (and fsynced if `durable`). Cancelling the
        future abandons the wait, not the write. fn runs inside the batch transaction (on the loop or in the
        writer thread: `writes_on_loop`) and sees earlier ops of the same batch: it must be quick,
        must not block, and must not call Storage. Returning None as the value deletes the record. If fn
        raises, this op fails with that exception and nothing is written for it. Bad arguments raise here;
        after close() this raises StorageError.

        `on_commit(result)` runs on the loop once the op is committed (before an fsync it asked for, before
        any future of the batch is resolved), even if the caller stopped waiting: for bookkeeping that must
        follow the stored data exactly (the Merkle trees).
        """
        if ns not in NAMESPACES:
            _check_ns(ns)
        _check_key(skey)
        loop = self._loop
        if asyncio.get_running_loop() is not loop:
            raise StorageError("Storage used from a different event loop than the one that opened it")
        fut: asyncio.Future[T] = loop.create_future()
        self._writer.submit(_Op(ns, skey, fn, durable, fut, on_commit))
        return fut

    async def put(self, ns: Namespace, skey: bytes, value: bytes | None, *, durable: bool = False) -> None:
        """Write `value` (None deletes)."""
        if value is not None and not isinstance(value, bytes):
            raise TypeError(f"values are bytes, not {type(value).__name__}")
        await self.update(ns, skey, lambda _current: (value, None), durable=durable)

    async def delete(self, ns: Namespace, skey: bytes, *, durable: bool = False) -> None:
        await self.put(ns, skey, None, durable=durable)

    # -- reads

    def get_nowait(self, ns: Namespace, skey: bytes) -> bytes | None:
        """Point read without a coroutine (a few microseconds: an LMDB read never waits on the writer)."""
        if ns not in NAMESPACES:
            _check_ns(ns)
        _check_key(skey)
        self._check_open()
        try:
            return self._engine.get(ns, skey)
        except _ENGINE_ERRORS as exc:
            raise StorageError(f"get failed: {exc!r}") from exc

    async def get(self, ns: Namespace, skey: bytes) -> bytes | None:
        return self.get_nowait(ns, skey)

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

    @property
    def usable(self) -> bool:
        """Open, and its writer has not failed (readiness: a node whose store refuses writes is not ready)."""
        return not self._closed and self._writer.broken is None

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError("storage is closed")

    # -- operations

    def stats(self) -> dict[str, int | float]:
        """Counters for /metrics (cheap: a few syscalls, fine on the loop): batches, ops, ops_failed,
        batch_errors, durable_batches, fsyncs (durable fsyncs and close), background_syncs, sync_errors,
        batch_ops_max/last, batch_seconds_total/max (commit time; on the loop: how long it was held),
        queue_depth, fsync_waiting (durable ops committed, waiting for their fsync), disk_bytes, and
        per-engine extras (LMDB: map_size, map_used_bytes, entries_<ns>)."""
        out = dict(self._committer.counters)
        out["queue_depth"], out["fsync_waiting"] = self._writer.depth()
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
            await self._writer.finish()
            if self._syncer is not None:
                await asyncio.to_thread(self._syncer.stop)
            await asyncio.to_thread(self._readers.shutdown, True)
            self._engine.close()
        finally:
            os.close(self._lock_fd)


def _close_engine(engine: Engine, lock_fd: int) -> None:
    try:
        engine.close()
    finally:
        os.close(lock_fd)


def _open_engine(path: pathlib.Path, engine: EngineName | None, map_size: int,
                 writemap: bool, sync_mode: LmdbSync = DEFAULT_LMDB_SYNC) -> tuple[Engine, int]:
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
            eng: Engine = LmdbEngine(path, map_size=map_size, writemap=writemap, sync_mode=sync_mode)
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
            raise StorageError(f"{path} holds a {found!r} store; this dynamostore stores data in "
                               f"{' or '.join(get_args(EngineName))} only")
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
