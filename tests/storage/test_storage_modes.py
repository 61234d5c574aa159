"""LMDB's sync modes (`lmdb_sync`) and the writer thread that drives the default one.

"nometasync" (default): LMDB documents it as keeping the environment intact across power loss (a crash may undo
the last transaction(s), never corrupt); each commit fdatasync()s, so commits run in the writer thread with group
commit. "nosync": the old fast mode, commits on the loop (test_storage_loop.py); an OS crash may corrupt it.
"""

from __future__ import annotations

import asyncio
import errno
import pathlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from dynamostore.storage.lmdb_engine import LmdbEngine
from dynamostore.storage.store import Storage, StorageError
from tests.storage.gates import CommitGate, SyncGate

DEADLINE = 20.0   # seconds; upper bound for waits on conditions, never a sleep


@pytest.fixture
async def store(tmp_path: pathlib.Path) -> AsyncIterator[Storage]:
    # The default mode; no background syncer, so every fsync seen is one the writer asked for.
    s = await Storage.open(tmp_path / "db", sync_interval=None)
    yield s
    await s.close()


@pytest.fixture
def sync_gate(store: Storage) -> Iterator[SyncGate]:
    g = SyncGate(store)
    yield g
    g.restore()


@pytest.fixture
def commit_gate(store: Storage) -> Iterator[CommitGate]:
    g = CommitGate(store)
    yield g
    g.restore()


def put(value: bytes) -> Callable[[bytes | None], tuple[bytes, None]]:
    return lambda _: (value, None)


def lmdb_flags(s: Storage) -> dict[str, bool]:
    engine = s._engine
    assert isinstance(engine, LmdbEngine)
    flags: dict[str, bool] = engine.env.flags()
    return flags


# ---------------------------------------------------------------------------------------- the modes

async def test_the_default_mode_is_one_lmdb_documents_as_safe_across_power_loss(tmp_path: pathlib.Path) -> None:
    """MDB_NOSYNC (sync=False) may corrupt the environment on an OS crash; MDB_NOMETASYNC (sync=True,
    metasync=False) only undoes the last transaction(s). The default must be the latter."""
    async with await Storage.open(tmp_path / "db") as s:
        flags = lmdb_flags(s)
        assert (flags["sync"], flags["metasync"]) == (True, False)
        assert not s.writes_on_loop, "a commit that fdatasync()s must not run on the event loop"


@pytest.mark.parametrize(("mode", "sync", "on_loop"), [("nometasync", True, False), ("nosync", False, True)])
async def test_each_mode_opens_lmdb_with_its_flags_and_driver(tmp_path: pathlib.Path, mode: str, sync: bool,
                                                              on_loop: bool) -> None:
    async with await Storage.open(tmp_path / "db", lmdb_sync=mode) as s:  # type: ignore[arg-type]
        flags = lmdb_flags(s)
        assert (flags["sync"], flags["metasync"]) == (sync, False)
        assert s.writes_on_loop is on_loop
        await s.put("data", b"k", b"v", durable=True)
    async with await Storage.open(tmp_path / "db", lmdb_sync="nosync") as s:   # a mode is not recorded
        assert await s.get("data", b"k") == b"v"


async def test_an_unknown_mode_is_refused_before_anything_is_opened(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="unknown lmdb_sync 'fsync'; expected one of"):
        await Storage.open(tmp_path / "db", lmdb_sync="fsync")  # type: ignore[arg-type]
    assert not (tmp_path / "db").exists()


# ------------------------------------------------------------------------- ordering in the writer thread

async def test_an_op_resolves_only_after_its_commit_and_off_the_loop(store: Storage, commit_gate: CommitGate
                                                                     ) -> None:
    fut = store.update("data", b"k", lambda _: (b"v", "done"))
    await commit_gate.wait_entered()
    assert store.get_nowait("data", b"k") is None        # not committed yet
    await asyncio.sleep(0.01)                            # the loop runs meanwhile: a commit never blocks it
    assert not fut.done()
    commit_gate.open()
    assert await asyncio.wait_for(fut, DEADLINE) == "done"
    assert store.get_nowait("data", b"k") == b"v"


