"""t-visibility, measured: how likely a read started t ms after a write was acknowledged sees that write.

For every (R, W) and every offset t, `samples` probes each write a fresh key with a unique token at W
(coordinated by one of the writer nodes), wait until t ms after the acknowledgement, then read it at R
from another coordinator. A read is fresh when it returns the token (alone or among siblings); a 404 or
any other value is stale. Each probe uses its own key, so one probe's read repair cannot help another.

Staleness is made visible by slowing one replica's replication path (every other node delays its
internal messages to it, `/debug/delay`); the bench clears the delay afterwards. Reads whose actual start
lagged the scheduled offset are still bucketed at the scheduled t; the mean actual lag is reported.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.rw.runner import Client, Quorum


@dataclass
class Bucket:
    fresh: int = 0
    stale: int = 0
    failed: int = 0  # the write or the read did not succeed: not a visibility sample
    lag_ms: list[float] = field(default_factory=list)
    by_reader: dict[str, list[int]] = field(default_factory=dict)  # reader -> [fresh, stale]

    def add(self, reader: str, fresh: bool) -> None:
        if fresh:
            self.fresh += 1
        else:
            self.stale += 1
        self.by_reader.setdefault(reader, [0, 0])[0 if fresh else 1] += 1

    def to_json(self) -> dict[str, Any]:
        n = self.fresh + self.stale
        return {
            "samples": n,
            "fresh": self.fresh,
            "stale": self.stale,
            "failed": self.failed,
            "p_fresh": round(self.fresh / n, 4) if n else None,
            "mean_read_start_lag_ms": round(sum(self.lag_ms) / len(self.lag_ms), 2) if self.lag_ms else None,
            "p_fresh_by_reader": {r: round(f / (f + st), 4) for r, (f, st) in sorted(self.by_reader.items())},
        }


@dataclass(frozen=True, slots=True)
class VisibilityPlan:
    offsets_ms: tuple[int, ...]
    samples: int  # probes per (R, W, offset)
    writers: tuple[int, ...]  # client node indexes that coordinate the writes
    readers: tuple[int, ...]  # and the reads (never the writer of the same probe)
    concurrency: int
    tag: str  # makes the probe keys unique to this run
    names: tuple[str, ...] | None = None  # node ids by client index, for the per-reader breakdown


async def _probe(client: Client, q: Quorum, key: str, token: bytes, writer: int, reader: int, offset_ms: int,
                 bucket: Bucket, names: tuple[str, ...] | None) -> None:
    put = await client.put(writer, key, token, q)
    if not put.ok:
        bucket.failed += 1
        return
    acked = time.perf_counter()
    await asyncio.sleep(max(0.0, acked + offset_ms / 1000 - time.perf_counter()))
    started = time.perf_counter()
    got = await client.get(reader, key, q)
    if not got.ok:
        bucket.failed += 1
        return
    bucket.lag_ms.append((started - acked) * 1000 - offset_ms)
    bucket.add(client.urls[reader] if names is None else names[reader], token in got.values)


async def measure(client: Client, q: Quorum, plan: VisibilityPlan) -> dict[str, Any]:
    """The t-visibility curve of one (R, W): per offset, P(fresh) and the sample counts."""
    buckets = {t: Bucket() for t in plan.offsets_ms}
    sem = asyncio.Semaphore(plan.concurrency)
    pairs = [(w, r) for w in plan.writers for r in plan.readers if r != w]
    if not pairs:
        raise ValueError("t-visibility needs a reader node different from the writer")

    async def one(i: int, t: int) -> None:
        writer, reader = pairs[i % len(pairs)]
        key = f"vis-{plan.tag}-{q.label}-{t}-{i}"
        async with sem:
            await _probe(client, q, key, key.encode(), writer, reader, t, buckets[t], plan.names)

    # Interleave offsets so each offset sees the same cluster conditions over the phase.
    await asyncio.gather(*(one(i, t) for i in range(plan.samples) for t in plan.offsets_ms))
    curve = {str(t): b.to_json() for t, b in buckets.items()}
    total_stale = sum(b.stale for b in buckets.values())
    return {"r": q.r, "w": q.w, "strong": None, "stale_reads": total_stale, "curve": curve}


async def measure_all(client: Client, quorums: list[Quorum], plan: VisibilityPlan, n_val: int,
                      on_done: Callable[[Quorum], None] | None = None) -> list[dict[str, Any]]:
    rows = []
    for q in quorums:
        row = await measure(client, q, plan)
        row["strong"] = q.r + q.w > n_val  # R + W > N: every read quorum meets every write quorum
        rows.append(row)
        if on_done is not None:
            on_done(q)
    return rows
