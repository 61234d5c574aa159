"""Cost of a write through the Storage facade, as the node pays it: `await storage.update(...)` on one loop.

    .venv/bin/python bench/storage_loop.py [--seconds 5] [--concurrency 32] [--keys 10000] [--max-batch N]
                                           [--lmdb-sync nometasync|nosync]

--lmdb-sync picks the store's mode (default nometasync: commits in the writer thread, each fdatasync()ed;
nosync: group commit on the loop, the driver the figures in docs/storage.md were measured with).

On one uvloop event loop, a fresh store preloaded with --keys 200-byte values:

* "concurrent": --concurrency coroutines, each awaiting `storage.update("data", key, fn)` of random keys
  (fn is a cheap read-modify-write) for --seconds;
* "sequential": one coroutine doing the same (per-op latency, no batching possible);
* "durable": --concurrency coroutines with durable=True (fsync per batch) for --seconds / 2.

For each: ops/s, process CPU time (all threads) per op, latency p50/p99 per awaited op, mean ops per commit,
and the longest single commit (with loop-driven group commit, the longest the loop was blocked by storage).
"""

from __future__ import annotations

import argparse
import asyncio
import pathlib
import random
import sys
import tempfile
import time
from typing import Any

import uvloop

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from dynamostore.storage.store import Storage

from dynamostore.storage.keys import data_key

VALUE_SIZE = 200


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))]


def bump(cur: bytes | None) -> tuple[bytes, int]:
    """A read-modify-write of the kind the replica does (decode, change, encode), kept cheap."""
    old = cur or bytes(VALUE_SIZE)
    return bytes([(old[0] + 1) & 0xFF]) + old[1:], len(old)


async def run(store: Storage, keys: list[bytes], label: str, seconds: float, concurrency: int,
              durable: bool) -> None:
    lat: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def worker(rng: random.Random) -> None:
        while (t := time.perf_counter()) < stop_at:
            await store.update("data", keys[rng.randrange(len(keys))], bump, durable=durable)
            lat.append(time.perf_counter() - t)

    before = store.stats()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker(random.Random(i)) for i in range(concurrency)))
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    after = store.stats()
    n = len(lat)
    batches = after["batches"] - before["batches"]
    print(f"{label:11} conc={concurrency:<3} {n / wall:>9,.0f} ops/s  {cpu / n * 1e6:7.2f} CPU us/op  "
          f"p50 {pct(lat, .5) * 1e6:7.1f} us  p99 {pct(lat, .99) * 1e6:8.1f} us  "
          f"mean batch {(after['ops'] - before['ops']) / max(1, batches):6.1f}  "
          f"fsyncs {after['fsyncs'] - before['fsyncs']:>5}  longest commit {after['batch_seconds_max'] * 1e3:.2f} ms")


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="storage-loop-") as tmp:
        extra: dict[str, Any] = {"max_batch": args.max_batch} if args.max_batch else {}
        store = await Storage.open(pathlib.Path(tmp) / "db", lmdb_sync=args.lmdb_sync, **extra)
        rng = random.Random(0)
        keys = [data_key(rng.randrange(64), rng.randrange(1024), rng.randbytes(16)) for _ in range(args.keys)]
        for i in range(0, len(keys), 1000):
            await asyncio.gather(*(store.put("data", k, rng.randbytes(VALUE_SIZE)) for k in keys[i:i + 1000]))
        driver = "group commit on the loop" if store.writes_on_loop else "writer thread"
        print(f"engine={store.engine_name} lmdb_sync={args.lmdb_sync} ({driver}) keys={args.keys} python={sys.version.split()[0]} loop=uvloop")
        await run(store, keys, "concurrent", args.seconds, args.concurrency, False)
        await run(store, keys, "sequential", args.seconds, 1, False)
        await run(store, keys, "durable", args.seconds / 2, args.concurrency, True)
        await store.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--keys", type=int, default=10_000)
    p.add_argument("--max-batch", type=int, default=0, help="Storage.open max_batch (default: the store's)")
    p.add_argument("--lmdb-sync", choices=("nometasync", "nosync"), default="nometasync")
    uvloop.run(main(p.parse_args()))
