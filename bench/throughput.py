"""Throughput and tail latency of a local 3-node cluster under wrk, side by side with the etcd anchor.

    .venv/bin/python bench/throughput.py [--duration 10] [--connections 32] [--threads 2] [--no-etcd] [--spread]
                                         [--rounds K] [--tls | --auth] [--compare-tls] [--console]
                                         [--writes careful|blind|both] [--lmdb-sync nometasync|nosync]
                                         [--compare-sync]

Starts `dynamostore cluster --nodes 3` (N=3, R=W=2) in a temporary directory, preloads the 10,000 keys,
then runs wrk with the same settings as ../shared/anchors (random 100-byte puts, random gets, 10k keys,
-t2 -c32) against node n1; then, unless --no-etcd, starts the 3-member etcd anchor and runs its scripts
with the same wrk settings. Prints one table with throughput, p50, p99 and the ratios.

--spread drives every node of both systems at once instead (one wrk -t1 per node, the 32 connections split
11/11/10), as clients of a leaderless store do (any node coordinates any key; Riak puts a load balancer in
front of all nodes, Cassandra's drivers pick coordinators across the cluster). etcd gets the same treatment.
--rounds K runs both systems K times, alternating (each round a fresh cluster and fresh etcd members), prints
every round, and reports the median of each figure over the rounds: on a shared machine single runs of either
system vary by about 10%, so one pair of runs can move the ratio by as much.
--console measures what the operator console costs instead (no etcd): each round runs dynamostore twice, with
the console closed and open (the order alternates between rounds), "open" meaning a poller that asks node 1
exactly what the page at /ui asks, at the page's rate (/status and /status/history?since=N every 2 s) during
the whole run. It reports the medians of both and their ratio.
--tls runs the cluster as `dynamostore cluster --tls` does: HTTPS to the client port, mutual TLS between the
nodes, and every request carrying an API token (wrk sends it). --auth: tokens only, no TLS (the token check's
own cost). --compare-tls runs dynamostore plain and with --tls, alternating, instead of against etcd. Every
dynamostore run also reports the CPU the whole cluster spent per request (steadier than req/s on a shared
machine).
--writes chooses how puts are written. "careful" (the default) writes as a careful client does: each wrk
connection is one writer that keeps the X-Context of its last read or write of each key and sends it with its
next write of that key, reading a key it has never seen first (wrk/ds_put_careful.lua; wrk then runs one thread
per connection, so each thread's responses match its requests). Its req/s counts those reads too; the writes
per second are reported apart. etcd's counterpart is a compare-and-swap on the key's mod_revision
(wrk/etcd_put_careful.lua). "blind" is the anchor's workload: puts without a context, each one concurrent with
everything, so they pile up siblings (wrk/ds_put.lua, etcd_put.lua). "both" runs careful then blind on the same
cluster. After each dynamostore put run every key is read (R=2) and the table reports its sibling count (mean,
p50, p99, max, keys with more than one).
--lmdb-sync sets the nodes' `[storage] lmdb_sync` (default: the node's, nometasync, safe across power loss;
nosync is the faster mode an OS crash may corrupt). --compare-sync runs dynamostore in both modes, alternating,
instead of against etcd: what the safe mode costs. etcd rows also report the CPU its members spent per request.
Needs wrk and etcd from Debian's packages (apt-get install -y wrk etcd-server etcd-client).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import ssl
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ANCHORS = ROOT.parent / "shared" / "anchors"


Results = dict[str, dict[str, float]]  # op -> figure (rps, p50, p99, non2xx, sock_errors) -> value
# Op names in results and tables: "put" is the blind put (the anchor's workload), "put careful" the careful one.
OPS = ("put careful", "put", "get")
OP_LABEL = {"put careful": "put careful", "put": "put blind", "get": "get"}


def parse_wrk(out: str) -> dict[str, float]:
    def ms(text: str) -> float:
        m = re.match(r"([\d.]+)(us|ms|s)", text)
        assert m, text
        v, unit = float(m.group(1)), m.group(2)
        return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v

    res: dict[str, float] = {}
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    res["rps"] = float(rps.group(1)) if rps else 0.0
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}(?:\.000)?%\s+(\S+)", out, re.M)
        res[f"p{pct}"] = ms(m.group(1)) if m else float("nan")
    errs = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    res["non2xx"] = float(errs.group(1)) if errs else 0.0
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    res["sock_errors"] = float(sum(int(x) for x in sock.groups())) if sock else 0.0
    careful = re.search(r"^careful: (.*)$", out, re.M)  # the careful scripts' done() line: "name N name N ..."
    if careful:
        words = careful.group(1).split()
        for name, n in zip(words[::2], words[1::2]):
            res[f"careful_{name.replace('-', '_')}"] = float(n)
    return res


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (the node processes of a `dynamostore cluster`)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return out


def wrk(urls: list[str], script: Path, args: argparse.Namespace, token: str | None = None,
        pids: list[int] | None = None, writers: bool = False) -> dict[str, float]:
    """One wrk against urls[0] (-t threads, -c connections); with several urls (--spread), one wrk -t1 per url
    at the same time, the connections split between them. Throughput is the sum; p50 and p99 are the largest
    of the runs' own (an upper bound: no more than 1% of all requests can be slower than every run's p99).
    `writers`: one wrk thread per connection (the careful scripts keep per-writer state in their thread)."""
    if len(urls) == 1:
        threads = args.connections if writers else args.threads
        cmds = [["wrk", f"-t{threads}", f"-c{args.connections}", f"-d{args.duration}s", "--latency",
                 "-s", str(script), urls[0]]]
    else:
        share = [args.connections // len(urls) + (i < args.connections % len(urls)) for i in range(len(urls))]
        cmds = [["wrk", f"-t{c if writers else 1}", f"-c{c}", f"-d{args.duration}s", "--latency", "-s", str(script),
                 u] for u, c in zip(urls, share)]
    env = {**os.environ, "DYNAMOSTORE_TOKEN": token} if token else None  # the wrk scripts send it
    cpu0 = sum(cpu_seconds(p) for p in pids or [])
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for c in cmds]
    runs = []
    for p in procs:
        out, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"wrk failed: {err.strip()}")
        if args.verbose:
            print(out)
        runs.append(parse_wrk(out))
    res = {k: sum(r[k] for r in runs) for k in ("rps", "non2xx", "sock_errors")}
    res.update({k: max(r[k] for r in runs) for k in ("p50", "p99")})
    for k in sorted({k for r in runs for k in r if k.startswith("careful_")}):
        res[k] = sum(r.get(k, 0.0) for r in runs) / args.duration   # per second
    if pids:  # CPU the whole cluster spent per request: steadier than req/s on a shared machine
        res["cpu_us"] = (sum(cpu_seconds(p) for p in pids) - cpu0) / max(1.0, res["rps"] * args.duration) * 1e6
    return res


def wait_http(url: str, timeout: float = 30, ctx: ssl.SSLContext | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1, context=ctx):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not answer within {timeout}s")


def preload(base: str, ctx: ssl.SSLContext | None = None, token: str | None = None) -> None:
    """Write each of the 10k keys once (so gets find values), 64 at a time."""
    import asyncio

    import aiohttp

    async def go() -> None:
        sem = asyncio.Semaphore(64)
        headers = {"Authorization": f"Bearer {token}"} if token else None
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx if ctx else True),
                                         headers=headers) as s:
            async def one(i: int) -> None:
                async with sem, s.put(f"{base}/kv/key{i:08d}", data=b"v" * 100) as r:
                    assert r.status == 204, r.status

            await asyncio.gather(*(one(i) for i in range(1, 10001)))

    asyncio.run(go())


def sibling_census(base: str, ctx: ssl.SSLContext | None = None, token: str | None = None) -> dict[str, float]:
    """Read each of the 10k keys (the cluster's default R) and count its live values (X-Siblings on a 300)."""
    import asyncio

    import aiohttp

    counts: list[int] = []

    async def go() -> None:
        sem = asyncio.Semaphore(64)
        headers = {"Authorization": f"Bearer {token}"} if token else None
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx if ctx else True),
                                         headers=headers) as s:
            async def one(i: int) -> None:
                async with sem, s.get(f"{base}/kv/key{i:08d}") as r:
                    await r.read()
                    counts.append(int(r.headers.get("X-Siblings", "1")) if r.status in (200, 300) else 0)

            await asyncio.gather(*(one(i) for i in range(1, 10001)))

    asyncio.run(go())
    counts.sort()
    return {"sib_mean": statistics.fmean(counts), "sib_p50": float(counts[len(counts) // 2]),
            "sib_p99": float(counts[min(len(counts) - 1, len(counts) * 99 // 100)]), "sib_max": float(counts[-1]),
            "sib_multi": float(sum(1 for c in counts if c > 1))}


def put_ops(args: argparse.Namespace) -> list[str]:
    return {"careful": ["put careful"], "blind": ["put"], "both": ["put careful", "put"]}[args.writes]


CONSOLE_POLL_S = 2.0  # dynamostore/api/ui/app.js POLL_MS


def node_pid(data_dir: Path, nid: str) -> int:
    out = subprocess.run(["pgrep", "-f", f"{data_dir}/cluster.toml --id {nid}$"], capture_output=True, text=True)
    return int(out.stdout.split()[0])


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def poll_cost(base: str, pid: int, polls: int = 200) -> float:
    """Node CPU (ms) one console poll costs: `polls` polls back to back, less what the idle node spends over
    the same time (heartbeats, anti-entropy). Measured by the node's own CPU clock, which a busy shared machine
    disturbs far less than it disturbs throughput."""
    c0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(3.0)
    idle_rate = (cpu_seconds(pid) - c0) / (time.monotonic() - t0)
    seq = 0
    c0, t0 = cpu_seconds(pid), time.monotonic()
    for _ in range(polls):
        with urllib.request.urlopen(base + "/status", timeout=10) as r:
            r.read()
        with urllib.request.urlopen(f"{base}/status/history?since={seq}", timeout=10) as r:
            seq = json.loads(r.read())["seq"] - 1  # one new sample per poll, as the page gets
    used = cpu_seconds(pid) - c0 - idle_rate * (time.monotonic() - t0)
    return max(0.0, used) * 1000 / polls


class _Closed:
    polls = 0

    def __enter__(self) -> _Closed:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class ConsolePoller:
    """What an open console asks its node: /status and the history samples it does not have, every 2 s."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.stop = threading.Event()
        self.polls = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        seq = 0
        while not self.stop.is_set():
            started = time.monotonic()
            with urllib.request.urlopen(self.base + "/status", timeout=10) as r:
                r.read()
            with urllib.request.urlopen(f"{self.base}/status/history?since={seq}", timeout=10) as r:
                seq = json.loads(r.read())["seq"]
            self.polls += 1
            self.stop.wait(max(0.0, CONSOLE_POLL_S - (time.monotonic() - started)))

    def __enter__(self) -> ConsolePoller:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=15)


def bench_dynamostore(args: argparse.Namespace, console: bool = False, tls: bool = False,
                      lmdb_sync: str | None = None) -> Results:
    d = Path(tempfile.mkdtemp(prefix="ds-bench-"))
    port = args.base_port
    settings = d / "settings.toml"
    text = "log_level = \"WARNING\"\n"
    lmdb_sync = lmdb_sync or args.lmdb_sync
    if lmdb_sync:
        text += f"[storage]\nlmdb_sync = \"{lmdb_sync}\"\n"
    token: str | None = None
    if args.auth and not tls:  # tokens without TLS: a bootstrap token of our own
        from dynamostore.cli.security import new_bootstrap_token

        token, sha = new_bootstrap_token()
        text += f"[security]\nauth = true\nbootstrap_token_sha256 = \"{sha}\"\n"
    settings.write_text(text)
    proc = subprocess.Popen(
        [str(ROOT / ".venv/bin/dynamostore"), "cluster", "--nodes", "3", "--data-dir", str(d / "data"),
         "--base-port", str(port), "--settings", str(settings)] + (["--tls"] if tls else []),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        scheme, ctx = "http", None
        if tls:
            scheme = "https"
            deadline = time.monotonic() + 30
            while not (d / "data" / "admin.token").exists():  # written before the nodes start
                if time.monotonic() > deadline:
                    raise SystemExit("the cluster wrote no admin token")
                time.sleep(0.05)
            ctx = ssl.create_default_context(cafile=str(d / "data" / "certs" / "ca.crt"))
            token = (d / "data" / "admin.token").read_text().strip()
        for k in range(3):
            wait_http(f"{scheme}://127.0.0.1:{port + k}/health", ctx=ctx)
        pids = children(proc.pid)
        base = f"{scheme}://127.0.0.1:{port}"
        urls = [f"{scheme}://127.0.0.1:{port + k}" for k in range(3 if args.spread else 1)]
        time.sleep(1.0)  # let heartbeats settle so no request is routed around a node still starting
        preload(base, ctx, token)
        # gets first, while every key holds one value (blind puts then add siblings, as they must)
        if not args.console:
            res = {"get": wrk(urls, HERE / "wrk/ds_get.lua", args, token, pids)}
            for op in put_ops(args):
                careful = op == "put careful"
                res[op] = wrk(urls, HERE / ("wrk/ds_put_careful.lua" if careful else "wrk/ds_put.lua"), args, token,
                              pids, writers=careful)
                res[op].update(sibling_census(base, ctx, token))
            return res
        n1 = node_pid(d / "data", "n1")
        res = {}
        with ConsolePoller(base) if console else _Closed() as poller:
            for op in ("get", "put"):
                cpu0 = cpu_seconds(n1)
                res[op] = wrk(urls, HERE / f"wrk/ds_{op}.lua", args, token, pids)
                # node 1's CPU per request while wrk ran (its own requests, the forwarded ones, the console's)
                res[op]["n1_cpu_ms"] = (cpu_seconds(n1) - cpu0) * 1000 / max(1.0, res[op]["rps"] * args.duration)
        if console:
            print(f"(console open: {poller.polls} polls of /status and /status/history)")
        res["console"] = {"poll_cpu_ms": poll_cost(base, n1)}
        return res
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=30)
        shutil.rmtree(d, ignore_errors=True)


def bench_etcd(args: argparse.Namespace) -> Results:
    d = Path(tempfile.mkdtemp(prefix="etcd-bench-"))
    subprocess.run(["bash", str(ANCHORS / "etcd_cluster.sh"), str(d)], check=True, capture_output=True)
    try:
        urls = [f"http://127.0.0.1:{22379 + 2 * k}" for k in range(3 if args.spread else 1)]
        pids = [int(p) for p in (d / "pids").read_text().split()]
        res = {"get": wrk(urls, ANCHORS / "etcd_get.lua", args, pids=pids)}
        for op in put_ops(args):
            careful = op == "put careful"
            res[op] = wrk(urls, HERE / "wrk/etcd_put_careful.lua" if careful else ANCHORS / "etcd_put.lua", args,
                          pids=pids, writers=careful)
        return res
    finally:
        for p in (d / "pids").read_text().split():
            try:
                os.kill(int(p), signal.SIGTERM)
            except ProcessLookupError:
                pass
        time.sleep(1)
        shutil.rmtree(d, ignore_errors=True)


def median_results(rounds: list[Results]) -> Results:
    """Each figure of each op: its median over the rounds."""
    return {op: {k: statistics.median(r[op][k] for r in rounds) for k in rounds[0][op]} for op in rounds[0]}


def print_table(title: str, systems: list[tuple[str, Results]], ratios: bool = True, against: str = "etcd") -> None:
    print(f"\n{title}")
    print(f"{'system':<24}{'op':<13}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'cluster CPU us/req':>20}")
    for name, res in systems:
        for op in (o for o in OPS if o in res):
            r = res[op]
            cpu = f"{r['cpu_us']:>20.0f}" if "cpu_us" in r else ""
            print(f"{name:<24}{OP_LABEL[op]:<13}{r['rps']:>10.0f}{r['p50']:>9.2f}{r['p99']:>9.2f}"
                  f"{r['non2xx'] + r['sock_errors']:>8.0f}{cpu}")
    for name, res in systems:
        for op in (o for o in OPS if o in res):
            r = res[op]
            if "careful_writes" in r:  # req/s above counts the reads-before-write too
                extra = "".join(f", {r[k]:.0f} {k[8:].replace('_', ' ')}/s" for k in ("careful_conflicts",
                                                                                   "careful_failed_writes") if k in r)
                print(f"{name} {OP_LABEL[op]}: {r['careful_writes']:.0f} writes/s "
                      f"+ {r.get('careful_reads_before_write', 0):.0f} reads-before-write/s{extra}")
            if "sib_mean" in r:
                print(f"{name} after {OP_LABEL[op]}: siblings per key mean {r['sib_mean']:.2f}, p50 {r['sib_p50']:.0f}, "
                      f"p99 {r['sib_p99']:.0f}, max {r['sib_max']:.0f}; {r['sib_multi']:.0f} of 10000 keys with more "
                      "than one")
    if len(systems) == 2 and ratios and against in ("TLS", "nosync"):
        (_, plain), (_, tls) = systems
        for op in (o for o in OPS if o in plain and o in tls):
            cpu = (f", cluster CPU per request x{tls[op]['cpu_us'] / plain[op]['cpu_us']:.2f}"
                   if "cpu_us" in tls[op] and plain[op].get("cpu_us") else "")
            what, base = ("TLS+tokens", "plain") if against == "TLS" else ("nometasync", "nosync")
            print(f"{what} {OP_LABEL[op]}: throughput x{tls[op]['rps'] / plain[op]['rps']:.2f} of {base}{cpu}, "
                  f"p99 {tls[op]['p99']:.2f} ms vs {plain[op]['p99']:.2f} ms")
    elif len(systems) == 2 and ratios:
        (_, ds), (_, etcd) = systems
        for op in (o for o in OPS if o in ds and o in etcd):
            print(f"ratio {OP_LABEL[op]}: throughput x{ds[op]['rps'] / etcd[op]['rps']:.2f}, "
                  f"p99 {ds[op]['p99']:.2f} ms vs {etcd[op]['p99']:.2f} ms")


def console_cost(args: argparse.Namespace, title: str) -> int:
    closed: list[Results] = []
    opened: list[Results] = []
    for k in range(args.rounds):
        for console in ((False, True) if k % 2 == 0 else (True, False)):
            (opened if console else closed).append(bench_dynamostore(args, console=console))
        print_table(f"round {k + 1} of {args.rounds}: {title}",
                    [("console closed", closed[-1]), ("console open", opened[-1])], ratios=False)
    c, o = median_results(closed), median_results(opened)
    print_table(f"medians of {args.rounds} alternating rounds: {title}", [("console closed", c), ("console open", o)],
                ratios=False)
    for op in ("put", "get"):
        per_round = ", ".join(f"{oo[op]['rps'] / cc[op]['rps']:.3f}" for oo, cc in zip(opened, closed))
        print(f"console open / closed, {op}: throughput x{o[op]['rps'] / c[op]['rps']:.3f} (per round: {per_round}); "
              f"node 1 CPU per request {c[op]['n1_cpu_ms']:.3f} ms closed, {o[op]['n1_cpu_ms']:.3f} ms open")
    polls = [r["console"]["poll_cpu_ms"] for r in closed + opened]
    cost = statistics.median(polls)
    print(f"one console poll (/status + /status/history) costs node 1 {cost:.2f} ms of CPU (median of {len(polls)} "
          f"measurements of 200 polls: {', '.join(f'{x:.2f}' for x in polls)}), i.e. {cost / CONSOLE_POLL_S:.2f} ms/s")
    print(f"  = {cost / CONSOLE_POLL_S / 10:.3f}% of one core, the most a node's event loop can use")
    for op in ("put", "get"):
        # the requests/s the console's CPU would have served: against what node 1 can serve on one core, and
        # against what it served in this run (an upper bound when node 1 was not CPU-bound: a shared machine)
        equiv = cost / CONSOLE_POLL_S / c[op]["n1_cpu_ms"]
        print(f"  {op}: an open console takes the CPU of {equiv:.2f} requests/s: "
              f"{equiv * c[op]['n1_cpu_ms'] / 10:.3f}% "
              f"of node 1's capacity ({1000 / c[op]['n1_cpu_ms']:.0f} requests/s of CPU), "
              f"{equiv / c[op]['rps'] * 100:.2f}% of the {c[op]['rps']:.0f} requests/s it served here")
    return 0


def side_by_side(args: argparse.Namespace, title: str, modes: tuple[tuple[str, str], tuple[str, str]],
                 run: Callable[[str], Results], alternate: bool, against: str) -> int:
    """dynamostore in two modes ((json key, label) each), one run of each per round on a fresh cluster, the
    order swapped every other round when `alternate`; prints every round and the medians against the first."""
    (key_a, label_a), (key_b, label_b) = modes
    got: dict[str, list[Results]] = {key_a: [], key_b: []}
    for k in range(args.rounds):
        for key in ((key_b, key_a) if alternate and k % 2 else (key_a, key_b)):
            got[key].append(run(key))
        if args.rounds > 1:
            print_table(f"round {k + 1} of {args.rounds}: {title}",
                        [(label_a, got[key_a][-1]), (label_b, got[key_b][-1])], against=against)
    if args.rounds > 1:
        title = f"medians of {args.rounds} alternating rounds: {title}"
    med = [(label_a, median_results(got[key_a])), (label_b, median_results(got[key_b]))]
    print_table(title, med, against=against)
    if args.json:
        args.json.write_text(json.dumps({**got, "medians": dict(med)}, indent=2))
    return 0


def compare_tls(args: argparse.Namespace, title: str) -> int:
    """Plain and TLS (with tokens) alternating, each round a fresh cluster: the cost of TLS, side by side."""
    return side_by_side(args, title, (("plain", "dynamostore plain"), ("tls", "dynamostore TLS+tokens")),
                        lambda mode: bench_dynamostore(args, tls=mode == "tls"), alternate=False, against="TLS")


def compare_sync(args: argparse.Namespace, title: str) -> int:
    """dynamostore with lmdb_sync = nosync (the old mode) and nometasync (the safe default), alternating, each
    round a fresh cluster: what the safe mode costs, side by side."""
    return side_by_side(args, title, (("nosync", "dynamostore nosync"), ("nometasync", "dynamostore nometasync")),
                        lambda mode: bench_dynamostore(args, lmdb_sync=mode), alternate=True, against="nosync")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--base-port", type=int, default=18101)
    ap.add_argument("--no-etcd", action="store_true")
    ap.add_argument("--spread", action="store_true",
                    help="drive all three nodes (and all three etcd members) at once, one wrk -t1 each, the "
                         "connections split between them, instead of one wrk against the first")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run both systems this many times, alternating, and report the medians")
    ap.add_argument("--console", action="store_true",
                    help="console closed against open (a poller asking what the /ui page asks), no etcd")
    ap.add_argument("--tls", action="store_true",
                    help="HTTPS, mutual TLS between nodes and a token on every request (dynamostore cluster --tls)")
    ap.add_argument("--auth", action="store_true", help="a token on every request, without TLS")
    ap.add_argument("--compare-tls", action="store_true",
                    help="dynamostore without and with --tls, alternating, instead of against etcd")
    ap.add_argument("--json", type=Path,
                    help="with --compare-tls or --compare-sync: also write every round and the medians here")
    ap.add_argument("--writes", choices=("careful", "blind", "both"), default="careful",
                    help="careful: each write carries its writer's last context of the key (default); blind: no "
                         "context (the anchor's workload); both: careful, then blind")
    ap.add_argument("--lmdb-sync", choices=("nometasync", "nosync"), default=None,
                    help="the nodes' [storage] lmdb_sync (default: the node default, nometasync)")
    ap.add_argument("--compare-sync", action="store_true",
                    help="dynamostore with lmdb_sync nosync and nometasync, alternating, instead of against etcd")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    if args.rounds < 1:
        print("--rounds must be at least 1", file=sys.stderr)
        return 2
    if not shutil.which("wrk"):
        print("wrk is not installed: apt-get install -y wrk", file=sys.stderr)
        return 2
    where = "spread over all 3 nodes/members (one wrk -t1 each)" if args.spread else f"-t{args.threads}, node 1 of 3"
    title = f"wrk -c{args.connections} -d{args.duration}s {where}, 100-byte values, 10k keys, {args.writes} writes"
    if args.lmdb_sync:
        title += f", lmdb_sync {args.lmdb_sync}"
    if args.console:
        return console_cost(args, title)
    if args.compare_tls:
        return compare_tls(args, title)
    if args.compare_sync:
        return compare_sync(args, title)
    ds_rounds: list[Results] = []
    etcd_rounds: list[Results] = []
    for k in range(args.rounds):
        ds_rounds.append(bench_dynamostore(args, tls=args.tls))
        if not args.no_etcd:
            etcd_rounds.append(bench_etcd(args))
        if args.rounds > 1:
            print_table(f"round {k + 1} of {args.rounds}: {title}",
                        [("dynamostore N3 R2 W2", ds_rounds[-1])] + ([("etcd 3 members", etcd_rounds[-1])]
                                                                     if etcd_rounds else []))
    if args.rounds > 1:
        title = f"medians of {args.rounds} alternating rounds: {title}"
    print_table(title, [("dynamostore N3 R2 W2", median_results(ds_rounds))]
                + ([("etcd 3 members", median_results(etcd_rounds))] if etcd_rounds else []))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
