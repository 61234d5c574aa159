"""Measure the storage engines (LMDB, SQLite WAL) on this machine, to choose dynamostore's default.

    .venv/bin/python bench/storage_engines.py [--keys 1000000] [--quick] [--engines lmdb,sqlite]

For each engine and each store size (10k keys and --keys), on a fresh directory preloaded with random keys
(`data_key(partition, segment, 16 random bytes)`) holding 200-byte values (a serialized version set of a
100-byte value is about that):

* engine level, the way the writer thread uses it: batches of --batch read-modify-write ops in one
  transaction ("update" rewrites random existing keys, so the size stays put; "insert" adds new keys),
  "durable" = the same batches fsynced at commit; point gets, each in its own read transaction; a chunked scan.
  ops/s over the whole run, p50/p99 per batch (writes) or per op (gets).
* facade level (dynamostore.storage.store.Storage, LMDB only): --concurrency coroutines each awaiting put() in
  a loop (real group commit: batch size is whatever queued up), then sequential awaited get()s. p50/p99 per op.
  The SQLite engine (bench/engines/sqlite_engine.py) is measured at engine level only: the node's facade
  commits on the event loop, and the writer-thread driver its facade rows were measured with left the package
  with it (git history before "No dead engine"; its numbers are in docs/storage.md).

Besides wall-clock ops/s every row has the process CPU time per op (all threads): on a machine shared with other
work the wall figures swing widely, the CPU cost per op much less.

With --repeat R every (engine, size) runs R times on fresh stores; the table shows the median run per test and
the range. Numbers go to stdout as a table (and to --json if given). Directories live under --dir (default: a temp dir
on the same disk as /tmp) and are removed afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from bench.engines.sqlite_engine import SqliteEngine  # noqa: E402
from dynamostore.storage.engine import Engine  # noqa: E402
from dynamostore.storage.keys import data_key, partition_prefix  # noqa: E402
from dynamostore.storage.lmdb_engine import LmdbEngine, LmdbSync  # noqa: E402
from dynamostore.storage.store import Storage  # noqa: E402

VALUE_SIZE = 200
SMALL = 10_000


@dataclass(frozen=True)
class Row:
    engine: str
    keys: int
    test: str
    ops_per_s: float
    p50: float
    p99: float
    unit: str          # unit of p50/p99
    cpu_us: float      # process CPU time (all threads) per op: robust to other processes sharing the cores
    note: str = ""


class Clock:
    """Wall and process-CPU time of a stretch of work."""

    def __enter__(self) -> Clock:
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall0
        self.cpu = time.process_time() - self.cpu0


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))]


def make_engine(name: str, path: pathlib.Path, writemap: bool, sync_mode: LmdbSync = "nometasync") -> Engine:
    (path / "ENGINE").write_text(name + "\n")   # so the facade reopens it with the same engine
    return (LmdbEngine(path, map_size=64 << 30, writemap=writemap, sync_mode=sync_mode) if name == "lmdb"
            else SqliteEngine(path))


def new_key(rng: random.Random) -> bytes:
    return data_key(rng.randrange(64), rng.randrange(1024), rng.randbytes(16))


def write_batches(engine: Engine, batches: list[list[bytes]], values: list[bytes], rng: random.Random,
                  durable: bool) -> tuple[Clock, list[float]]:
    """Run batches like the writer thread: read-modify-write every op, one commit per batch."""
    lat: list[float] = []
    with Clock() as clock:
        for keys in batches:
            b0 = time.perf_counter()
            txn = engine.begin(durable)
            for k in keys:
                txn.get("data", k)
                txn.put("data", k, values[rng.randrange(len(values))])
            txn.commit()
            lat.append(time.perf_counter() - b0)
    return clock, lat


def bench_engine(name: str, n: int, args: argparse.Namespace,
                 base: pathlib.Path) -> tuple[list[Row], pathlib.Path, list[bytes]]:
    rng = random.Random(n)
    path = pathlib.Path(tempfile.mkdtemp(prefix=f"{name}-{n}-", dir=base))
    engine = make_engine(name, path, args.lmdb_writemap, args.lmdb_sync)
    values = [rng.randbytes(VALUE_SIZE) for _ in range(1000)]
    keys = [new_key(rng) for _ in range(n)]
    rows: list[Row] = []

    def chunks(ks: list[bytes], size: int) -> list[list[bytes]]:
        return [ks[i:i + size] for i in range(0, len(ks), size)]

    clock, _ = write_batches(engine, chunks(keys, 10_000), values, rng, durable=False)
    engine.sync()
    rows.append(Row(name, n, "preload (10k/txn)", n / clock.wall, 0, 0, "-", clock.cpu / n * 1e6))

    def write_row(test: str, batch_keys: list[list[bytes]], durable: bool) -> None:
        clock, lat = write_batches(engine, batch_keys, values, rng, durable)
        ops = sum(map(len, batch_keys))
        rows.append(Row(name, n, test, ops / clock.wall, pct(lat, .5) * 1e3, pct(lat, .99) * 1e3, "ms/batch",
                        clock.cpu / ops * 1e6, f"batch={len(batch_keys[0])}"))

    upd = [keys[rng.randrange(n)] for _ in range(args.ops)]
    write_row("update", chunks(upd, args.batch), durable=False)
    write_row("insert", chunks([new_key(rng) for _ in range(args.ops)], args.batch), durable=False)
    engine.sync()   # so the durable batches flush their own pages, not the backlog of the runs above
    dur = [keys[rng.randrange(n)] for _ in range(args.durable_batches * args.batch)]
    write_row("update durable", chunks(dur, args.batch), durable=True)
    engine.sync()

    probe = [keys[rng.randrange(n)] for _ in range(args.gets)]
    with Clock() as clock:
        for k in probe:
            engine.get("data", k)
    lat = []
    for k in probe[: min(len(probe), 20_000)]:
        g0 = time.perf_counter()
        engine.get("data", k)
        lat.append(time.perf_counter() - g0)
    rows.append(Row(name, n, "get", len(probe) / clock.wall, pct(lat, .5) * 1e6, pct(lat, .99) * 1e6, "us/op",
                    clock.cpu / len(probe) * 1e6))

    # Page through one partition (~1/64 of the keys) 1000 at a time, as handoff/anti-entropy would.
    seen, after, pages = 0, None, []
    with Clock() as clock:
        while True:
            p0 = time.perf_counter()
            page = engine.scan("data", partition_prefix(7), after, 1000)
            pages.append(time.perf_counter() - p0)
            if not page:
                break
            seen += len(page)
            after = page[-1][0]
    rows.append(Row(name, n, "scan (keys/s)", seen / clock.wall, pct(pages, .5) * 1e3, pct(pages, .99) * 1e3,
                    "ms/page", clock.cpu / max(1, seen) * 1e6, "limit=1000"))
    engine.close()
    return rows, path, keys


async def bench_facade(name: str, n: int, path: pathlib.Path, keys: list[bytes],
                       args: argparse.Namespace) -> list[Row]:
    rng = random.Random(n + 1)
    store = await Storage.open(path, lmdb_writemap=args.lmdb_writemap, lmdb_sync=args.lmdb_sync)
    values = [rng.randbytes(VALUE_SIZE) for _ in range(100)]
    lat: list[float] = []
    per_worker = args.facade_ops // args.concurrency

    async def worker(wrng: random.Random) -> None:
        for _ in range(per_worker):
            t = time.perf_counter()
            await store.put("data", keys[wrng.randrange(len(keys))], values[wrng.randrange(len(values))])
            lat.append(time.perf_counter() - t)

    before = store.stats()
    with Clock() as clock:
        await asyncio.gather(*(worker(random.Random(i)) for i in range(args.concurrency)))
    after = store.stats()
    batches = after["batches"] - before["batches"]
    ops = after["ops"] - before["ops"]
    rows = [Row(name, n, "facade put", len(lat) / clock.wall, pct(lat, .5) * 1e3, pct(lat, .99) * 1e3, "ms/op",
                clock.cpu / len(lat) * 1e6, f"conc={args.concurrency} mean batch={ops / max(1, batches):.0f}")]

    glat: list[float] = []
    with Clock() as clock:
        for _ in range(args.facade_gets):
            g0 = time.perf_counter()
            await store.get("data", keys[rng.randrange(len(keys))])
            glat.append(time.perf_counter() - g0)
    rows.append(Row(name, n, "facade get", len(glat) / clock.wall, pct(glat, .5) * 1e6, pct(glat, .99) * 1e6,
                    "us/op", clock.cpu / len(glat) * 1e6, "on loop"))
    await store.close()
    return rows


def median_rows(runs: list[list[Row]]) -> list[Row]:
    """Per test, the run with the median throughput (its p50/p99 come along with it)."""
    out = []
    for same in zip(*runs):
        ranked = sorted(same, key=lambda r: r.ops_per_s)
        mid = ranked[len(ranked) // 2]
        spread = (f" [{ranked[0].ops_per_s:,.0f}..{ranked[-1].ops_per_s:,.0f}]" if len(ranked) > 1 else "")
        out.append(Row(mid.engine, mid.keys, mid.test, mid.ops_per_s, mid.p50, mid.p99, mid.unit, mid.cpu_us,
                       mid.note + spread))
    return out


def print_table(rows: list[Row], out: Callable[[str], None] = print) -> None:
    out(f"{'engine':7} {'keys':>9} {'test':18} {'ops/s':>11} {'cpu us/op':>9} {'p50':>9} {'p99':>9}  {'unit':9} note")
    for r in rows:
        out(f"{r.engine:7} {r.keys:>9} {r.test:18} {r.ops_per_s:>11,.0f} {r.cpu_us:>9.2f} {r.p50:>9.3f} "
            f"{r.p99:>9.3f}  {r.unit:9} {r.note}")


def summary(rows: list[Row], engines: list[str], big: int) -> list[str]:
    lines = []
    for e in engines:
        for test in ("update", "insert", "get", "facade put"):
            small = [r for r in rows if r.engine == e and r.keys == SMALL and r.test == test]
            large = [r for r in rows if r.engine == e and r.keys == big and r.test == test]
            if small and large:
                wall = large[0].ops_per_s / small[0].ops_per_s
                cpu = small[0].cpu_us / large[0].cpu_us
                lines.append(f"{e:7} {test:11} {big} vs {SMALL} keys: wall ops/s {wall:6.1%}, ops per CPU-second "
                             f"{cpu:6.1%} ({'meets' if min(wall, cpu) >= 0.8 else 'misses'} the 80% target)")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=1_000_000, help="size of the large store")
    ap.add_argument("--quick", action="store_true", help="100k-key large store, fewer ops (a smoke run)")
    ap.add_argument("--engines", default="lmdb,sqlite")
    ap.add_argument("--batch", type=int, default=100, help="ops per write transaction")
    ap.add_argument("--ops", type=int, default=200_000)
    ap.add_argument("--durable-batches", type=int, default=300)
    ap.add_argument("--gets", type=int, default=200_000)
    ap.add_argument("--facade-ops", type=int, default=100_000)
    ap.add_argument("--facade-gets", type=int, default=50_000)
    ap.add_argument("--concurrency", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=1,
                    help="run each (engine, size) this many times on fresh stores and report the median row")
    ap.add_argument("--lmdb-writemap", action="store_true", help="open LMDB with MDB_WRITEMAP (not the default)")
    ap.add_argument("--lmdb-sync", choices=("nometasync", "nosync"), default="nometasync",
                    help="LMDB's sync mode (docs/storage.md; the figures there were measured with nosync)")
    ap.add_argument("--dir", type=pathlib.Path, default=None, help="where to create the stores")
    ap.add_argument("--json", type=pathlib.Path, default=None)
    args = ap.parse_args()
    if args.quick:
        args.keys = min(args.keys, 100_000)
        args.ops, args.gets, args.durable_batches = 50_000, 50_000, 100
        args.facade_ops, args.facade_gets = 20_000, 10_000
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    base = pathlib.Path(tempfile.mkdtemp(prefix="storage-bench-", dir=args.dir))
    rows: list[Row] = []
    try:
        for name in engines:
            runs: dict[int, list[list[Row]]] = {SMALL: [], args.keys: []}
            for _ in range(args.repeat):    # interleave sizes so both see the same background load
                for n in runs:
                    t0 = time.perf_counter()
                    engine_rows, path, keys = bench_engine(name, n, args, base)
                    if name == "lmdb":  # the facade is LMDB's (module doc)
                        engine_rows += asyncio.run(bench_facade(name, n, path, keys, args))
                    shutil.rmtree(path)
                    runs[n].append(engine_rows)
                    print(f"# {name} {n} keys done in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
            for n in runs:
                rows += median_rows(runs[n])
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print_table(rows)
    print()
    for line in summary(rows, engines, args.keys):
        print(line)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1))


if __name__ == "__main__":
    main()
