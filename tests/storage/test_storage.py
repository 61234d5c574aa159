"""Tests for dynamostore.storage: the asyncio facade over LMDB, group commit, durability across kill -9."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import signal
import sys
import threading
from collections.abc import AsyncIterator, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynamostore.storage.keys import data_key, partition_prefix, segment_prefix, split_data_key
from dynamostore.storage.store import LMDB_SYNC_MODES, MAX_KEY_SIZE, LmdbSync, Storage, StorageError
from tests.storage.gates import WriterGate

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEADLINE = 20.0   # seconds; generous upper bound for waits on conditions, never a sleep


@pytest.fixture(params=LMDB_SYNC_MODES)
async def store(request: pytest.FixtureRequest, tmp_path: pathlib.Path) -> AsyncIterator[Storage]:
    """Both drivers: the writer thread (nometasync, the default) and group commit on the loop (nosync)."""
    s = await Storage.open(tmp_path / "db", lmdb_sync=request.param)
    yield s
    await s.close()


@contextlib.asynccontextmanager
async def writer_held(s: Storage) -> AsyncIterator[None]:
    """No batch is applied inside the block, so the ops queued there form one batch after it.

    Writer thread (nometasync): the thread is held inside a gate op. Loop driver (nosync): nothing is committed
    until the loop runs the flush, so the block must simply not yield before its ops are queued.
    """
    if s.writes_on_loop:
        yield
        return
    gate = WriterGate()
    held = await gate.hold(s)
    try:
        yield
    finally:
        gate.release.set()
        await held


# ------------------------------------------------------------------------------------------ key helpers

@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.binary(max_size=64))
@settings(max_examples=50)
def test_data_key_roundtrip_and_prefixes(partition: int, segment: int, key: bytes) -> None:
    skey = data_key(partition, segment, key)
    assert split_data_key(skey) == (partition, segment, key)
    assert skey.startswith(partition_prefix(partition))
    assert skey.startswith(segment_prefix(partition, segment))


def test_data_key_rejects_out_of_range() -> None:
    with pytest.raises(ValueError):
        data_key(0x10000, 0, b"k")
    with pytest.raises(ValueError):
        data_key(0, -1, b"k")
    with pytest.raises(ValueError):
        split_data_key(b"\x00\x01")


# ------------------------------------------------------------------------------------------ basic ops

async def test_get_put_delete(store: Storage) -> None:
    assert await store.get("data", b"k") is None
    await store.put("data", b"k", b"v1")
    assert await store.get("data", b"k") == b"v1"
    await store.put("data", b"k", b"v2")
    assert await store.get("data", b"k") == b"v2"
    await store.delete("data", b"k")
    assert await store.get("data", b"k") is None
    await store.delete("data", b"k")            # deleting an absent key is a no-op, not an error
    await store.put("data", b"empty", b"")      # an empty value is a value, not a delete
    assert await store.get("data", b"empty") == b""


async def test_namespaces_are_isolated(store: Storage) -> None:
    await store.put("data", b"k", b"data")
    await store.put("hints", b"k", b"hint")
    assert await store.get("meta", b"k") is None
    assert await store.get("data", b"k") == b"data"
    assert await store.get("hints", b"k") == b"hint"
    assert [await store.count(ns) for ns in ("data", "hints", "meta")] == [1, 1, 0]
    await store.delete("hints", b"k")
    assert await store.get("data", b"k") == b"data"
    assert await store.scan("hints") == []


async def test_scan_prefix_start_after_limit_count(store: Storage) -> None:
    keys = [data_key(p, s, b"k%d" % i) for p in (1, 2, 0xFFFF) for s in (0, 7) for i in range(5)]
    await asyncio.gather(*(store.put("data", k, k[::-1]) for k in keys))
    await store.put("data", b"\xff\xff\xff\xff\xff", b"edge")   # 0xff-heavy keys test the prefix bound
    p2 = sorted(k for k in keys if k.startswith(partition_prefix(2)))

    assert await store.scan("data", partition_prefix(2)) == [(k, k[::-1]) for k in p2]
    assert await store.count("data", partition_prefix(2)) == 10
    assert await store.count("data", segment_prefix(2, 7)) == 5
    assert await store.count("data") == len(keys) + 1
    assert await store.count("data", b"\xff\xff") == 11
    assert [k for k, _ in await store.scan("data", b"\xff\xff\xff\xff")] == [b"\xff\xff\xff\xff\xff"]
    assert await store.scan("data", partition_prefix(3)) == []
    assert await store.count("data", partition_prefix(3)) == 0

    first = await store.scan("data", partition_prefix(2), limit=3)
    assert [k for k, _ in first] == p2[:3]
    rest = await store.scan("data", partition_prefix(2), start_after=first[-1][0], limit=100)
    assert [k for k, _ in rest] == p2[3:]
    # start_after before the prefix is ignored; past the prefix's end gives nothing; limit 0 gives nothing.
    assert [k for k, _ in await store.scan("data", partition_prefix(2), start_after=b"\x00")] == p2
    assert await store.scan("data", partition_prefix(2), start_after=partition_prefix(3)) == []
    assert await store.scan("data", partition_prefix(2), limit=0) == []
    # start_after need not be an existing key.
    mid = data_key(2, 3, b"")
    assert [k for k, _ in await store.scan("data", partition_prefix(2), start_after=mid)] == \
        [k for k in p2 if k > mid]
    everything = await store.scan("data", limit=10_000)
    assert [k for k, _ in everything] == sorted(keys + [b"\xff\xff\xff\xff\xff"])


async def test_bad_arguments_are_rejected(store: Storage) -> None:
    with pytest.raises(ValueError):
        await store.get("nope", b"k")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        await store.put("data", b"", b"v")
    with pytest.raises(ValueError):
        await store.put("data", b"x" * (MAX_KEY_SIZE + 1), b"v")
    with pytest.raises(TypeError):
        await store.put("data", "k", b"v")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await store.put("data", b"k", "v")  # type: ignore[arg-type]
    await store.put("data", b"x" * MAX_KEY_SIZE, b"v")
    assert await store.get("data", b"x" * MAX_KEY_SIZE) == b"v"


# ------------------------------------------------------------------------------------ update and batches

async def test_update_returns_result_and_sees_current_value(store: Storage) -> None:
    def incr(cur: bytes | None) -> tuple[bytes, int]:
        n = int(cur or b"0") + 1
        return str(n).encode(), n

    assert await store.update("meta", b"ctr", incr) == 1
    assert await store.update("meta", b"ctr", incr) == 2
    assert await store.update("meta", b"ctr", lambda cur: (None, cur)) == b"2"   # None deletes
    assert await store.get("meta", b"ctr") is None


async def test_update_sees_prior_writes_of_the_same_batch(store: Storage) -> None:
    async with writer_held(store):
        ops = [
            store.update("data", b"k", lambda _cur: (b"1", None)),
            store.update("data", b"k", lambda cur: ((cur or b"") + b"2", cur)),
            store.update("data", b"k", lambda cur: (None, cur)),
            store.update("data", b"k", lambda cur: (b"4", cur)),
        ]
    assert await asyncio.gather(*ops) == [None, b"1", b"12", None]
    assert store.stats()["batch_ops_last"] == 4, "the four ops should have formed one batch"
    assert await store.get("data", b"k") == b"4"


async def test_raising_fn_fails_only_its_own_op(store: Storage) -> None:
    class Boom(Exception):
        pass

    def boom(_cur: bytes | None) -> tuple[bytes, None]:
        raise Boom("no")

    await store.put("data", b"victim", b"old")
    async with writer_held(store):
        ops = [
            store.update("data", b"a", lambda _c: (b"A", None)),
            store.update("data", b"victim", boom),
            store.update("data", b"victim", lambda c: ("str", None)),  # type: ignore[arg-type,return-value]
            store.update("data", b"victim", lambda c: (c + b"+", c)),  # type: ignore[operator]
            store.update("data", b"b", lambda _c: (b"B", None)),
        ]
    results = await asyncio.gather(*ops, return_exceptions=True)
    assert store.stats()["batch_ops_last"] == 5
    assert results[0] is None and results[4] is None
    assert isinstance(results[1], Boom)
    assert isinstance(results[2], TypeError)
    assert results[3] == b"old"      # saw the value untouched by the two failed ops
    assert await store.get("data", b"victim") == b"old+"
    assert await store.get("data", b"a") == b"A"
    assert await store.get("data", b"b") == b"B"


async def test_ops_on_one_key_apply_in_call_order(store: Storage) -> None:
    def append(i: int) -> Callable[[bytes | None], tuple[bytes, None]]:
        return lambda cur: ((cur + b"," if cur else b"") + str(i).encode(), None)

    await asyncio.gather(*(store.update("data", b"log", append(i)) for i in range(300)))
    assert await store.get("data", b"log") == ",".join(map(str, range(300))).encode()
    assert store.stats()["batches"] < 300, "concurrent updates should have been group-committed"


async def test_durable_writes_are_fsynced_and_batches_share_fsyncs(store: Storage) -> None:
    before = store.stats()
    await store.put("data", b"d", b"v", durable=True)
    mid = store.stats()
    assert (mid["durable_batches"] - before["durable_batches"], mid["fsyncs"] - before["fsyncs"]) == (1, 1)
    await asyncio.gather(*(store.put("data", b"d%d" % i, b"v", durable=(i % 10 == 0)) for i in range(50)))
    after = store.stats()
    assert await store.get("data", b"d") == b"v"
    # At most one fsync per batch holding a durable op (on the loop, durable batches may share one fsync).
    assert 1 <= after["fsyncs"] - mid["fsyncs"] <= after["durable_batches"] - mid["durable_batches"]
    assert after["fsync_waiting"] == 0


async def test_background_sync_flushes_non_durable_commits(tmp_path: pathlib.Path) -> None:
    async with await Storage.open(tmp_path / "db", sync_interval=0.02) as s:
        assert s.stats()["background_syncs"] == 0
        await s.put("data", b"k", b"v")
        async with asyncio.timeout(DEADLINE):
            while s.stats()["background_syncs"] < 1:
                await asyncio.sleep(0.01)
        synced = s.stats()["background_syncs"]
        # Nothing new committed: the syncer has nothing to do (checked over several of its periods).
        await asyncio.to_thread(threading.Event().wait, 0.1)
        assert s.stats()["background_syncs"] == synced


async def test_cancelled_caller_does_not_cancel_the_write(store: Storage) -> None:
    async with writer_held(store):
        fut = store.update("data", b"k", lambda _c: (b"v", None))
        fut.cancel()                                # the caller gives up before anything is applied
    task = asyncio.ensure_future(store.put("data", b"k2", b"v2"))
    await asyncio.sleep(0)                          # the task has queued its op and waits on it...
    task.cancel()                                   # ...and is cancelled
    with pytest.raises(asyncio.CancelledError):
        await task
    assert fut.cancelled()
    await store.put("data", b"after", b"x")      # FIFO: once this is committed, so are the cancelled ops
    assert await store.get("data", b"k") == b"v"
    assert await store.get("data", b"k2") == b"v2"


@pytest.mark.parametrize("sync_mode", LMDB_SYNC_MODES)
async def test_engine_failure_fails_the_batch_then_recovers(tmp_path: pathlib.Path, sync_mode: LmdbSync) -> None:
    s = await Storage.open(tmp_path / "small", engine="lmdb", map_size=1 << 20, lmdb_sync=sync_mode)
    try:
        with pytest.raises(StorageError, match="MapFull"):
            await s.put("data", b"huge", b"x" * (2 << 20))
        assert s.stats()["batch_errors"] == 1
        await s.put("data", b"small", b"ok")
        assert await s.get("data", b"small") == b"ok"
        assert await s.get("data", b"huge") is None
    finally:
        await s.close()


def test_stats_has_the_metrics_fields(tmp_path: pathlib.Path) -> None:
    async def body() -> dict[str, int | float]:
        async with await Storage.open(tmp_path / "db") as s:
            await s.put("data", b"k", b"v")
            return s.stats()

    stats = asyncio.run(body())
    for name in ("batches", "ops", "ops_failed", "batch_errors", "durable_batches", "fsyncs", "queue_depth",
                 "fsync_waiting",
                 "batch_seconds_total", "batch_seconds_max", "disk_bytes", "entries_data", "map_size"):
        assert name in stats, name
    assert stats["ops"] == 1 and stats["entries_data"] == 1 and stats["disk_bytes"] > 0


# ------------------------------------------------------------------------------- lifecycle and reopen

@pytest.mark.parametrize("sync_mode", LMDB_SYNC_MODES)
async def test_close_finishes_queued_ops_and_rejects_new_ones(tmp_path: pathlib.Path, sync_mode: LmdbSync) -> None:
    s = await Storage.open(tmp_path / "db", lmdb_sync=sync_mode)
    async with writer_held(s):
        pending = [s.update("data", b"k%d" % i, lambda _c: (b"v", None)) for i in range(600)]
        closing = asyncio.ensure_future(s.close())
        await asyncio.sleep(0)                  # close() has begun
        assert s.stats()["queue_depth"] > 0, "some ops should still be queued when close() begins"
        with pytest.raises(StorageError, match="closed"):
            await s.put("data", b"late", b"v")
        with pytest.raises(StorageError, match="closed"):
            s.update("data", b"late", lambda _c: (b"v", None))
        with pytest.raises(StorageError, match="closed"):
            await s.get("data", b"k0")
    await asyncio.wait_for(asyncio.gather(closing, *pending), DEADLINE)
    await s.close()    # idempotent
    async with await Storage.open(tmp_path / "db") as again:
        assert await again.count("data") == 600
        assert await again.get("data", b"late") is None


async def test_reopen_after_clean_close_keeps_data(tmp_path: pathlib.Path) -> None:
    async with await Storage.open(tmp_path / "db") as s:
        await asyncio.gather(*(s.put("data", data_key(i % 3, i % 5, b"%d" % i), b"v%d" % i) for i in range(500)))
        await s.put("hints", b"h", b"hint")
        await s.put("meta", b"m", b"meta")
    async with await Storage.open(tmp_path / "db") as s:
        assert s.engine_name == "lmdb" and (tmp_path / "db" / "ENGINE").read_text() == "lmdb\n"
        assert await s.count("data") == 500
        assert await s.get("data", data_key(1, 1, b"1")) == b"v1"
        assert await s.get("hints", b"h") == b"hint"
        assert await s.get("meta", b"m") == b"meta"


async def test_one_storage_per_directory(tmp_path: pathlib.Path) -> None:
    async with await Storage.open(tmp_path / "db"):
        with pytest.raises(StorageError, match="already open"):
            await Storage.open(tmp_path / "db")
    async with await Storage.open(tmp_path / "db") as s:   # the lock was released by close()
        assert s.engine_name == "lmdb"


async def test_a_directory_recorded_with_another_engine_is_refused_and_left_alone(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "db"
    path.mkdir()
    (path / "ENGINE").write_text("sqlite\n")  # a store of the SQLite engine the package no longer ships
    with pytest.raises(StorageError, match="holds a 'sqlite' store; .* lmdb only"):
        await Storage.open(path)
    assert sorted(p.name for p in path.iterdir()) == ["ENGINE", "LOCK"]
    with pytest.raises(ValueError, match="unknown engine"):
        await Storage.open(tmp_path / "other", engine="sqlite")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- model-based property

@given(st.lists(st.tuples(st.sampled_from(["put", "del"]), st.integers(0, 3), st.binary(min_size=0, max_size=3),
                          st.binary(max_size=8)), max_size=60),
       st.integers(0, 3), st.integers(1, 7))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_matches_a_dict_model(tmp_path: pathlib.Path, ops: list[tuple[str, int, bytes, bytes]],
                              part: int, page: int) -> None:
    """Random puts/deletes, issued concurrently, end like a dict; paging a prefix returns it sorted."""
    model: dict[bytes, bytes] = {}
    for op, p, k, v in ops:
        key = data_key(p, 0, k)
        if op == "put":
            model[key] = v
        else:
            model.pop(key, None)

    async def body() -> None:
        path = tmp_path / f"m{os.urandom(6).hex()}"
        async with await Storage.open(path, engine="lmdb") as s:
            await asyncio.gather(*(s.put("data", data_key(p, 0, k), v if op == "put" else None)
                                   for op, p, k, v in ops))
            got: list[tuple[bytes, bytes]] = []
            after: bytes | None = None
            while chunk := await s.scan("data", partition_prefix(part), start_after=after, limit=page):
                assert len(chunk) <= page
                got += chunk
                after = chunk[-1][0]
            want = sorted((k, v) for k, v in model.items() if k.startswith(partition_prefix(part)))
            assert got == want
            assert await s.count("data") == len(model)

    asyncio.run(body())


# --------------------------------------------------------------------------------- kill -9 durability

CHILD = """
import asyncio, pathlib, sys
from dynamostore.storage.store import Storage

