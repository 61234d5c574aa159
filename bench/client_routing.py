"""Requests routed by the client to a primary of their key, against requests sent to a random node.

    .venv/bin/python bench/client_routing.py [--nodes 5] [--duration 10] [--rounds 3] [--concurrency 32]
                                             [--procs 2] [--keys 5000] [--value-size 100] [--json FILE]

Starts a local cluster of `--nodes` node processes (N=3, the default R=W=2), preloads `--keys` keys, then,
for each round, runs the same closed-loop load with the client's two routing modes, one after the other
(alternating which goes first): `ring` (each request to a live primary of its key: a write is coordinated
where it lands, a read starts with the coordinator's own copy) and `random` (each request to a random live
node: with N=3 of 5 nodes, 2 in 5 land on a node that holds no copy, which forwards a write to a primary and
reads only remote copies). Each phase (puts, then gets) runs `--procs` client processes of `--concurrency`
async workers each for `--duration` seconds: puts of new keys (an insert load: no context to read first,
no siblings piling up), then gets of the preloaded keys, uniformly at random.

Reported per mode and phase (the median over the rounds): throughput, p50 and p99 latency seen by the
client, and the CPU the node processes spent per request, summed over the whole cluster
(utime + stime from /proc/<pid>/stat, before and after the phase), with the writes the nodes forwarded.
The client processes run on the same machine; their CPU is reported on its own line, not in the per-request
figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.rw.cluster import LocalCluster  # noqa: E402
from dynamostore.client import AsyncClient  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
MODES = ("ring", "random")
STARTUP_S = 3.0  # time given to the client processes to start before the measured window


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (fields 14 and 15 of /proc/<pid>/stat, after the command's parentheses)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def key_of(i: int) -> str:
    return f"key{i:07d}"


async def _load(urls: list[str], mode: str, op: str, duration: float, concurrency: int, keys: int,
                value: bytes, seed: int, start_at: float) -> dict[str, Any]:
    rng = random.Random(seed)
    lat: list[float] = []
    errors = fresh = 0
    async with AsyncClient(urls, routing=mode, connections=concurrency, rng=random.Random(seed)) as c:  # type: ignore[arg-type]
        await c.refresh_ring()
        await asyncio.sleep(max(0.0, start_at - time.time()))  # every client process starts together
        cpu0 = time.process_time()
        end = time.perf_counter() + duration

        async def worker() -> None:
            nonlocal errors, fresh
            while (now := time.perf_counter()) < end:
                try:
                    if op == "put":
                        # a new key each time: no read needed for a context, and no siblings piling up
                        fresh += 1
                        await c.put(f"new-{seed}-{fresh}", value)
                    else:  # each preloaded key holds one value, written at W=N
                        await c.get(key_of(rng.randrange(keys)))
                except Exception:  # noqa: BLE001 - counted, the load goes on
                    errors += 1
                    continue
                lat.append(time.perf_counter() - now)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {"lat": lat, "errors": errors, "elapsed": elapsed, "cpu": time.process_time() - cpu0}


def _client_process(args: tuple[list[str], str, str, float, int, int, bytes, int, float]) -> dict[str, Any]:
    return asyncio.run(_load(*args))


async def preload(urls: list[str], keys: int, value: bytes) -> None:
    async with AsyncClient(urls) as c:
        it = iter(range(keys))

        async def worker() -> None:
            for i in it:
                await c.put(key_of(i), value, w="all")

        await asyncio.gather(*(worker() for _ in range(32)))


def forwarded(status_docs: list[dict[str, Any]]) -> int:
    return sum(int(d.get("coordinator", {}).get("forwarded", 0)) for d in status_docs)


async def statuses(cluster: LocalCluster) -> list[dict[str, Any]]:
    return [await cluster.status(n) for n in cluster.ids]


async def run_phase(cluster: LocalCluster, mode: str, op: str, args: argparse.Namespace,
                    seed: int) -> dict[str, float]:
    pids = [p.pid for p in cluster.procs.values()]
    value = os.urandom(args.value_size)
    start_at = time.time() + STARTUP_S
    jobs = [(cluster.urls, mode, op, args.duration, args.concurrency, args.keys, value, seed * 100 + k, start_at)
            for k in range(args.procs)]
    fwd0 = forwarded(await statuses(cluster))
    with multiprocessing.get_context("spawn").Pool(args.procs) as pool:
        # The client processes start (imports, ring) before the measured window opens at `start_at`.
        outs_f = asyncio.ensure_future(asyncio.to_thread(pool.map, _client_process, jobs))
        await asyncio.sleep(max(0.0, start_at - time.time()))
        cpu0 = sum(cpu_seconds(p) for p in pids)
        outs = await outs_f
        cpu1 = sum(cpu_seconds(p) for p in pids)
    fwd1 = forwarded(await statuses(cluster))
    lat = sorted(x for o in outs for x in o["lat"])
    n = len(lat)
    elapsed = max(o["elapsed"] for o in outs)
    return {
        "rps": n / elapsed,
        "p50_ms": lat[n // 2] * 1000 if n else float("nan"),
        "p99_ms": lat[min(n - 1, int(n * 0.99))] * 1000 if n else float("nan"),
        "cluster_cpu_ms_per_req": (cpu1 - cpu0) * 1000 / n if n else float("nan"),
        "client_cpu_s": sum(o["cpu"] for o in outs),
        "errors": float(sum(o["errors"] for o in outs)),
        "requests": float(n),
        "forwarded": float(fwd1 - fwd0),
    }


async def bench(args: argparse.Namespace) -> list[dict[str, dict[str, dict[str, float]]]]:
    rounds: list[dict[str, dict[str, dict[str, float]]]] = []
    with tempfile.TemporaryDirectory(prefix="ds-client-routing-") as tmp:
        cluster = LocalCluster(Path(tmp), args.nodes, {"log_level": "WARNING"})
        try:
            await cluster.start()
            await preload(cluster.urls, args.keys, os.urandom(args.value_size))
            for r in range(args.rounds):
                order = MODES if r % 2 == 0 else MODES[::-1]
                res: dict[str, dict[str, dict[str, float]]] = {m: {} for m in MODES}
                for op in ("put", "get"):
                    for mode in order:
                        f = await run_phase(cluster, mode, op, args, seed=r * 10 + MODES.index(mode))
                        res[mode][op] = f
                        print(f"round {r + 1} {op:3} {mode:6}: {f['rps']:7.0f} req/s  p50 {f['p50_ms']:6.2f} ms  "
                              f"p99 {f['p99_ms']:6.2f} ms  cluster CPU {f['cluster_cpu_ms_per_req']:.3f} ms/req  "
                              f"forwarded {f['forwarded']:.0f}  errors {f['errors']:.0f}", flush=True)
                rounds.append(res)
        finally:
            await cluster.close()
    return rounds


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=5)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=32, help="async workers per client process")
    p.add_argument("--procs", type=int, default=2, help="client processes")
    p.add_argument("--keys", type=int, default=5000)
    p.add_argument("--value-size", type=int, default=100)
    p.add_argument("--json", type=Path, help="write every round's figures here")
    args = p.parse_args()

    rounds = asyncio.run(bench(args))

    print(f"\n{args.nodes} nodes, N=3, R=W=2; {args.procs} client processes x {args.concurrency} workers, "
          f"{args.duration:g} s per phase, median of {args.rounds} rounds")
    print("| op | routing | req/s | p50 ms | p99 ms | cluster CPU ms/req | forwarded/req | errors |")
    print("|---|---|---|---|---|---|---|---|")
    for op in ("put", "get"):
        for mode in MODES:
            def med(k: str) -> float:
                return statistics.median(rd[mode][op][k] for rd in rounds)

            print(f"| {op} | {mode} | {med('rps'):,.0f} | {med('p50_ms'):.2f} | {med('p99_ms'):.2f} | "
                  f"{med('cluster_cpu_ms_per_req'):.3f} | {med('forwarded') / max(1.0, med('requests')):.2f} | "
                  f"{med('errors'):.0f} |")
    if args.json:
        args.json.write_text(json.dumps(rounds, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
