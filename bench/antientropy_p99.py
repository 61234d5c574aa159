"""Foreground latency with and without anti-entropy repairing, on a local 3-node cluster.

    .venv/bin/python bench/antientropy_p99.py [--rate 200] [--duration 15] [--missed 5000] [--keys 5000] [--trials 3]

Starts 3 real node processes (hinted handoff off, anti-entropy at its defaults unless --interval is given),
preloads --keys keys on all replicas, then drives an open-loop client at a fixed --rate (half GETs, half
PUTs of 100-byte values, over the preloaded keys, to n1 and n2; default quorums R=W=2). Latency is taken
from each request's *scheduled* start, so a stall counts against every request it delays.

Each trial kills n3, writes --missed keys without it (hinted handoff off, so only anti-entropy can repair
them), restarts n3 and runs the load from the moment n3 answers /health until every replica's Merkle
roots are equal (and at least --duration seconds). The control trial is the same with 0 missed keys,
so the restart itself (reconnects, n3 warming up) is in both; control and treatment alternate
--trials times and the medians are reported (the machine is shared: single runs are noisy).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness import Cluster, wait_for  # noqa: E402


def cpu_seconds(c: Cluster) -> float:
    """User + system CPU of the node processes so far (Linux /proc)."""
    total = 0
    for proc in c.procs.values():
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / os.sysconf("SC_CLK_TCK")


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


async def bounded(c: Cluster, jobs: list[tuple[str, str, bytes]], headers: dict[str, str]) -> None:
    sem = asyncio.Semaphore(32)

    async def one(nid: str, key: str, val: bytes) -> None:
        async with sem:
            status, _, body = await c.put(nid, key, val, headers)
            assert status == 204, (status, body)

    await asyncio.gather(*(one(*j) for j in jobs))


async def load(c: Cluster, keys: list[str], rate: float, until: Any, rng: random.Random) -> tuple[list[float], int]:
    """Open-loop load at `rate` req/s until `until()` is true. Returns latencies (ms) and error count."""
    lat: list[float] = []
    errors = 0
    tasks: set[asyncio.Task[None]] = set()
    loop = asyncio.get_running_loop()

    async def one(due: float, i: int) -> None:
        nonlocal errors
        nid = ("n1", "n2")[i % 2]
        key = rng.choice(keys)
        try:
            if i % 2:
                status, _, _ = await c.get(nid, key)
                ok = status in (200, 300)
            else:
                status, _, _ = await c.put(nid, key, rng.randbytes(100))
                ok = status == 204
        except Exception:  # noqa: BLE001 - counted
            ok = False
        lat.append((loop.time() - due) * 1000)
        errors += not ok

    start = loop.time()
    i = 0
    while not await until():
        due = start + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        t = asyncio.create_task(one(due, i))
        tasks.add(t)
        t.add_done_callback(tasks.discard)
        i += 1
    await asyncio.gather(*tasks)
    return lat, errors


async def load_and_poll(c: Cluster, keys: list[str], rate: float, done: Any, rng: random.Random,
                        watch: tuple[list[float], float] | None) -> tuple[list[float], int]:
    """Run the load until done(); meanwhile poll every node's /status every 0.5 s and, when `watch` is
    given, append the seconds from its start time to the first poll that finds all roots equal."""
    loop = asyncio.get_running_loop()

    async def poll() -> None:
        while True:
            equal = await roots_equal(c)
            if watch is not None and equal and not watch[0]:
                watch[0].append(loop.time() - watch[1])
            await asyncio.sleep(0.5)

    poller = asyncio.create_task(poll())

    async def until() -> bool:
        return bool(done())

    try:
        return await load(c, keys, rate, until, rng)
    finally:
        poller.cancel()


async def roots_equal(c: Cluster) -> bool:
    docs = [(await c.status(n))["antientropy"] for n in c.ids]
    if any(d["trees_built"] != d["trees_total"] for d in docs):
        return False
    roots = [{p: s["root"] for p, s in d["partitions"].items()} for d in docs]
    return all(r == roots[0] for r in roots[1:])


async def trial(c: Cluster, keys: list[str], missed: int, tag: int, args: argparse.Namespace,
                rng: random.Random) -> dict[str, Any]:
    """Kill n3, write `missed` keys without it, restart it, and load the cluster from the restart until
    the roots are equal and at least --duration seconds have passed."""
    loop = asyncio.get_running_loop()
    c.kill("n3")
    for nid in ("n1", "n2"):
        await wait_for(lambda nid=nid: c.sees(nid, "n3", False), 10, f"{nid} to see n3 down")
    names = [f"missed{tag}-{i}" for i in range(missed)]
    await bounded(c, [(("n1", "n2")[i % 2], k, rng.randbytes(100)) for i, k in enumerate(names)], {})
    before = (await c.status("n1"))["antientropy"]["totals"]
    c.start("n3")
    await c.wait_healthy("n3")
    restarted = loop.time()
    cpu0 = cpu_seconds(c)
    t_end = restarted + args.duration
    converged: list[float] = []
    lat, errors = await load_and_poll(
        c, keys, args.rate, lambda: bool(converged) and loop.time() >= t_end, rng, (converged, restarted)
    )
    cpu = cpu_seconds(c) - cpu0
    after = (await c.status("n1"))["antientropy"]["totals"]
    t3 = (await c.status("n3"))["antientropy"]["totals"]
    return {
        "missed": missed, "lat": lat, "cpu": cpu, "window": loop.time() - restarted, "errors": errors, "converged": converged[0],
        "n3_repaired": t3["keys_repaired"],
        "n1_walk_bytes": after["walk_bytes_sent"] + after["walk_bytes_received"]
        - before["walk_bytes_sent"] - before["walk_bytes_received"],
        "n3_walk_bytes": t3["walk_bytes_sent"] + t3["walk_bytes_received"],
        "n3_repair_bytes": t3["repair_bytes_sent"] + t3["repair_bytes_received"],
    }


async def main(args: argparse.Namespace) -> None:
    ae: dict[str, Any] = {}
    if args.interval:
        ae["exchange_interval_s"] = args.interval
    if args.rate_limit:
        ae["max_keys_per_sec"] = args.rate_limit
    settings: dict[str, Any] = {"handoff": {"enabled": False}}
    if ae:
        settings["antientropy"] = ae
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ds-ae-bench-") as tmp:
        c = Cluster(Path(tmp), 3, settings)
        try:
            await c.start_all()
            rng = random.Random(1)
            keys = [f"key{i}" for i in range(args.keys)]
            await bounded(c, [(c.ids[i % 3], k, rng.randbytes(100)) for i, k in enumerate(keys)],
                          {"X-Consistency-Level": "ALL"})
            await wait_for(lambda: roots_equal(c), 60, "roots equal after preload")
            # Control and treatment alternate, so drifting machine load hits both alike.
            for t in range(args.trials):
                for missed in (0, args.missed):
                    r = await trial(c, keys, missed, 2 * t + (missed > 0), args, rng)
                    results.append(r)
                    print(f"trial {t} missed={missed:>5}: p50 {pct(r['lat'], .5):6.2f} ms  "
                          f"p99 {pct(r['lat'], .99):7.2f} ms  node CPU {r['cpu']:5.2f}s/{r['window']:4.1f}s  converged {r['converged']:5.1f}s  "
                          f"n3 repaired {r['n3_repaired']:>5}  tree-walk bytes n3 {r['n3_walk_bytes']:>8} "
                          f"n1 {r['n1_walk_bytes']:>8}  repair bytes n3 {r['n3_repair_bytes']:>8}", flush=True)
        finally:
            await c.close()

    def summary(missed: int) -> tuple[float, float, float, float]:
        rs = [r for r in results if r["missed"] == missed]
        return (statistics.median(pct(r["lat"], .5) for r in rs), statistics.median(pct(r["lat"], .99) for r in rs),
                statistics.median(r["converged"] for r in rs), statistics.median(r["cpu"] for r in rs))

    print(f"\nforeground: {args.rate:.0f} req/s open loop (50% GET, 50% PUT, R=W=2, 100-byte values) over "
          f"{args.keys} keys, measured from n3's restart until all roots are equal (>= {args.duration:.0f} s); "
          f"medians of {args.trials} alternating trials")
    print(f"{'n3 restarts having missed':<28} {'p50 ms':>8} {'p99 ms':>8} {'roots equal after':>18} {'node CPU':>9}")
    base = summary(0)
    rep = summary(args.missed)
    print(f"{'0 writes (control)':<28} {base[0]:>8.2f} {base[1]:>8.2f} {base[2]:>16.1f} s {base[3]:>8.2f}s")
    print(f"{f'{args.missed} writes (AE repairing)':<28} {rep[0]:>8.2f} {rep[1]:>8.2f} {rep[2]:>16.1f} s {rep[3]:>8.2f}s")
    print(f"p99 ratio: {rep[1] / base[1]:.2f}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--duration", type=float, default=15.0)
    ap.add_argument("--keys", type=int, default=5000)
    ap.add_argument("--missed", type=int, default=5000)
    ap.add_argument("--interval", type=float, default=0.0, help="exchange_interval_s (0: the default)")
    ap.add_argument("--rate-limit", type=int, default=0, help="max_keys_per_sec (0: the default)")
    ap.add_argument("--trials", type=int, default=3)
    asyncio.run(main(ap.parse_args()))
