"""Tests for the loop-driven group commit of dynamostore.storage (LMDB in nosync mode: commits on the event loop,
fsyncs in a thread) and the no-coroutine hot path (`update` returns a Future, `get_nowait`). The writer thread of
the default nometasync mode: test_storage_modes.py."""

from __future__ import annotations

import asyncio
import functools
import os
import pathlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Final

import pytest

from dynamostore.storage.store import LOOP_MAX_BATCH, Storage, StorageError
from tests.storage.gates import SyncGate, _Gated

NOSYNC: Final = "nosync"   # the loop driver

DEADLINE = 20.0   # seconds; upper bound for waits on conditions, never a sleep


@pytest.fixture
async def store(tmp_path: pathlib.Path) -> AsyncIterator[Storage]:
    # No background syncer: these tests count every engine fsync.
    s = await Storage.open(tmp_path / "db", engine="lmdb", sync_interval=None, lmdb_sync=NOSYNC)
    yield s
    await s.close()


@pytest.fixture
def gate(store: Storage) -> Iterator[SyncGate]:
    g = SyncGate(store)
    yield g
    g.restore()


def append(i: int) -> Callable[[bytes | None], tuple[bytes, None]]:
    return lambda cur: ((cur + b"," if cur else b"") + str(i).encode(), None)


async def test_update_returns_a_future_and_ops_queued_in_one_iteration_commit_together(store: Storage) -> None:
    before = store.stats()
    futs = [store.update("data", b"k%d" % i, lambda _c: (b"v", None)) for i in range(LOOP_MAX_BATCH)]
    assert all(isinstance(f, asyncio.Future) and not f.done() for f in futs)
    assert store.stats()["queue_depth"] == LOOP_MAX_BATCH
    await asyncio.gather(*futs)
    after = store.stats()
    assert after["batches"] - before["batches"] == 1
    assert after["batch_ops_last"] == LOOP_MAX_BATCH and after["queue_depth"] == 0


async def test_a_batch_is_capped_and_order_holds_across_batches(store: Storage) -> None:
    n = 2 * LOOP_MAX_BATCH + 7
    before = store.stats()
    futs = [store.update("data", b"log", append(i)) for i in range(n)]
    await asyncio.gather(*futs)
    after = store.stats()
    assert after["batches"] - before["batches"] == 3
    assert after["batch_ops_max"] == LOOP_MAX_BATCH and after["batch_ops_last"] == 7
    assert store.get_nowait("data", b"log") == ",".join(map(str, range(n))).encode()


async def test_the_loop_keeps_running_between_capped_batches(store: Storage) -> None:
    """A long queue is committed one batch per loop iteration: other callbacks run in between."""
    order: list[str] = []
    futs = [store.update("data", b"k%d" % i, lambda _c: (b"v", None)) for i in range(3 * LOOP_MAX_BATCH)]
    for i, f in enumerate(futs[::LOOP_MAX_BATCH]):
        f.add_done_callback(functools.partial(lambda i, _f: order.append(f"batch{i}"), i))
    asyncio.get_running_loop().call_soon(lambda: asyncio.get_running_loop().call_soon(order.append, "other"))
    await asyncio.gather(*futs)
    assert order.index("other") < order.index("batch2"), order


async def test_durable_op_waits_for_its_fsync_in_a_thread_and_others_share_the_next(store: Storage,
                                                                                    gate: SyncGate) -> None:
    before = store.stats()
    a = store.update("data", b"a", lambda _c: (b"A", "a"), durable=True)
    b = store.update("data", b"b", lambda _c: (b"B", "b"))
    assert await b == "b"                        # the non-durable op of the same batch does not wait for fsync
    await gate.wait_entered()                    # a's fsync is running (and held)
    assert not a.done()
    assert store.get_nowait("data", b"a") == b"A", "committed (page cache) before its fsync"
    c = store.update("data", b"c", lambda _c: (b"C", "c"), durable=True)
    d = store.update("data", b"d", lambda _c: (b"D", "d"), durable=True)
    await store.put("data", b"e", b"E")          # FIFO: c and d are committed too now
    assert store.stats()["fsync_waiting"] == 3   # a in the running fsync, c and d for the next one
    assert not (a.done() or c.done() or d.done())
    gate.open()
    assert await a == "a"
    await gate.wait_entered()                    # ONE more fsync, for c and d together
    assert not c.done()
    gate.open()
    assert list(await asyncio.gather(c, d)) == ["c", "d"]
    after = store.stats()
    assert after["fsyncs"] - before["fsyncs"] == 2 and len(gate.threads) == 2
    assert after["durable_batches"] - before["durable_batches"] == 2
    assert threading.get_ident() not in gate.threads, "fsync ran on the event loop"


async def test_failed_fsync_fails_only_the_durable_ops_it_covered(store: Storage, gate: SyncGate) -> None:
    gate.fail = OSError(5, "EIO")
    durable = store.update("data", b"a", lambda _c: (b"A", None), durable=True)
    plain = store.update("data", b"b", lambda _c: (b"B", None))
    gate.open()
    await plain
    with pytest.raises(StorageError, match="unknown"):
        await durable
    assert store.stats()["batch_errors"] == 1
    gate.fail = None
    gate.open()
    await store.put("data", b"c", b"C", durable=True)    # the next fsync works again
    assert store.get_nowait("data", b"c") == b"C"


