"""The last few minutes of a node, one sample a second, for the console's charts (`GET /status/history`).

Requests already count themselves (metrics.RequestStats: counts by op and status, latency buckets by op);
nothing is added to a request's path. Every `interval` the sampler reads the cumulative counters into a
`Reading` and keeps the difference with the previous one as a `Sample`: requests per second (reads and
writes), p50/p99 latency from the latency buckets that filled during the interval, 503s per second, siblings
formed, hints pending per target (a level, not a rate) and delivered, anti-entropy exchanges, differing and
repaired keys. A ring buffer keeps `capacity` samples (5 minutes by default); the console asks for those
after the last sequence number it has.

`Reading`, `sample` and `History` are pure; `HistoryService` is the asyncio driver (the clock is a view).
Because the history lives in the node, it is there when an operator opens the console after the fact: the
node that died a minute ago, its hints piling up and draining, are already on the chart.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import Metric

from dynamostore.metrics import quantile
from dynamostore.runtime import Supervisor
from dynamostore.views import Clock

READS = ("GET", "HEAD")
WRITES = ("PUT", "POST", "DELETE")
INTERVAL_S = 1.0
CAPACITY = 300


@dataclass(frozen=True)
class Reading:
    """Cumulative counters of a node at one instant (`mono`: the loop's clock; `t`: unix time, for display)."""

    t: float
    mono: float
    counts: dict[tuple[str, int], int] = field(default_factory=dict)  # (op, status) -> requests
    buckets: dict[str, list[int]] = field(default_factory=dict)  # op -> latency bucket counts
    hints_pending: dict[str, int] = field(default_factory=dict)  # target -> hints held for it (a level)
    hints_delivered: int = 0
    siblings_written: int = 0
    siblings_merged: int = 0
    ae_exchanges: int = 0
    ae_keys_differing: int = 0
    ae_keys_repaired: int = 0


def _sum_counts(r: Reading, ops: tuple[str, ...], status: int | None = None) -> int:
    return sum(n for (op, st), n in r.counts.items() if op in ops and (status is None or st == status))


def _bucket_delta(prev: Reading, cur: Reading, ops: tuple[str, ...]) -> list[int]:
    out: list[int] = []
    for op in ops:
        now = cur.buckets.get(op)
        if now is None:
            continue
        before = prev.buckets.get(op) or [0] * len(now)
        d = [a - b for a, b in zip(now, before)]
        out = d if not out else [a + b for a, b in zip(out, d)]
    return out


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def sample(prev: Reading, cur: Reading) -> dict[str, Any]:
    """What happened between two readings, as the console draws it (rates per second)."""
    dt = cur.mono - prev.mono
    if dt <= 0:
        raise ValueError("readings out of order")
    reads, writes = _bucket_delta(prev, cur, READS), _bucket_delta(prev, cur, WRITES)
    all_ops = READS + WRITES

    def rate(a: int, b: int) -> float:
        return round((a - b) / dt, 3)

    return {
        "t": round(cur.t, 3),
        "dt": round(dt, 3),
        "rps": {"read": rate(_sum_counts(cur, READS), _sum_counts(prev, READS)),
                "write": rate(_sum_counts(cur, WRITES), _sum_counts(prev, WRITES))},
        "p50_ms": {"read": _ms(quantile(reads, 0.5)), "write": _ms(quantile(writes, 0.5))},
        "p99_ms": {"read": _ms(quantile(reads, 0.99)), "write": _ms(quantile(writes, 0.99))},
        "unavailable_per_s": rate(_sum_counts(cur, all_ops, 503), _sum_counts(prev, all_ops, 503)),
        "siblings": {"written": cur.siblings_written - prev.siblings_written,
                     "merged": cur.siblings_merged - prev.siblings_merged},
        "hints_pending": dict(sorted(cur.hints_pending.items())),
        "hints_delivered": cur.hints_delivered - prev.hints_delivered,
        "ae": {"exchanges": cur.ae_exchanges - prev.ae_exchanges,
               "keys_differing": cur.ae_keys_differing - prev.ae_keys_differing,
               "keys_repaired": cur.ae_keys_repaired - prev.ae_keys_repaired},
    }


class History:
    """A ring buffer of samples, each numbered (`seq` starts at 1 and never repeats in a process)."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.samples: deque[dict[str, Any]] = deque(maxlen=capacity)
        self.seq = 0

    def add(self, s: dict[str, Any]) -> None:
        self.seq += 1
        self.samples.append({"seq": self.seq, **s})

    def since(self, seq: int) -> list[dict[str, Any]]:
        """Samples numbered after `seq`, oldest first (all that are kept when `seq` is older)."""
        if seq >= self.seq:
            return []
        newer = self.seq - seq
        if newer >= len(self.samples):
            return list(self.samples)
        return list(self.samples)[-newer:]


class HistoryService:
    """Samples `read()` every `interval` seconds into a `History` (a `views.Service`)."""

    def __init__(self, read: Callable[[], Reading], clock: Clock, interval: float = INTERVAL_S,
                 capacity: int = CAPACITY) -> None:
        self.read = read
        self.clock = clock
        self.interval = interval
        self.history = History(capacity)
        self._tasks = Supervisor("history sampler")
        self._prev: Reading | None = None

    async def start(self) -> None:
        self._tasks.spawn(self._run(), "history")

    async def stop(self) -> None:
        await self._tasks.stop()

    def step(self) -> None:
        """Take one reading and keep its difference with the previous one (the first only sets the base)."""
        cur = self.read()
        if self._prev is not None and cur.mono > self._prev.mono:
            self.history.add(sample(self._prev, cur))
        self._prev = cur

    async def _run(self) -> None:
        while True:
            self.step()
            await self.clock.wait(None, self.interval)  # a period, not pacing: a test clock holds it until moved

    def document(self, since: int) -> dict[str, Any]:
        """The body of `GET /status/history?since=N`."""
        return {"interval_s": self.interval, "capacity": self.history.samples.maxlen, "seq": self.history.seq,
                "samples": self.history.since(since)}

    def status(self) -> dict[str, Any]:
        return {"history": {"interval_s": self.interval, "samples": len(self.history.samples),
                            "seq": self.history.seq}}

    def gauges(self) -> Iterable[Metric]:
        return ()
