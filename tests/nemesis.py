"""Fault injection ("nemesis") for a cluster of real node processes: kill -9 and restart, pause and resume.

Two halves:
- `make_schedule` is pure: from a seed, a fault kind and the node ids it returns a list of `Fault`s (which
  nodes, when, for how long). The same seed gives the same schedule; print the seed to replay a run.
- `Nemesis` drives a `tests.harness.Cluster` through a schedule: SIGKILL then restart (data kept on disk), or
  SIGSTOP then SIGCONT. It records the wall-clock windows during which a fault was active, so a workload can
  say how available the cluster was during the faults. `heal_all` undoes whatever is still in force.

- Network partitions: the cluster runs with one loopback address per node (`own_addresses`) inside a
  network namespace the test made (tests/system/test_faults.py re-runs itself under `ip netns exec`), and the
  nemesis cuts every path between the fault's nodes and the rest with iptables DROP rules in that
  namespace (both directions), then deletes exactly those rules to heal. Clients (the test process, on
  127.0.0.1) still reach every node, as in Jepsen: each side of the split keeps taking requests.
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import time
from dataclasses import dataclass, field
from enum import Enum

from tests.harness import Cluster


class FaultKind(str, Enum):
    KILL = "kill"    # kill -9, restart with the same data dir after `duration`
    PAUSE = "pause"  # SIGSTOP, SIGCONT after `duration`: the process keeps its sockets but answers nothing
    PARTITION = "partition"  # the fault's nodes are cut off from the other nodes (not from clients)
    BRIDGE = "bridge"  # nodes = (a, a', bridge, b, b'...): two sides that only the bridge node connects


@dataclass(frozen=True)
class Fault:
    kind: FaultKind
    nodes: tuple[str, ...]
    start_s: float     # offset from the start of the schedule
    duration_s: float  # how long the fault stays in force


def make_schedule(seed: int, kinds: list[FaultKind], nodes: list[str], faults: int, *,
                  max_down: int = 1, duration_s: tuple[float, float] = (1.5, 3.0),
                  gap_s: tuple[float, float] = (0.5, 1.5)) -> list[Fault]:
    """A seeded sequence of non-overlapping faults, each on 1..max_down distinct nodes.

    Faults do not overlap so that at most `max_down` nodes are out at once: with N=3 and W=2 that keeps a
    sloppy quorum reachable on a 5-node ring, which is what the availability numbers are about."""
    rng = random.Random(seed)
    out: list[Fault] = []
    t = rng.uniform(*gap_s)
    for _ in range(faults):
        kind = rng.choice(kinds)
        if kind is FaultKind.BRIDGE:  # everyone takes part: side a, the bridge, side b
            victims = tuple(rng.sample(nodes, len(nodes)))
        else:
            victims = tuple(sorted(rng.sample(nodes, rng.randint(1, max_down))))
        dur = round(rng.uniform(*duration_s), 3)
        out.append(Fault(kind, victims, round(t, 3), dur))
        t += dur + rng.uniform(*gap_s)
    return out


@dataclass
class Nemesis:
    """Applies a schedule to a running cluster and remembers when faults were in force."""

    cluster: Cluster
    windows: list[tuple[float, float]] = field(default_factory=list)  # monotonic (start, end) of each fault
    _paused: set[str] = field(default_factory=set)
    _killed: set[str] = field(default_factory=set)
    _rules: list[list[str]] = field(default_factory=list)  # iptables rules in force, to delete on heal

    def _cut(self, side: tuple[str, ...], others: list[str] | None = None) -> None:
        """Drop every packet between `side` and `others` (default: every other node), both ways."""
        hosts = self.cluster.hosts
        if others is None:
            others = [n for n in self.cluster.ids if n not in side]
        for a in side:
            for b in others:
                for src, dst in ((hosts[a], hosts[b]), (hosts[b], hosts[a])):
                    rule = ["INPUT", "-s", src, "-d", dst, "-j", "DROP"]
                    subprocess.run(["iptables", "-A", *rule], check=True)
                    self._rules.append(rule)

    def _mend(self) -> None:
        while self._rules:
            subprocess.run(["iptables", "-D", *self._rules.pop()], check=True)

    async def inject(self, f: Fault) -> None:
        if f.kind is FaultKind.PARTITION:
            self._cut(f.nodes)
            return
        if f.kind is FaultKind.BRIDGE:
            half = len(f.nodes) // 2
            self._cut(f.nodes[:half], list(f.nodes[half + 1:]))  # f.nodes[half] bridges the two sides
            return
        for nid in f.nodes:
            if f.kind is FaultKind.KILL:
                self.cluster.kill(nid, signal.SIGKILL)
                self._killed.add(nid)
            else:
                self.cluster.kill(nid, signal.SIGSTOP)
                self._paused.add(nid)

    async def heal(self, f: Fault) -> None:
        if f.kind in (FaultKind.PARTITION, FaultKind.BRIDGE):
            self._mend()
            return
        for nid in f.nodes:
            if nid in self._paused:
                self.cluster.kill(nid, signal.SIGCONT)
                self._paused.discard(nid)
            if nid in self._killed:
                self.cluster.start(nid)
                self._killed.discard(nid)
        for nid in f.nodes:
            await self.cluster.wait_healthy(nid)

    async def heal_all(self) -> None:
        self._mend()
        for nid in sorted(self._paused):
            self.cluster.kill(nid, signal.SIGCONT)
        for nid in sorted(self._killed):
            self.cluster.start(nid)
        healed = self._paused | self._killed
        self._paused.clear()
        self._killed.clear()
        for nid in sorted(healed):
            await self.cluster.wait_healthy(nid)

    async def run(self, schedule: list[Fault]) -> None:
        """Play the schedule in real time; always leaves every node running, even on error."""
        t0 = time.monotonic()
        try:
            for f in schedule:
                await asyncio.sleep(max(0.0, t0 + f.start_s - time.monotonic()))  # a timetable, not a hope
                began = time.monotonic()
                await self.inject(f)
                await asyncio.sleep(f.duration_s)
                await self.heal(f)
                self.windows.append((began, time.monotonic()))
        finally:
            await self.heal_all()

    def during_fault(self, t: float) -> bool:
        return any(a <= t <= b for a, b in self.windows)
