"""Availability under kill -9: the share of reads and writes that succeed per (R, W), sloppy and strict.

One continuous run: workers issue a seeded 50/50 read/update mix over the preloaded keys, each operation
using the next (R, W, sloppy) combination in round robin, so every combination sees the same conditions at
the same moments. Mid-run the bench kills one node (kill -9), later a second one, then restarts both from
their data and waits until every node sees every other one up again.

Each operation counts in the phase it started and ended in (healthy, one_down, two_down); one that spans
a kill is counted apart as `in_flight_at_kill`. The client routes requests to live nodes only (as a load
balancer would): what is measured is the quorum's availability, not the client's retries.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.rw.cluster import Target
from bench.rw.runner import Client, LastReads, Quorum
from bench.rw.workload import key_name, value_for

PHASES = ("healthy", "one_down", "two_down")


@dataclass
class Tally:
    ok: int = 0
    failed: int = 0
    why: dict[str, int] = field(default_factory=dict)

    def add(self, ok: bool, why: str | None) -> None:
        if ok:
            self.ok += 1
        else:
            self.failed += 1
            key = why or "error"
            self.why[key] = self.why.get(key, 0) + 1

    def to_json(self) -> dict[str, Any]:
        n = self.ok + self.failed
        return {"ok": self.ok, "failed": self.failed, "success": round(self.ok / n, 4) if n else None,
                "failures": dict(self.why)}


async def measure(client: Client, target: Target, combos: list[Quorum], *, victims: list[str], phase_s: float,
                  keys: int, seed: int, value_size: int, concurrency: int,
                  on_phase: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run healthy, then with victims[0] killed, then with victims[0:2] killed; restart them after."""
    tallies: dict[tuple[str, str, str], Tally] = {}  # (phase, combo label, "read"|"write")
    rng = random.Random(f"{seed}:availability")
    phase = PHASES[0]
    stop = False
    counter = 0

    def tally(ph: str, q: Quorum, kind: str) -> Tally:
        return tallies.setdefault((ph, q.label, kind), Tally())

    async def worker() -> None:
        nonlocal counter
        reads: LastReads = {}  # this worker's own reads: its writes supersede what it read, nothing else
        while not stop:
            n = counter
            counter += 1
            q = combos[n % len(combos)]
            key = key_name(rng.randrange(keys))
            is_read = rng.random() < 0.5
            node = client.coordinator(n // len(combos))
            began = phase
            if is_read:
                rep = await client.get(node, key, q)
            else:
                rep = await client.put(node, key, value_for(seed, n, value_size), q, reads.pop(key, None),
                                       returnbody=True)
            if rep.ok and rep.read is not None:
                reads[key] = rep.read
            ph = began if phase == began else "in_flight_at_kill"
            tally(ph, q, "read" if is_read else "write").add(rep.ok, rep.error or (str(rep.status) if not rep.ok else None))

    workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
    try:
        if on_phase:
            on_phase(phase)
        await asyncio.sleep(phase_s)
        for i, victim in enumerate(victims[:2]):
            # Stop routing to the victim first: a client would see its connections refused and move on.
            client.live = [k for k in client.live if target.ids[k] != victim]
            phase = PHASES[i + 1]
            await target.kill(victim)
            if on_phase:
                on_phase(phase)
            await asyncio.sleep(phase_s)
    finally:
        stop = True
        await asyncio.gather(*workers, return_exceptions=True)
    t0 = time.perf_counter()
    for victim in victims[:2]:
        await target.restart(victim)
    await target.wait_converged(target.ids)
    client.live = list(range(len(target.ids)))
    rows = []
    for q in combos:
        row: dict[str, Any] = {"r": q.r, "w": q.w, "sloppy": q.sloppy}
        for ph in (*PHASES, "in_flight_at_kill"):
            row[ph] = {kind: tally(ph, q, kind).to_json() for kind in ("read", "write")}
        rows.append(row)
    return {"victims": victims[:2], "phase_s": phase_s, "restart_s": round(time.perf_counter() - t0, 2),
            "rows": rows}
