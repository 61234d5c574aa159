"""The bench's view of the cluster (on `dynamostore.client`) and the closed-loop workload runner.

`Client` sends GET/PUT with per-request quorums to a coordinator the bench chooses and times each request.
`run_workload` drives `concurrency` closed-loop workers through one seeded `Workload` for a fixed time
and returns latency percentiles per operation.

Contexts: a write carries the context of its writer's own last read of the key (a GET, or the state its
previous write returned with `returnbody`), as Riak clients do, and never one the writer did not read with
its value. (The bench used to keep the last `X-Context` any request of any worker had seen: a write then
superseded values its writer never read, which loses updates.) A key its writer has not read is written
blind: concurrent with what is stored, a sibling.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.rw.workload import Op, OpKind, Workload, key_name, value_for
from dynamostore.client import (
    AsyncClient,
    BadRequest,
    ClientError,
    Conflict,
    Consistency,
    Object,
    QuorumError,
    ServerError,
    Unreachable,
)

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
    read: Object | None = None  # GET: the state read; PUT: the state after the write (returnbody)
    values: tuple[bytes, ...] = ()  # GET: the value, or every sibling; empty for 404 and writes
    error: str | None = None


def _failure(exc: ClientError) -> tuple[int, str]:
    """(HTTP status or 0, a short name) of a failed request, for the tallies."""
    if isinstance(exc, QuorumError):
        return 503, "unavailable"
    if isinstance(exc, BadRequest):
        return exc.status, exc.error
    if isinstance(exc, Conflict):
        return 409, "conflict"
    if isinstance(exc, ServerError):
        return exc.status, "server_error"
    if isinstance(exc, Unreachable):
        return 0, exc.attempts[-1].split(": ", 1)[-1] if exc.attempts else "unreachable"
    return 0, type(exc).__name__


class Client:
    """One `dynamostore.client.AsyncClient` per node, each pinned to its node (`routing="seeds"`): the bench
    chooses every request's coordinator itself (round robin over `live`; t-visibility writes through one node
    and reads through another), so the client's own routing and fail-over stay out of the measurement."""

    def __init__(self, urls: list[str], timeout_ms: int = 2000, connections: int = 64) -> None:
        self.urls = urls
        self.timeout_ms = timeout_ms
        self.live: list[int] = list(range(len(urls)))
        self._connections = connections
        self._nodes: list[AsyncClient] = []

    async def __aenter__(self) -> Client:
        # Client-side time well above the server's X-Timeout-Ms: the server must answer 503 itself.
        budget = self.timeout_ms / 1000 + 5
        self._nodes = [AsyncClient(u, routing="seeds", connections=self._connections, deadline=budget,
                                   attempt_timeout=budget, connect_timeout=budget) for u in self.urls]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for c in self._nodes:
            await c.close()

    def coordinator(self, n: int) -> int:
        """The n-th coordinator in round robin over the live nodes (deterministic for a given n)."""
        return self.live[n % len(self.live)]

    def _opts(self, q: Quorum) -> Consistency:
        return {"r": q.r, "w": q.w, "sloppy": q.sloppy, "timeout": self.timeout_ms / 1000}

    async def get(self, node: int, key: str, q: Quorum) -> Reply:
        assert self._nodes, "use the client as an async context manager"
        start = time.perf_counter()
        try:
            obj = await self._nodes[node].get(key, missing_ok=True, **self._opts(q))
        except ClientError as exc:
            status, why = _failure(exc)
            return Reply(False, status, time.perf_counter() - start, error=why)
        lat = time.perf_counter() - start
        status = 404 if not obj.exists else 200 if len(obj.siblings) == 1 else 300
        return Reply(True, status, lat, obj, tuple(s.value for s in obj.siblings))

    async def put(self, node: int, key: str, value: bytes, q: Quorum, context: Object | None = None,
                  returnbody: bool = False) -> Reply:
        assert self._nodes, "use the client as an async context manager"
        start = time.perf_counter()
        try:
            res = await self._nodes[node].put(key, value, context=context, returnbody=returnbody,
                                              **self._opts(q))
        except ClientError as exc:
            status, why = _failure(exc)
            return Reply(False, status, time.perf_counter() - start, error=why)
        return Reply(True, 200 if res.object is not None else 204, time.perf_counter() - start, res.object)


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


LastReads = dict[str, Object]  # one worker's last read of each key (a GET, or its own write's returnbody)


async def execute(client: Client, op: Op, n: int, q: Quorum, seed: int, value_size: int,
                  reads: LastReads) -> tuple[bool, float]:
    """Run one operation at coordinator number `n`; returns (succeeded, latency in seconds). `reads` is the
    running worker's own: what it read is what its writes supersede."""
    key = key_name(op.key)
    node = client.coordinator(n)
    if op.kind is OpKind.READ:
        rep = await client.get(node, key, q)
        _remember(reads, key, rep)
        return rep.ok, rep.latency_s
    value = value_for(seed, n, value_size)
    if op.kind is OpKind.UPDATE:
        # returnbody: the state after this write is the writer's next read (the value it just wrote, and
        # any sibling written concurrently), so its next update supersedes exactly that
        rep = await client.put(node, key, value, q, reads.pop(key, None), returnbody=True)
        _remember(reads, key, rep)
        return rep.ok, rep.latency_s
    # read-modify-write: the write carries the context of the read it modifies (YCSB workload F)
    got = await client.get(node, key, q)
    if not got.ok:
        return False, got.latency_s
    rep = await client.put(node, key, value, q, got.read, returnbody=True)
    _remember(reads, key, rep)
    return rep.ok, got.latency_s + rep.latency_s


def _remember(reads: LastReads, key: str, rep: Reply) -> None:
    if rep.ok and rep.read is not None:
        reads[key] = rep.read


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
                       seed: int, value_size: int,
                       on_tick: Callable[[float], None] | None = None) -> RunResult:
    """Closed loop: `concurrency` workers each take the next operation of the sequence until time is up."""
    stats = {k: OpStats() for k in OpKind}
    counter = 0
    start = time.perf_counter()
    end = start + duration_s

    async def worker() -> None:
        nonlocal counter
        reads: LastReads = {}
        while time.perf_counter() < end:
            op = workload.next()  # single-threaded loop: the sequence is taken in order, whoever runs it
            n = counter
            counter += 1
            ok, lat = await execute(client, op, n, q, seed, value_size, reads)
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


async def preload(client: Client, keys: int, *, n_val: int, seed: int, value_size: int, concurrency: int) -> int:
    """Write every key once at W=N so every run starts from fully replicated data; returns failures."""
    q = Quorum(r=1, w=n_val)
    failures = 0
    it = iter(range(keys))

    async def worker() -> None:
        nonlocal failures
        for i in it:
            key = key_name(i)
            rep = await client.put(client.coordinator(i), key, value_for(seed, -i, value_size), q)
            failures += not rep.ok

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return failures
