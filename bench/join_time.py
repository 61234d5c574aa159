"""How long a join takes: load K keys into a local 3-node cluster, add a 4th node, time the join.

    .venv/bin/python bench/join_time.py [--keys 100000]

Starts `dynamostore cluster --nodes 3` in a temporary directory, writes K keys (100-byte values, W=2),
starts n4, stages the join with `POST /admin/join`, commits it, and waits until every node has applied the
same epoch with no transfer pending. Prints the time from commit to done, the keys n4 received, and
checks a sample of keys through n4 at R=ALL from primaries only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
DS = str(ROOT / ".venv/bin/dynamostore")


async def load(base: str, keys: int) -> float:
    sem = asyncio.Semaphore(64)
    t0 = time.monotonic()
    async with aiohttp.ClientSession() as s:
        async def one(i: int) -> None:
            async with sem, s.put(f"{base}/kv/key{i:08d}", data=b"v" * 100, headers={"X-Write-Quorum": "2"}) as r:
                assert r.status == 204, r.status

        await asyncio.gather(*(one(i) for i in range(keys)))
    return time.monotonic() - t0


async def settled(s: aiohttp.ClientSession, urls: list[str]) -> tuple[bool, int]:
    views = set()
    for u in urls:
        async with s.get(f"{u}/status") as r:
            st = await r.json()
        m = st["membership"]
        views.add((st["ring"]["epoch"], bool(m["transfers_pending"])))
    (epoch, pending), = views if len(views) == 1 else ((0, True),)
    return (len(views) == 1 and not pending), epoch


async def main(args: argparse.Namespace) -> None:
    d = Path(tempfile.mkdtemp(prefix="ds-join-"))
    base = args.base_port
    urls = [f"http://127.0.0.1:{base + k}" for k in range(4)]
    (d / "s.toml").write_text('log_level = "WARNING"\n')
    cluster = subprocess.Popen([DS, "cluster", "--nodes", "3", "--data-dir", str(d / "data"), "--base-port", str(base),
                                "--settings", str(d / "s.toml")], stdout=subprocess.DEVNULL, start_new_session=True)
    n4 = None
    try:
        async with aiohttp.ClientSession() as s:
            for u in urls[:3]:
                for _ in range(100):
                    try:
                        async with s.get(f"{u}/health") as r:
                            if r.status == 200:
                                break
                    except aiohttp.ClientError:
                        await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)
            took = await load(urls[0], args.keys)
            print(f"loaded {args.keys} keys in {took:.1f}s")
            n4 = subprocess.Popen([DS, "node", "--config", str(d / "data/cluster.toml"), "--id", "n4",
                                   "--http-port", str(base + 3), "--rpc-port", str(base + 1003)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            await asyncio.sleep(2.0)
            member = {"id": "n4", "http_port": base + 3, "rpc_port": base + 1003}
            async with s.post(f"{urls[0]}/admin/join", json=member) as r:
                assert r.status == 200, await r.text()
            async with s.get(f"{urls[0]}/admin/plan") as r:
                plan = await r.json()
            t0 = time.monotonic()
            async with s.post(f"{urls[0]}/admin/commit", json={}) as r:
                assert r.status == 200, await r.text()
            while True:
                ok, epoch = await settled(s, urls)
                if ok:
                    break
                await asyncio.sleep(0.1)
            took = time.monotonic() - t0
            async with s.get(f"{urls[3]}/status") as r:
                st = await r.json()
            tr = st["transfers"]
            moved = sum(len(p) for t in plan["moves"].values() for p in t.values())
            print(f"join of n4: {took:.1f}s from commit to every node at epoch {epoch} with nothing pending")
            print(f"  ring slots moved: {moved}; keys streamed to n4: {tr['keys_received']} "
                  f"({tr['keys_received'] / took:.0f} keys/s)")
            bad = 0
            for i in range(0, args.keys, max(1, args.keys // 2000)):
                async with s.get(f"{urls[3]}/kv/key{i:08d}",
                                 headers={"X-Read-Quorum": "all", "X-Sloppy-Quorum": "false"}) as r:
                    bad += r.status != 200
            print(f"  sample read through n4 at R=ALL, primaries only: {bad} missing")
    finally:
        if n4 is not None:
            n4.send_signal(signal.SIGTERM)
            n4.wait(timeout=30)
        os.killpg(cluster.pid, signal.SIGINT)
        cluster.wait(timeout=60)
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--base-port", type=int, default=18401)
    asyncio.run(main(ap.parse_args()))
