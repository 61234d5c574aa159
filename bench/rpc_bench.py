"""Throughput and latency of the internal RPC: one client, many concurrent callers, echo handler.

By default the server runs in a child process (so client and server each get a core, as between
two nodes); `--inproc` puts both on one event loop. Each caller loops `call()` back to back, so
`--concurrency` is the number of requests in flight.

    .venv/bin/python bench/rpc_bench.py                      # 32 in flight, 5 s, asyncio loop
    .venv/bin/python bench/rpc_bench.py --uvloop             # both sides on uvloop
    .venv/bin/python bench/rpc_bench.py --http               # same load as one aiohttp POST per call
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from dynamostore.net.rpc import RpcClient, RpcServer

SECRET = b"bench-secret"


async def echo(method: str, payload: Any, peer: str) -> Any:
    return payload


def install_loop(use_uvloop: bool) -> None:
    if use_uvloop:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


# --------------------------------------------------------------------------- server side


async def serve(http: bool) -> None:
    """Child process: start a server on a free port, print it, run until stdin closes."""
    if http:
        from aiohttp import web

        async def handle(req: web.Request) -> web.Response:
            return web.Response(body=await req.read())

        app = web.Application()
        app.router.add_post("/rpc/{method}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
    else:
        server = RpcServer("bench-server", SECRET, echo, host="127.0.0.1", port=0)
        await server.start()
        port = server.port
    print(port, flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # parent closes stdin to stop us


# --------------------------------------------------------------------------- client side


async def drive(
    call: Any, concurrency: int, duration: float, warmup: float
) -> tuple[int, float, list[float], int]:
    """Run `concurrency` callers; return (calls in the measured window, its seconds, sampled
    latencies, all calls including warmup)."""
    loop = asyncio.get_running_loop()
    measure_from = loop.time() + warmup
    stop_at = measure_from + duration
    counts = [0] * concurrency
    totals = [0] * concurrency
    lats: list[float] = []

    async def caller(i: int) -> None:
        n = total = 0
        clock = time.perf_counter  # uvloop's loop.time() only has millisecond resolution
        offset = loop.time() - clock()
        begin, end = measure_from - offset, stop_at - offset
        now = clock()
        while now < end:
            t0 = now
            await call()
            now = clock()
            total += 1
            if t0 >= begin:
                n += 1
                if i % 4 == 0:  # sample latencies from a quarter of the callers
                    lats.append(now - t0)
        counts[i] = n
        totals[i] = total

    t = time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - t - warmup
    return sum(counts), elapsed, lats, sum(totals)


def cpu_seconds(pid: int) -> float | None:
    """User+system CPU seconds of process `pid` (Linux /proc; None elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


async def run_client(args: argparse.Namespace, port: int, server_pid: int | None = None) -> None:
    addr = ("127.0.0.1", port)
    def server_cpu() -> float | None:
        return cpu_seconds(server_pid) if server_pid is not None else None

    cpu0 = (time.perf_counter(), time.process_time(), server_cpu())
    payload = {"key": b"k" * 16, "value": os.urandom(args.payload), "ctx": [["n1", 3], ["n2", 7]]}
    if args.http:
        import aiohttp
        import msgpack

        body = msgpack.packb(payload, use_bin_type=True)
        conn = aiohttp.TCPConnector(limit=args.concurrency)
        async with aiohttp.ClientSession(connector=conn) as session:
            url = f"http://127.0.0.1:{port}/rpc/echo"

            async def http_call() -> Any:
                async with session.post(url, data=body, timeout=aiohttp.ClientTimeout(total=5)) as r:
                    return msgpack.unpackb(await r.read(), raw=False)

            n, secs, lats, total = await drive(http_call, args.concurrency, args.duration, args.warmup)
            cpu = (time.perf_counter(), time.process_time(), server_cpu())
    else:
        client = RpcClient("bench-client", SECRET)

        def rpc_call() -> Any:
            return client.call(addr, "echo", payload, timeout=5.0)

        n, secs, lats, total = await drive(rpc_call, args.concurrency, args.duration, args.warmup)
        cpu = (time.perf_counter(), time.process_time(), server_cpu())
        await client.close()
    lats.sort()
    kind = "aiohttp POST per call" if args.http else "dynamostore rpc"
    loop_name = "uvloop" if args.uvloop else "asyncio"
    where = "in-process" if args.inproc else "server in child process"
    print(f"{kind} | {loop_name} | {where} | {args.concurrency} in flight | {args.payload} B value")
    print(f"  {n} calls in {secs:.2f} s = {n / secs:,.0f} calls/s")
    wall = cpu[0] - cpu0[0]
    ccpu = cpu[1] - cpu0[1]
    usage = f"  cpu: client {100 * ccpu / wall:.0f}% = {1e6 * ccpu / total:.1f} us/call"
    if cpu[2] is not None and cpu0[2] is not None:
        scpu = cpu[2] - cpu0[2]
        usage += f"; server {100 * scpu / wall:.0f}% = {1e6 * scpu / total:.1f} us/call"
    print(usage + (" (client and server together)" if args.inproc else ""))
    if lats:
        q = statistics.quantiles(lats, n=100)
        print(f"  latency p50 {q[49] * 1e3:.2f} ms  p99 {q[98] * 1e3:.2f} ms  max {lats[-1] * 1e3:.2f} ms")


async def run_inproc(args: argparse.Namespace) -> None:
    server = RpcServer("bench-server", SECRET, echo, host="127.0.0.1", port=0)
    await server.start()
    try:
        await run_client(args, server.port)
    finally:
        await server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", type=int, default=32, help="calls in flight (default 32)")
    ap.add_argument("--duration", type=float, default=5.0, help="measured seconds (default 5)")
    ap.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first (default 1)")
    ap.add_argument("--payload", type=int, default=100, help="value bytes per request (default 100)")
    ap.add_argument("--uvloop", action="store_true", help="run both sides on uvloop")
    ap.add_argument("--inproc", action="store_true", help="server on the client's event loop")
    ap.add_argument("--http", action="store_true", help="baseline: one aiohttp POST per call")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    install_loop(args.uvloop)
    if args.serve:
        asyncio.run(serve(args.http))
        return
    if args.inproc:
        if args.http:
            ap.error("--http needs the child-process server")
        asyncio.run(run_inproc(args))
        return
    cmd = [sys.executable, os.path.abspath(__file__), "--serve"]
    cmd += ["--uvloop"] if args.uvloop else []
    cmd += ["--http"] if args.http else []
    child = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        asyncio.run(run_client(args, port, child.pid))
    finally:
        assert child.stdin is not None
        child.stdin.close()
        try:
            child.wait(timeout=5)
        except subprocess.TimeoutExpired:
            child.kill()


if __name__ == "__main__":
    main()
