"""The async HTTP client of `python -m bench.rw` and the closed-loop workload runner.

`Client` sends GET/PUT with per-request quorum headers to a chosen coordinator and times each request.
`run_workload` drives `concurrency` closed-loop workers through one seeded `Workload` for a fixed time
and returns latency percentiles per operation. The client keeps the last `X-Context` it saw per key and
sends it with the next write, as Riak clients do: blind writes would each add a sibling under DVVs.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp

from bench.rw.workload import Op, OpKind, Workload, key_name, value_for

PERCENTILES: tuple[tuple[str, float], ...] = (("p50", 50.0), ("p95", 95.0), ("p99", 99.0), ("p99.9", 99.9))


@dataclass(frozen=True, slots=True)
class Quorum:
    r: int
    w: int
    sloppy: bool = True

    @property
    def label(self) -> str:
        return f"R{self.r}W{self.w}" + ("" if self.sloppy else "-strict")


@dataclass(frozen=True, slots=True)
class Reply:
    ok: bool
    status: int  # 0: no HTTP answer (connection refused/reset, client timeout)
    latency_s: float
    context: str | None = None
    values: tuple[bytes, ...] = ()  # GET: the value, or every sibling; empty for 404 and writes
    error: str | None = None


class Client:
    """Requests to the cluster's HTTP API; `live` is the set of coordinators it may route to."""

    def __init__(self, urls: list[str], timeout_ms: int = 2000, connections: int = 64) -> None:
        self.urls = urls
        self.timeout_ms = timeout_ms
        self.live: list[int] = list(range(len(urls)))
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Client:
        conn = aiohttp.TCPConnector(limit=self._connections)
        # Client-side timeout well above the server's X-Timeout-Ms: the server must answer 503 itself.
        self._session = aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=self.timeout_ms / 1000 + 5))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    def coordinator(self, n: int) -> int:
        """The n-th coordinator in round robin over the live nodes (deterministic for a given n)."""
        return self.live[n % len(self.live)]

    def _headers(self, q: Quorum) -> dict[str, str]:
        return {
            "X-Read-Quorum": str(q.r),
            "X-Write-Quorum": str(q.w),
            "X-Sloppy-Quorum": "true" if q.sloppy else "false",
            "X-Timeout-Ms": str(self.timeout_ms),
        }

    async def get(self, node: int, key: str, q: Quorum) -> Reply:
        assert self._session is not None, "use the client as an async context manager"
        headers = {**self._headers(q), "Accept": "application/json"}
        start = time.perf_counter()
        try:
            async with self._session.get(f"{self.urls[node]}/kv/{quote(key, safe='')}", headers=headers) as r:
                body = await r.read()
                lat = time.perf_counter() - start
                ctx = r.headers.get("X-Context")
                if r.status == 200:
                    return Reply(True, 200, lat, ctx, (body,))
                if r.status == 300:
                    sibs = tuple(base64.b64decode(s["value"]) for s in json.loads(body)["siblings"])
                    return Reply(True, 300, lat, ctx, sibs)
                if r.status == 404:
                    return Reply(True, 404, lat, ctx)
                return Reply(False, r.status, lat, error=_reason(body))
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            return Reply(False, 0, time.perf_counter() - start, error=type(exc).__name__)

    async def put(self, node: int, key: str, value: bytes, q: Quorum, context: str | None = None) -> Reply:
        assert self._session is not None, "use the client as an async context manager"
        headers = {**self._headers(q), "Content-Type": "application/octet-stream"}
        if context:
            headers["X-Context"] = context
        start = time.perf_counter()
        try:
            async with self._session.put(f"{self.urls[node]}/kv/{quote(key, safe='')}", data=value,
                                         headers=headers) as r:
                body = await r.read()
                lat = time.perf_counter() - start
                if r.status in (200, 204):
                    return Reply(True, r.status, lat, r.headers.get("X-Context"))
                return Reply(False, r.status, lat, error=_reason(body))
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            return Reply(False, 0, time.perf_counter() - start, error=type(exc).__name__)


def _reason(body: bytes) -> str:
    try:
        doc: dict[str, Any] = json.loads(body)
        return str(doc.get("error", "error"))
    except ValueError:
        return "error"


