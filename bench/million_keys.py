"""Node throughput with 10 thousand vs 1 million keys stored (the storage-scaling requirement).

    .venv/bin/python bench/million_keys.py [--big 1000000] [--small 10000] [--duration 10]
                                           [--lmdb-sync nometasync|nosync|both]

For each key count: a one-node cluster (N=1, R=W=1, anti-entropy off so no background scan competes) whose
store is preloaded directly through the node's own replica code (the same records a client write makes,
much faster than over HTTP), then wrk (-t2 -c32) drives random 100-byte puts and random gets over all
the keys. Prints puts/s and gets/s for both sizes and the ratio (the requirement: 1M within 20% of 10k).
--lmdb-sync picks the node's `[storage] lmdb_sync` (default: nometasync, the node's default, safe across power
loss); `both` measures each size in both modes (nosync first: the mode before the safe default) and prints
them side by side. The preload itself always runs in nosync mode (it is not measured; close() fsyncs it).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import tomli_w

from dynamostore.cli.localcluster import free_base_port, write_cluster_file
from dynamostore.kv.replica import LocalReplica
from dynamostore.storage.store import Storage

ROOT = Path(__file__).resolve().parent.parent


async def preload(store: Path, keys: int, partitions: int, segments: int) -> float:
    t0 = time.monotonic()
    storage = await Storage.open(store, lmdb_sync="nosync")
    replica = await LocalReplica.open("n1", storage, partitions=partitions, segments=segments,
                                      max_siblings=64, warn_siblings=16)
    chunk = 2000
    for start in range(0, keys, chunk):
        await asyncio.gather(*(
            replica.coordinate(replica.ref(b"key%08d" % i), {}, b"v" * 100, "application/octet-stream", durable=False)
            for i in range(start, min(keys, start + chunk))
        ))
    await storage.close()
    return time.monotonic() - t0


def wrk(url: str, keys: int, op: str, duration: int) -> float:
    env = dict(os.environ, NKEYS=str(keys), OP=op)
    out = subprocess.run(["wrk", "-t2", "-c32", f"-d{duration}s", "-s", str(ROOT / "bench/wrk/ds_mixed_n.lua"), url],
                         capture_output=True, text=True, check=True, env=env).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    return float(m.group(1)) if m else 0.0


def run(keys: int, duration: int, lmdb_sync: str) -> tuple[float, float, float]:
    d = Path(tempfile.mkdtemp(prefix="ds-1m-"))
    try:
        settings = d / "s.toml"
        settings.write_text(tomli_w.dumps({"cluster": {"n_val": 1}, "quorum": {"r": 1, "w": 1},
                                           "antientropy": {"enabled": False}, "storage": {"lmdb_sync": lmdb_sync},
                                           "log_level": "WARNING"}))
        port = free_base_port(1)
        cfg = write_cluster_file(d, 1, port, settings)
        took = asyncio.run(preload(d / "n1" / "store", keys, 64, 1024))
        node = subprocess.Popen([str(ROOT / ".venv/bin/dynamostore"), "node", "--config", str(cfg), "--id", "n1"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                urllib.request.urlopen(url + "/health", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        gets = wrk(url, keys, "get", duration)
        puts = wrk(url, keys, "put", duration)
        node.terminate()
        node.wait(timeout=60)
        return took, puts, gets
    finally:
        shutil.rmtree(d, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--big", type=int, default=1_000_000)
    ap.add_argument("--small", type=int, default=10_000)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--lmdb-sync", choices=("nometasync", "nosync", "both"), default="nometasync",
                    help="the node's [storage] lmdb_sync; both: each size in both modes, side by side")
    args = ap.parse_args()
    modes = ["nosync", "nometasync"] if args.lmdb_sync == "both" else [args.lmdb_sync]
    rows: dict[str, list[tuple[int, float, float]]] = {m: [] for m in modes}
    for keys in (args.small, args.big):
        for mode in modes:
            took, puts, gets = run(keys, args.duration, mode)
            rows[mode].append((keys, puts, gets))
            print(f"{keys:>9} keys, lmdb_sync {mode:<10} (preloaded in {took:.0f}s): {puts:8.0f} puts/s "
                  f"{gets:8.0f} gets/s", flush=True)
    for mode in modes:
        (_, p0, g0), (_, p1, g1) = rows[mode]
        print(f"lmdb_sync {mode}: big vs small: puts x{p1 / p0:.2f}, gets x{g1 / g0:.2f} (requirement: >= 0.80)")
    if len(modes) == 2:
        for (keys, pf, gf), (_, ps, gs) in zip(rows["nosync"], rows["nometasync"]):
            print(f"{keys:>9} keys: nometasync vs nosync: puts x{ps / pf:.2f}, gets x{gs / gf:.2f}")


if __name__ == "__main__":
    main()
