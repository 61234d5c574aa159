"""Fault injection ("nemesis") for a cluster of real node processes: kill -9 and restart, pause and resume,
network partitions, and ring changes (join, leave, remove, replace, kill -9 of the Raft leader during one).

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
- Ring changes: `make_ring_schedule` (pure, seeded like `make_schedule`) draws a sequence of `RingChange`s
  on a simulated membership, so each is possible when it comes, optionally each with a node fault of the
  kinds above on another member; `RingNemesis` plays it through the admin API (tests/system/test_ring_faults.py).
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import aiohttp

from tests.harness import Cluster, wait_for


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
    nodes: Callable[[], list[str]] | None = None  # the members a partition cuts from (default: the founders)

    def _cut(self, side: tuple[str, ...], others: list[str] | None = None) -> None:
        """Drop every packet between `side` and `others` (default: every other node), both ways."""
        hosts = self.cluster.hosts
        if others is None:
            pool = self.nodes() if self.nodes is not None else self.cluster.ids
            others = [n for n in pool if n not in side]
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


# --- ring changes under faults (issue 14) ------------------------------------------------------------------


class RingOp(str, Enum):
    JOIN = "join"            # a new node joins (its id never used before)
    LEAVE = "leave"          # a member hands off its partitions and leaves; its process stops afterwards
    REMOVE = "remove"        # a member is killed -9, seen down, and removed (never restarted)
    REPLACE = "replace"      # a new node takes over exactly a live member's partitions; the old one stops
    CYCLE = "join-leave"     # a new node joins, the store runs (deletes, tombstones reaped), the node leaves
    LEADER_KILL = "leader-kill"  # a join or leave, committed, then kill -9 of the Raft leader while it moves


@dataclass(frozen=True)
class RingChange:
    op: RingOp
    node: str                    # the member that leaves / is removed / is replaced, or the newcomer of a join
    new: str | None = None       # replace: the newcomer
    inner: RingOp | None = None  # leader-kill: the change it interrupts (join or leave)
    fault: Fault | None = None   # mixed: a node fault injected right after the commit (start_s is unused)
    gap_s: float = 1.0           # workload time before this change starts
    down_s: float = 2.0          # leader-kill: how long the killed leader stays down; cycle: time between

    def describe(self) -> str:
        who = f"{self.node}->{self.new}" if self.new else self.node
        extra = f" ({self.inner.value})" if self.inner else ""
        if self.fault is not None:
            extra += f" + {self.fault.kind.value} {','.join(self.fault.nodes)} for {self.fault.duration_s}s"
        return f"{self.op.value} {who}{extra} after {self.gap_s}s"


def make_ring_schedule(seed: int, ops: list[RingOp], founders: list[str], spares: list[str], changes: int, *,
                       fault_kinds: list[FaultKind] | None = None, min_members: int = 3,
                       gap_s: tuple[float, float] = (1.0, 2.5), down_s: tuple[float, float] = (1.5, 3.0),
                       fault_s: tuple[float, float] = (1.5, 3.0)) -> list[RingChange]:
    """A seeded sequence of ring changes. The membership is simulated as the schedule is drawn, so every
    change is possible when it comes: a join or replace takes a spare id (ids are never reused), a leave or
    remove keeps at least `min_members`. `fault_kinds`: each change also gets a node fault of one of these
    kinds on another member (mixed schedules). Same seed, same schedule."""
    rng = random.Random(seed)
    members = sorted(founders)
    free = list(spares)
    out: list[RingChange] = []
    for _ in range(changes):
        can_shrink = len(members) > min_members
        feasible = [op for op in ops
                    if (op in (RingOp.JOIN, RingOp.REPLACE, RingOp.CYCLE) and free)
                    or (op in (RingOp.LEAVE, RingOp.REMOVE) and can_shrink)
                    or (op is RingOp.LEADER_KILL and (free or can_shrink))]
        if not feasible:
            break
        op = rng.choice(feasible)
        gap = round(rng.uniform(*gap_s), 3)
        down = round(rng.uniform(*down_s), 3)
        inner = None
        if op is RingOp.LEADER_KILL:
            inner = rng.choice(([RingOp.JOIN] if free else []) + ([RingOp.LEAVE] if can_shrink else []))
        kind = inner or op
        new = None
        if kind in (RingOp.JOIN, RingOp.CYCLE):
            node = free.pop(0)
            if kind is RingOp.JOIN:
                members = sorted(members + [node])
        elif kind is RingOp.REPLACE:
            node, new = rng.choice(members), free.pop(0)
            members = sorted([m for m in members if m != node] + [new])
        else:
            node = rng.choice(members)
            members = [m for m in members if m != node]
        fault = None
        if fault_kinds and op is not RingOp.LEADER_KILL:  # one thing out at a time: a killed leader is enough
            others = [m for m in members if m not in (node, new)]
            fkind = rng.choice(fault_kinds)
            victims = tuple(others) if fkind is FaultKind.BRIDGE else (rng.choice(others),)
            fault = Fault(fkind, victims, 0.0, round(rng.uniform(*fault_s), 3))
        out.append(RingChange(op, node, new, inner, fault, gap, down))
    return out


class RingNemesis:
    """Plays a ring schedule on a running cluster through its admin API, as an operator would: stage, commit,
    wait until every live member has applied the same epoch with no transfer pending (the members: a node
    that left or was replaced is not asked), then stop a node that left or was replaced. Node faults of mixed
    schedules go through a `Nemesis`. `after_change` runs after each change settles (the suite reads every key
    there). Always leaves the members running."""

    def __init__(self, cluster: Cluster, settle_timeout: float = 60.0,
                 after_change: Callable[[], Awaitable[None]] | None = None) -> None:
        self.cluster = cluster
        self.members = list(cluster.ids)
        # a partition cuts its side from every running node: the members, and a departing node still handing off
        self.faults = Nemesis(cluster, nodes=lambda: [n for n in cluster.procs if cluster.alive(n)])
        self.settle_timeout = settle_timeout
        self.after_change = after_change
        self.windows: list[tuple[float, float]] = []
        self.log: list[str] = []
        self._down: set[str] = set()  # members killed by this driver (leader kill), restarted later
        self.epoch = 0  # the ring epoch of the last commit: settled means every node has applied at least it

    # --- what clients and checks may talk to ------------------------------------------------------------

    def live(self) -> list[str]:
        """Members whose process runs and answers (not killed, not paused by a fault)."""
        out = self.faults._paused | self.faults._killed | self._down
        return [m for m in self.members if self.cluster.alive(m) and m not in out]

    def coordinators(self) -> list[str]:
        return self.live() or self.members

    def during_change(self, t: float) -> bool:
        return any(a <= t <= b for a, b in self.windows)

    def _via(self, *avoid: str) -> str:
        return next(m for m in self.live() if m not in avoid)

    # --- admin --------------------------------------------------------------------------------------------

    async def _admin(self, op: str, body: dict[str, Any], *avoid: str) -> None:
        """Stage and commit one change; a 503 (no leader right now) or a lost answer is retried until the
        deadline. Such a request may still have been applied (a proposal answered 503 after 10 s can commit
        later, as in any Raft client), so a 409 after one is checked against the membership itself."""
        before = await self._members(*avoid)
        for step, doc in ((op, body), ("commit", {})):
            deadline = time.monotonic() + 30
            ambiguous = False
            while True:
                try:
                    status, got = await self.cluster.admin(self._via(*avoid), step, doc)
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    status, got = 0, {"reason": repr(exc)}
                if status == 200:
                    self.epoch = max(self.epoch, int(got.get("epoch") or 0))
                    break
                if status == 409 and ambiguous:  # did the earlier attempt take effect after all?
                    now = await self._members(*avoid)
                    if step != "commit" and now["staged"]:
                        break
                    if step == "commit" and not now["staged"] and now["epoch"] > before["epoch"]:
                        self.epoch = max(self.epoch, int(now["epoch"]))
                        self.log.append(f"{op}: an ambiguous commit had committed (epoch {now['epoch']})")
                        break
                if status not in (0, 503) or time.monotonic() > deadline:
                    raise AssertionError(f"admin {step} {doc}: {status} {got}")
                ambiguous = True
                await asyncio.sleep(0.2)

    async def _members(self, *avoid: str) -> dict[str, Any]:
        """The committed membership (a linearizable read through a live member), retried until there is one."""
        deadline = time.monotonic() + 30
        while True:
            try:
                status, doc = await self.cluster.admin(self._via(*avoid), "members")
                if status == 200:
                    return doc
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError("no linearizable read of the membership for 30 s")
            await asyncio.sleep(0.2)

    async def leader(self) -> str | None:
        for nid in self.live():
            try:
                status, doc = await self.cluster.admin(nid, "members")
            except (aiohttp.ClientError, asyncio.TimeoutError):
                continue
            if status == 200 and doc["raft"]["leader"] in self.members:
                return str(doc["raft"]["leader"])
        return None

    async def settled(self, nodes: list[str]) -> bool:
        """Every listed node has applied the same epoch and ring (at least the last commit's), with nothing
        staged or pending."""
        views = set()
        for nid in nodes:
            try:
                st = await self.cluster.status(nid)
            except (aiohttp.ClientError, AssertionError, asyncio.TimeoutError):
                return False
            m = st["membership"]
            views.add((st["ring"]["epoch"], tuple(st["ring"]["owners"]), bool(m["transfers_pending"]),
                       bool(m["staged"])))
        return len(views) == 1 and not any(v[2] or v[3] or v[0] < self.epoch for v in views)

    async def wait_settled(self, what: str, extra: list[str] | None = None) -> None:
        def nodes() -> list[str]:
            return self.live() + [n for n in extra or [] if self.cluster.alive(n)]

        try:
            await wait_for(lambda: self.settled(nodes()), self.settle_timeout, f"the ring to settle after {what}",
                           interval=0.2)
        except AssertionError as exc:
            raise AssertionError(f"{exc} (commit epoch {self.epoch}); views: {await self.views(nodes())}") from None

    async def views(self, nodes: list[str]) -> dict[str, Any]:
        """Each node's membership view, for a failure message."""
        out: dict[str, Any] = {}
        for nid in nodes:
            try:
                st = await self.cluster.status(nid)
            except (aiohttp.ClientError, AssertionError, asyncio.TimeoutError) as exc:
                out[nid] = repr(exc)
                continue
            m = st["membership"]
            out[nid] = {"epoch": st["ring"]["epoch"], "members": m["members"], "staged": m["staged"],
                        "transfers_pending": m["transfers_pending"], "raft_leader": st["raft"].get("leader")}
        return out

    # --- one change ---------------------------------------------------------------------------------------

    async def _start_new(self, nid: str) -> None:
        self.cluster.start(nid)
        await self.cluster.wait_healthy(nid)

    async def _stop(self, nid: str) -> None:
        if self.cluster.alive(nid):
            self.cluster.kill(nid, signal.SIGTERM)

    async def _with_fault(self, fault: Fault | None, settle: Callable[[], Awaitable[None]]) -> None:
        """Run `settle` while `fault` (if any) is in force for its duration, then heal and settle again."""
        if fault is None:
            await settle()
            return

        async def play() -> None:
            await self.faults.inject(fault)
            await asyncio.sleep(fault.duration_s)
            await self.faults.heal(fault)

        task = asyncio.create_task(play())
        try:
            await settle()
        finally:
            await task
        await settle()

    async def _commit(self, op: RingOp, ch: RingChange) -> list[str]:
        """Stage and commit the change; returns nodes that are not members any more but still run."""
        c = self.cluster
        if op is RingOp.JOIN:
            await self._start_new(ch.node)
            await self._admin("join", c.member_doc(ch.node))
            self.members.append(ch.node)
            return []
        if op is RingOp.LEAVE:
            await self._admin("leave", {"id": ch.node}, ch.node)
            self.members.remove(ch.node)
            return [ch.node]
        if op is RingOp.REMOVE:
            c.kill(ch.node, signal.SIGKILL)
            self.members.remove(ch.node)
            gone = ch.node

            def down_at(nid: str) -> Callable[[], Awaitable[bool]]:
                return lambda: c.sees(nid, gone, False)

            for nid in self.live():
                await wait_for(down_at(nid), 10, f"{nid} to see {gone} down")
            await self._admin("remove", {"id": ch.node})
            return []
        assert op is RingOp.REPLACE and ch.new is not None
        await self._start_new(ch.new)
        await self._admin("replace", {"old": ch.node, "new": c.member_doc(ch.new)}, ch.node)
        self.members = [m for m in self.members if m != ch.node] + [ch.new]
        return [ch.node]

    async def _change(self, op: RingOp, ch: RingChange) -> None:
        leaving = await self._commit(op, ch)
        # settled on the members (the departing node may stop receiving the log once it is out of the
        # Raft configuration): no transfer pending there means every moved partition was received
        await self._with_fault(ch.fault, lambda: self.wait_settled(f"{op.value} {ch.node}"))
        for nid in leaving:  # handed off: stop it (a replaced or departed node is not restarted)
            await self._stop(nid)
        for nid in self.live():
            await self.cluster.wait_ready(nid)

    async def apply(self, ch: RingChange) -> None:
        if ch.op is RingOp.CYCLE:
            await self._change(RingOp.JOIN, ch)
            await asyncio.sleep(ch.down_s)  # the workload runs with the newcomer a member (tombstones reaped)
            await self._change(RingOp.LEAVE, ch)
            return
        if ch.op is not RingOp.LEADER_KILL:
            await self._change(ch.op, ch)
            return
        assert ch.inner is not None
        leaving = await self._commit(ch.inner, ch)
        leader = await self.leader()
        if leader is not None:  # kill -9 the Raft leader while the partitions move
            self.cluster.kill(leader, signal.SIGKILL)
            self._down.add(leader)
            self.log.append(f"killed the Raft leader {leader}")
            await asyncio.sleep(ch.down_s)
            self.cluster.start(leader)
            self._down.discard(leader)
            await self.cluster.wait_healthy(leader)
        await self.wait_settled(f"{ch.inner.value} {ch.node} with the leader killed")
        for nid in leaving:
            await self._stop(nid)
        for nid in self.live():
            await self.cluster.wait_ready(nid)

    async def run(self, schedule: list[RingChange]) -> None:
        """Play the schedule; always leaves every member running, even on error."""
        try:
            for ch in schedule:
                await asyncio.sleep(ch.gap_s)
                began = time.monotonic()
                self.log.append(ch.describe())
                await self.apply(ch)
                self.windows.append((began, time.monotonic()))
                if self.after_change is not None:
                    await self.after_change()
        finally:
            await self.faults.heal_all()
            for nid in sorted(self._down):
                self.cluster.start(nid)
            self._down.clear()