async def main(path, engine, mode):
    s = await Storage.open(pathlib.Path(path), engine=engine, lmdb_writemap=mode == "writemap",
                           lmdb_sync="nosync" if mode == "nosync" else "nometasync")
    async def writer(w):
        i = 0
        while True:
            key = b"w%d-%d" % (w, i)
            await s.put("data", key, key * 3)
            sys.stdout.write("acked %s\\n" % key.decode())
            sys.stdout.flush()
            i += 1
    await asyncio.gather(*(writer(w) for w in range(8)))

asyncio.run(main(*sys.argv[1:4]))
"""


@pytest.mark.parametrize(("engine", "mode"), [("lmdb", "default"), ("lmdb", "writemap"), ("lmdb", "nosync")])
async def test_acked_writes_survive_kill_9(tmp_path: pathlib.Path, engine: str, mode: str) -> None:
    path = tmp_path / "db"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", CHILD, str(path), engine, mode,
                                                stdout=asyncio.subprocess.PIPE, env=env, cwd=str(ROOT))
    assert proc.stdout is not None
    acked: list[bytes] = []
    try:
        async with asyncio.timeout(DEADLINE):
            while len(acked) < 2000:      # the child is mid-stream: 8 writers, group-committed
                line = await proc.stdout.readline()
                assert line.startswith(b"acked "), f"child said {line!r} (exit {proc.returncode})"
                acked.append(line.split()[1])
    finally:
        proc.send_signal(signal.SIGKILL)
    # Acks printed before the kill but not read yet count too.
    acked += [line.split()[1] for line in (await proc.stdout.read()).splitlines() if line.startswith(b"acked ")]
    assert await proc.wait() == -signal.SIGKILL
    async with await Storage.open(path) as s:
        assert s.engine_name == engine
        missing = [k for k in acked if await s.get("data", k) != k * 3]
        assert not missing, f"{len(missing)} of {len(acked)} acked writes lost, e.g. {missing[:3]}"
        assert await s.count("data") >= len(acked)
