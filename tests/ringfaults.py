"""Ring changes under faults: one seeded run of a schedule kind against a real cluster, and its verdict.

Shared by tests/system/test_ring_faults.py and `python -m bench.ring_faults`. A run:
1. writes the keys the run starts with: `w3-k...` at W=ALL strict (on all three primaries before the ring
   changes) and the deleters' keys (so they sit on their former owners when partitions move);
2. plays the schedule kind's `RingChange`s (tests/nemesis.py) while clients run: set-adders and blind
   writers at W=2 and R=2 strict (R + W > N), a blind writer at W=ALL strict, deleters (read, then delete
   with that context), a reader at R=2 strict and one at R=1 strict (R=1 + W=ALL > N); after each change
   settles, every W=ALL key is read once at R=1 strict through every live member (a member that became a
   primary of a partition it never received answers 404 there: a stale strict read);
3. waits until no hint is pending, reads every key at R=ALL strict (the primaries alone) and checks the
   history (tests/history.py `verify`): lost, resurrected and stale strict reads must all be zero.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from tests.harness import STRICT_ALL, Cluster, wait_for
from tests.history import History, Outcome, Report, values_of
from tests.nemesis import FaultKind, RingChange, RingNemesis, RingOp, make_ring_schedule
from tests.workloads import Stats, Target, blind_writer, deleter, reader, set_adder

FOUNDERS = 4
SETTINGS: dict[str, Any] = {
    "handoff": {"interval_ms": 100},
    # exchanges are rare on purpose: a run must see what the ring change itself left behind, not what
    # anti-entropy repaired a second later; sweeps (which reap tombstones past grace) are frequent
    "antientropy": {"exchange_interval_s": 30.0, "tombstone_grace_s": 1.0, "sweep_interval_s": 1.0},
    "detector": {"down_after_ms": 600},
}
W3_KEYS = 150
DELETERS = 2
PRELOADED = 150  # per deleter


@dataclass(frozen=True)
class Kind:
    ops: list[RingOp]
    changes: int
    faults: list[FaultKind] = field(default_factory=list)


# Each kind starts from FOUNDERS nodes with three spare ids (n5..n7): a leave or remove keeps >= 3 members.
SCHEDULES: dict[str, Kind] = {
    "join": Kind([RingOp.JOIN], 1),
    "leave": Kind([RingOp.LEAVE], 1),
    "remove": Kind([RingOp.REMOVE], 1),
    "replace": Kind([RingOp.REPLACE], 1),
    "join-leave": Kind([RingOp.CYCLE], 1),
    "leader-kill": Kind([RingOp.LEADER_KILL], 2),
    "mixed": Kind(list(RingOp), 3, [FaultKind.KILL, FaultKind.PAUSE]),
    # network partitions need one address per node and a network namespace (test_ring_faults re-runs itself
    # under `ip netns exec`, as test_faults does); `run_kind` is given such a cluster
    "mixed-partition": Kind(list(RingOp), 3, [FaultKind.PARTITION]),
}
NEEDS_NETNS = {"mixed-partition"}


@dataclass
class RunResult:
    kind: str
    seed: int
    schedule: list[RingChange]
    report: Report
    log: list[str]
    seconds: float

    def line(self) -> str:
        r = self.report
        return (f"{self.kind} seed={self.seed}: acknowledged={r.acknowledged} lost={len(r.lost)} "
                f"resurrected={len(r.resurrected)} stale_strict={len(r.stale_strict)} deletes={r.deletes} "
                f"reads={r.reads} unknown={r.unknown} failed={r.failed} ({self.seconds:.0f}s)")


def schedule_of(kind: str, seed: int) -> list[RingChange]:
    k = SCHEDULES[kind]
    founders = [f"n{i}" for i in range(1, FOUNDERS + 1)]
    spares = [f"n{i}" for i in range(FOUNDERS + 1, FOUNDERS + 4)]
    return make_ring_schedule(seed, k.ops, founders, spares, k.changes, fault_kinds=k.faults or None)


STRICT2 = {"X-Write-Quorum": "2", "X-Read-Quorum": "2", "X-Sloppy-Quorum": "false", "X-Timeout-Ms": "1500"}
W3 = {"X-Write-Quorum": "all", "X-Read-Quorum": "1", "X-Sloppy-Quorum": "false", "X-Timeout-Ms": "1500"}


async def _preload(c: Cluster, s: aiohttp.ClientSession, h: History) -> None:
    sem = asyncio.Semaphore(16)

    async def put(key: str, value: bytes) -> None:
        async with sem:
            for _ in range(5):  # the cluster is healthy: a failure here is a test setup problem, retried
                start = time.monotonic()
                async with s.put(f"{c.url(c.ids[len(key) % len(c.ids)])}/kv/{key}", data=value,
                                 headers={**W3, "X-Timeout-Ms": "5000"}) as r:
                    await r.read()
                    if r.status == 204:
                        h.record(key, value, Outcome.OK, start=start, end=time.monotonic(), quorum=3, strict=True)
                        return
            raise AssertionError(f"preload of {key} failed: {r.status}")

    keys = [(f"w3-k{i:03d}", f"pre{i}".encode()) for i in range(W3_KEYS)]
    keys += [(f"d{cid}-{j}", f"d{cid}-pre{j}".encode()) for cid in range(DELETERS) for j in range(PRELOADED)]
    await asyncio.gather(*(put(k, v) for k, v in keys))


async def _sweep(c: Cluster, nem: RingNemesis, s: aiohttp.ClientSession, h: History) -> None:
    """Every W=ALL key once at R=1 strict through every live member (recorded as reads)."""
    for nid in nem.live():
        for i in range(W3_KEYS):
            key = f"w3-k{i:03d}"
            start = time.monotonic()
            try:
                async with s.get(f"{c.url(nid)}/kv/{key}", headers={**W3, "Accept": "application/json"},
                                 timeout=aiohttp.ClientTimeout(total=3)) as r:
                    body = await r.read()
                    if r.status not in (200, 300, 404):
                        continue
                    h.record_read(key, frozenset(values_of(r.status, dict(r.headers), body)), start,
                                  time.monotonic(), 1, True)
            except (aiohttp.ClientError, asyncio.TimeoutError):
                continue


async def _hints_drained(c: Cluster, nem: RingNemesis) -> bool:
    members = set(nem.members)
    for nid in nem.live():
        per = (await c.status(nid))["handoff"].get("pending", {})
        if isinstance(per, dict) and any(n in members and int(v) > 0 for n, v in per.items()):
            return False
    return True


async def run_kind(c: Cluster, kind: str, seed: int) -> RunResult:
    """One seeded run of `kind` on a fresh cluster of FOUNDERS nodes started with SETTINGS."""
    if kind in NEEDS_NETNS and (os.environ.get("RING_FAULTS_IN_NETNS") != "1" or len(set(c.hosts.values())) == 1):
        # iptables rules between 127.0.0.1 and itself would cut every loopback connection on the machine
        raise RuntimeError(f"{kind} runs only inside a network namespace, with one address per node "
                           "(tests/system/test_ring_faults.py::test_ring_changes_under_partitions)")
    t0 = time.monotonic()
    schedule = schedule_of(kind, seed)
    print(f"\n[ring {kind}] seed={seed} (replay: RING_FAULTS_SEED={seed}) schedule: "
          + "; ".join(ch.describe() for ch in schedule), flush=True)
    h = History(n_val=3)
    st = Stats()
    stop = asyncio.Event()
    rng = random.Random(seed * 1000 + 11)
    async with aiohttp.ClientSession() as s:
        await _preload(c, s, h)
        nem = RingNemesis(c, after_change=lambda: _sweep(c, nem, s, h))
        await _sweep(c, nem, s, h)
        strict = Target(nem.coordinators, c.url, STRICT2, "", strict=True)
        w3 = Target(nem.coordinators, c.url, W3, "w3-", r=1, w=3, strict=True)
        sub = lambda: random.Random(rng.random())  # noqa: E731 - one seeded generator per client
        clients = [set_adder(s, strict, k, h, st, sub(), stop) for k in range(2)]
        clients += [blind_writer(s, strict, 10, h, st, sub(), stop), blind_writer(s, w3, 11, h, st, sub(), stop)]
        clients += [deleter(s, strict, cid, h, st, sub(), stop, PRELOADED) for cid in range(DELETERS)]
        clients += [reader(s, strict, h, sub(), stop), reader(s, w3, h, sub(), stop)]
        tasks = [asyncio.create_task(x) for x in clients]
        try:
            await nem.run(schedule)
            await asyncio.sleep(1.0)  # a little traffic on the final ring
        finally:
            stop.set()
            await asyncio.gather(*tasks)
        try:
            await wait_for(lambda: _hints_drained(c, nem), 30, "hints for members delivered", interval=0.2)
        except AssertionError as exc:
            nem.log.append(f"not drained: {exc}")  # orphaned hints show up as lost or stale below
        final: dict[str, set[bytes]] = {}
        via = nem.live()
        for i, key in enumerate(sorted(h.keys())):
            async with s.get(f"{c.url(via[i % len(via)])}/kv/{key}", headers=STRICT_ALL) as r:
                final[key] = values_of(r.status, dict(r.headers), await r.read())
    report = h.verify(final)
    res = RunResult(kind, seed, schedule, report, nem.log, time.monotonic() - t0)
    print(res.line(), flush=True)
    if nem.log:
        print("  " + "; ".join(nem.log), flush=True)
    return res