async def test_a_durable_op_resolves_only_after_its_commit_and_the_sync_in_the_writer_thread(
        store: Storage, sync_gate: SyncGate) -> None:
    before = store.stats()
    fut = store.update("data", b"k", lambda _: (b"v", "done"), durable=True)
    await sync_gate.wait_entered()                       # the writer syncs the batch it just committed...
    assert store.get_nowait("data", b"k") == b"v"        # ...so the commit came first
    await asyncio.sleep(0.01)
    assert not fut.done(), "a durable op resolved before its fsync"
    sync_gate.open()
    assert await asyncio.wait_for(fut, DEADLINE) == "done"
    after = store.stats()
    assert (after["fsyncs"] - before["fsyncs"], after["durable_batches"] - before["durable_batches"]) == (1, 1)
    assert sync_gate.threads and sync_gate.threads[0] != threading.get_ident()
    assert not store._committer.unsynced


async def test_ops_queued_during_a_commit_form_the_next_batch_and_only_durable_batches_sync_again(
        store: Storage, commit_gate: CommitGate) -> None:
    first = store.update("data", b"a", lambda _: (b"1", None))
    await commit_gate.wait_entered()                     # the writer waits for the disk on batch 1...
    rest = [store.update("data", b"k%d" % i, lambda _: (b"v", None), durable=i == 3) for i in range(10)]
    before = store.stats()
    commit_gate.open(2)
    await asyncio.wait_for(asyncio.gather(first, *rest), DEADLINE)
    after = store.stats()
    assert after["batches"] - before["batches"] == 2 and after["batch_ops_last"] == 10   # ...meanwhile: one batch
    assert after["fsyncs"] - before["fsyncs"] == 1       # the batch with the durable op: one extra sync


# ------------------------------------------------------------------------------ failures in the thread

async def test_a_full_disk_fails_the_batch_to_its_callers_and_the_writer_carries_on(store: Storage,
                                                                                   commit_gate: CommitGate) -> None:
    await asyncio.gather(store.put("data", b"old", b"kept"), asyncio.to_thread(commit_gate.open))
    commit_gate.fail = OSError(errno.ENOSPC, "No space left on device")
    failed = [store.update("data", b"new%d" % i, put(b"v")) for i in range(3)]
    commit_gate.open()
    for fut in failed:
        with pytest.raises(StorageError, match="No space left"):
            await asyncio.wait_for(fut, DEADLINE)
    assert store.stats()["batch_errors"] == 1
    commit_gate.open()
    await asyncio.wait_for(store.put("data", b"after", b"ok"), DEADLINE)   # the thread is alive
    assert store.get_nowait("data", b"old") == b"kept"  # nothing committed before was lost
    assert store.get_nowait("data", b"after") == b"ok"
    assert store.get_nowait("data", b"new0") is None    # the failed batch left nothing behind


async def test_a_failed_sync_fails_exactly_the_durable_ops_of_its_batch(store: Storage, sync_gate: SyncGate,
                                                                        commit_gate: CommitGate) -> None:
    hold = store.update("data", b"first", put(b"1"))
    await commit_gate.wait_entered()                     # queue both ops behind it: one batch
    plain = store.update("data", b"plain", put(b"p"))
    durable = store.update("data", b"durable", put(b"d"), durable=True)
    sync_gate.fail = OSError(errno.EIO, "Input/output error")
    commit_gate.open(3)
    sync_gate.open()
    await asyncio.wait_for(hold, DEADLINE)
    await asyncio.wait_for(plain, DEADLINE)               # committed; it never asked for a sync
    with pytest.raises(StorageError, match="outcome is unknown"):
        await asyncio.wait_for(durable, DEADLINE)
    sync_gate.fail = None
    sync_gate.open()
    await asyncio.wait_for(store.put("data", b"again", b"a", durable=True), DEADLINE)


async def test_close_drains_the_queue_then_syncs_and_the_data_is_there_on_reopen(tmp_path: pathlib.Path) -> None:
    s = await Storage.open(tmp_path / "db", sync_interval=None)
    gate = CommitGate(s)
    first = s.update("data", b"k0", lambda _: (b"v", None))
    await gate.wait_entered()
    pending = [s.update("data", b"k%d" % i, put(b"v")) for i in range(1, 500)]
    closing = asyncio.ensure_future(s.close())
    await asyncio.sleep(0)
    with pytest.raises(StorageError, match="closed"):
        s.update("data", b"late", lambda _: (b"x", None))
    gate.open(1000)
    await asyncio.wait_for(asyncio.gather(first, *pending, closing), DEADLINE)
    assert not s._committer.unsynced, "close() left commits unsynced"
    async with await Storage.open(tmp_path / "db") as again:
        assert await again.count("data") == 500