def percentiles(latencies_s: list[float]) -> dict[str, float]:
    """Nearest-rank percentiles in milliseconds (p99.9 needs >= 1000 samples to mean much)."""
    if not latencies_s:
        return {name: float("nan") for name, _ in PERCENTILES} | {"mean": float("nan")}
    xs = sorted(latencies_s)
    out: dict[str, float] = {}
    for name, p in PERCENTILES:
        rank = max(1, -(-len(xs) * p // 100))  # ceil(n * p / 100)
        out[name] = round(xs[int(rank) - 1] * 1000, 3)
    out["mean"] = round(sum(xs) / len(xs) * 1000, 3)
    return out


@dataclass
class OpStats:
    ok: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)

    def add(self, reply_ok: bool, latency: float) -> None:
        if reply_ok:
            self.ok += 1
            self.latencies.append(latency)
        else:
            self.errors += 1

    def summary(self) -> dict[str, Any]:
        return {"ok": self.ok, "errors": self.errors, "latency_ms": percentiles(self.latencies)}


class ContextCache:
    """The last X-Context seen per key: the next write to that key supersedes what the client saw."""

    def __init__(self) -> None:
        self._ctx: dict[str, str] = {}

    def get(self, key: str) -> str | None:
        return self._ctx.get(key)

    def see(self, key: str, ctx: str | None) -> None:
        if ctx:
            self._ctx[key] = ctx


async def execute(client: Client, op: Op, n: int, q: Quorum, seed: int, value_size: int,
                  contexts: ContextCache) -> tuple[bool, float]:
    """Run one operation at coordinator number `n`; returns (succeeded, latency in seconds)."""
    key = key_name(op.key)
    node = client.coordinator(n)
    if op.kind is OpKind.READ:
        rep = await client.get(node, key, q)
        contexts.see(key, rep.context)
        return rep.ok, rep.latency_s
    value = value_for(seed, n, value_size)
    if op.kind is OpKind.UPDATE:
        rep = await client.put(node, key, value, q, contexts.get(key))
        contexts.see(key, rep.context)
        return rep.ok, rep.latency_s
    # read-modify-write: the write carries the context of the read it modifies (YCSB workload F)
    got = await client.get(node, key, q)
    if not got.ok:
        return False, got.latency_s
    rep = await client.put(node, key, value, q, got.context)
    contexts.see(key, rep.context)
    return rep.ok, got.latency_s + rep.latency_s


@dataclass(frozen=True, slots=True)
class RunResult:
    workload: str
    quorum: Quorum
    duration_s: float
    ops: dict[str, dict[str, Any]]  # per operation kind: ok, errors, latency_ms percentiles

    @property
    def throughput(self) -> float:
        done = sum(o["ok"] for o in self.ops.values())
        return done / self.duration_s if self.duration_s > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "workload": self.workload,
            "r": self.quorum.r,
            "w": self.quorum.w,
            "sloppy": self.quorum.sloppy,
            "duration_s": round(self.duration_s, 3),
            "throughput_ops_s": round(self.throughput, 1),
            "errors": sum(o["errors"] for o in self.ops.values()),
            "ops": self.ops,
        }


async def run_workload(client: Client, workload: Workload, q: Quorum, *, duration_s: float, concurrency: int,
                       seed: int, value_size: int, contexts: ContextCache,
                       on_tick: Callable[[float], None] | None = None) -> RunResult:
    """Closed loop: `concurrency` workers each take the next operation of the sequence until time is up."""
    stats = {k: OpStats() for k in OpKind}
    counter = 0
    start = time.perf_counter()
    end = start + duration_s

    async def worker() -> None:
        nonlocal counter
        while time.perf_counter() < end:
            op = workload.next()  # single-threaded loop: the sequence is taken in order, whoever runs it
            n = counter
            counter += 1
            ok, lat = await execute(client, op, n, q, seed, value_size, contexts)
            stats[op.kind].add(ok, lat)

    async def ticker() -> None:
        last = start
        while True:
            await asyncio.sleep(0.25)
            now = time.perf_counter()
            if on_tick is not None and now <= end + 0.25:
                on_tick(min(now, end) - last)
            last = min(now, end)

    tick_task = asyncio.create_task(ticker())
    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        tick_task.cancel()
    elapsed = time.perf_counter() - start
    ops = {k.value: s.summary() for k, s in stats.items() if s.ok or s.errors}
    return RunResult(workload.spec.name, q, elapsed, ops)


async def preload(client: Client, keys: int, *, n_val: int, seed: int, value_size: int, concurrency: int,
                  contexts: ContextCache) -> int:
    """Write every key once at W=N so every run starts from fully replicated data; returns failures."""
    q = Quorum(r=1, w=n_val)
    failures = 0
    it = iter(range(keys))

    async def worker() -> None:
        nonlocal failures
        for i in it:
            key = key_name(i)
            rep = await client.put(client.coordinator(i), key, value_for(seed, -i, value_size), q, contexts.get(key))
            contexts.see(key, rep.context)
            failures += not rep.ok

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return failures