async def test_close_waits_for_running_fsync_then_syncs_the_rest_off_the_loop(tmp_path: pathlib.Path) -> None:
    s = await Storage.open(tmp_path / "db", engine="lmdb", sync_interval=None, lmdb_sync=NOSYNC)
    gate = SyncGate(s)
    try:
        await _close_while_fsyncing(s, gate)
    finally:
        gate.restore()
        await s.close()
    async with await Storage.open(tmp_path / "db") as again:
        assert await again.count("data") == 11


async def _close_while_fsyncing(s: Storage, gate: SyncGate) -> None:
    durable = s.update("data", b"a", lambda _c: (b"A", None), durable=True)
    await gate.wait_entered()
    later = [s.update("data", b"k%d" % i, lambda _c: (b"v", None)) for i in range(10)]
    closing = asyncio.ensure_future(s.close())
    await asyncio.sleep(0)
    assert not closing.done()
    gate.open(2)                                 # the durable fsync, then close()'s final one
    await asyncio.wait_for(closing, DEADLINE)
    assert durable.done() and all(f.done() for f in later)
    assert len(gate.threads) == 2 and threading.get_ident() not in gate.threads
    assert s.stats()["fsyncs"] == 2


async def test_background_sync_on_the_loop_driver(tmp_path: pathlib.Path) -> None:
    async with await Storage.open(tmp_path / "db", engine="lmdb", sync_interval=0.02, lmdb_sync=NOSYNC) as s:
        await s.put("data", b"k", b"v")
        async with asyncio.timeout(DEADLINE):
            while s.stats()["background_syncs"] < 1:
                await asyncio.sleep(0.01)
        # A durable write's own fsync covers its commit: once it returned, the syncer has nothing left to do.
        # (It may have begun a sync of that commit just before the durable fsync ended, so one more is allowed,
        # finishing within one period; after that, none.)
        synced = s.stats()["background_syncs"]
        await s.put("data", b"k", b"v2", durable=True)
        await asyncio.to_thread(threading.Event().wait, 0.1)
        settled = s.stats()["background_syncs"]
        assert settled - synced <= 1
        await asyncio.to_thread(threading.Event().wait, 0.1)
        assert s.stats()["background_syncs"] == settled


async def test_get_nowait(store: Storage, tmp_path: pathlib.Path) -> None:
    assert store.get_nowait("data", b"k") is None
    await store.put("data", b"k", b"v")
    assert store.get_nowait("data", b"k") == b"v"
    with pytest.raises(ValueError):
        store.get_nowait("nope", b"k")  # type: ignore[arg-type]
    await store.close()
    with pytest.raises(StorageError, match="closed"):
        store.get_nowait("data", b"k")


async def test_an_engine_whose_commits_wait_for_the_disk_gets_the_writer_thread(tmp_path: pathlib.Path) -> None:
    """The loop only runs commits that take microseconds (nosync); an engine whose commits may block (LMDB in
    nometasync mode fdatasync()s in each) is driven by the writer thread instead of blocking the loop."""
    async with await Storage.open(tmp_path / "db", lmdb_sync=NOSYNC) as s:
        assert s.writes_on_loop
        blocking = _Gated(s._engine, s._engine.sync)
        blocking.writes_on_loop = False  # type: ignore[attr-defined]
        threaded = Storage(blocking, os.dup(s._lock_fd), asyncio.get_running_loop(),  # type: ignore[arg-type]
                           max_batch=8, sync_interval=None, read_threads=1)
        assert not threaded.writes_on_loop
        await threaded.put("data", b"k", b"v")
        assert s.get_nowait("data", b"k") == b"v"
        threaded._engine = _Gated(s._engine, s._engine.sync)  # closing it must not close the shared engine
        threaded._engine.close = lambda: None  # type: ignore[method-assign]
        await threaded.close()


async def test_update_from_another_loop_is_refused(store: Storage) -> None:
    def other() -> None:
        async def body() -> None:
            with pytest.raises(StorageError, match="different event loop"):
                store.update("data", b"k", lambda _c: (b"v", None))
        asyncio.run(body())

    await asyncio.to_thread(other)
    assert store.stats()["queue_depth"] == 0


async def test_on_commit_runs_after_the_commit_even_for_a_caller_that_gave_up(tmp_path: pathlib.Path) -> None:
    """The Merkle trees follow the stored data through this hook: it must run for every committed op (before its
    future resolves, whether or not anyone still waits for it) and never for an op that failed."""
    s = await Storage.open(tmp_path / "db", sync_interval=None, lmdb_sync=NOSYNC)
    seen: list[tuple[str, object, bool]] = []

    def hook(name: str, fut_box: list[asyncio.Future[object]]) -> Callable[[object], None]:
        return lambda result: seen.append((name, result, fut_box[0].done() and not fut_box[0].cancelled()))

    def failing(_: bytes | None) -> tuple[bytes | None, object]:
        raise ValueError("refused")

    boxes: list[list[asyncio.Future[object]]] = [[], [], []]
    futs = [
        s.update("data", b"a", lambda _: (b"1", "a-result"), on_commit=hook("a", boxes[0])),
        s.update("data", b"b", lambda _: (b"2", "b-result"), on_commit=hook("b", boxes[1])),
        s.update("data", b"c", failing, on_commit=hook("c", boxes[2])),
    ]
    for box, fut in zip(boxes, futs):
        box.append(fut)
    futs[1].cancel()  # the caller of "b" stopped waiting: its write and its hook still happen
    assert await asyncio.wait_for(futs[0], DEADLINE) == "a-result"
    with pytest.raises(ValueError, match="refused"):
        await asyncio.wait_for(futs[2], DEADLINE)
    assert seen == [("a", "a-result", False), ("b", "b-result", False)]
    assert await s.get("data", b"b") == b"2"
    await s.close()
