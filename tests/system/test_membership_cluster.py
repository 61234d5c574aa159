"""Membership changes on real node processes: grow 3 -> 5 and shrink back under writes; kill -9 the Raft
leader during a change. Every node must end at the same epoch and ring, with no acknowledged write lost."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from tests.harness import STRICT_ALL, Cluster, wait_for
from tests.history import History, Outcome

pytestmark = pytest.mark.cluster

SETTINGS = {"handoff": {"interval_ms": 100}, "antientropy": {"exchange_interval_s": 2.0}}


class Writer:
    """Writes distinct keys through the founding nodes until stopped, recording every outcome."""

    def __init__(self, c: Cluster, prefix: str, nodes: list[str]) -> None:
        self.c, self.prefix, self.nodes = c, prefix, nodes
        self.history = History()
        self.stop = asyncio.Event()
        self.n = 0

    async def run(self) -> None:
        while not self.stop.is_set():
            key, value = f"{self.prefix}{self.n:05d}", f"v{self.n}".encode()
            nid = self.nodes[self.n % len(self.nodes)]
            self.n += 1
            try:
                status, _, _ = await self.c.put(nid, key, value, {"X-Write-Quorum": "2"})
                outcome = Outcome.OK if status == 204 else Outcome.FAILED
            except (aiohttp.ClientError, asyncio.TimeoutError):
                outcome = Outcome.UNKNOWN
            self.history.record(key, value, outcome)


async def settled(c: Cluster, nodes: list[str]) -> bool:
    """Every listed node has applied the same epoch, with no transfer pending and the same ring."""
    views = []
    for nid in nodes:
        try:
            st = await c.status(nid)
        except (aiohttp.ClientError, AssertionError, asyncio.TimeoutError):
            return False
        m = st["membership"]
        views.append((st["ring"]["epoch"], tuple(st["ring"]["owners"]), bool(m["transfers_pending"]), bool(m["staged"])))
    return len(set(views)) == 1 and not views[0][2] and not views[0][3]


async def change(c: Cluster, via: str, op: str, body: dict[str, Any]) -> None:
    status, doc = await c.admin(via, op, body)
    assert status == 200, doc
    status, doc = await c.admin(via, "commit", {})
    assert status == 200, doc


async def test_grow_to_five_and_shrink_back_under_writes(make_cluster: Callable[..., Any]) -> None:
    c: Cluster = await make_cluster(3, SETTINGS)
    for k in range(300):  # data to stream
        assert (await c.put("n1", f"pre{k:04d}", b"x", {"X-Write-Quorum": "all"}))[0] == 204
    w = Writer(c, "g", ["n1", "n2", "n3"])
    writer = asyncio.create_task(w.run())
    for nid in ("n4", "n5"):
        c.start(nid)
        await c.wait_healthy(nid)
        t0 = time.monotonic()
        await change(c, "n1", "join", c.member_doc(nid))
        await wait_for(lambda: settled(c, c.ids + ["n4", "n5"][: int(nid[1:]) - 3]), 60, f"{nid} to join")
        print(f"\n{nid} joined in {time.monotonic() - t0:.1f}s")
    st = await c.status("n5")
    assert set(st["membership"]["members"]) == {"n1", "n2", "n3", "n4", "n5"}
    assert st["ring"]["owned"], "the new node owns partitions"
    for nid in ("n5", "n4"):
        await change(c, "n2", "leave", {"id": nid})
        await wait_for(lambda: settled(c, ["n1", "n2", "n3"]), 60, f"{nid} to leave")
    w.stop.set()
    await writer
    st = await c.status("n1")
    assert st["membership"]["members"] == {"n1": "active", "n2": "active", "n3": "active",
                                           "n4": "removed", "n5": "removed"}
    assert set(st["ring"]["owners"]) == {"n1", "n2", "n3"}
    assert w.history.check({}).acknowledged > 20
    await c.final_check(w.history, "n3")
    for k in range(300):
        status, _, body = await c.get("n2", f"pre{k:04d}", STRICT_ALL)
        assert status == 200 and body == b"x"


async def test_kill_the_raft_leader_during_a_join(make_cluster: Callable[..., Any]) -> None:
    c: Cluster = await make_cluster(3, SETTINGS)
    for k in range(300):
        assert (await c.put("n1", f"pre{k:04d}", b"x", {"X-Write-Quorum": "all"}))[0] == 204
    c.start("n4")
    await c.wait_healthy("n4")
    _, doc = await c.admin("n1", "members")
    leader = doc["raft"]["leader"]
    assert leader in c.ids
    survivor = next(n for n in c.ids if n != leader)
    w = Writer(c, "k", [n for n in c.ids if n != leader])
    writer = asyncio.create_task(w.run())
    await change(c, survivor, "join", c.member_doc("n4"))
    c.kill(leader)  # kill -9 the Raft leader while partitions stream
    live = [n for n in c.ids if n != leader] + ["n4"]

    async def new_leader() -> bool:
        try:
            status, d = await c.admin(survivor, "members")
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return False
        return status == 200 and d["raft"]["leader"] not in (None, leader)

    await wait_for(new_leader, 20, "a new Raft leader")
    c.start(leader)  # the killed node comes back with its data and catches up from the log
    await wait_for(lambda: settled(c, live + [leader]), 90, "the join to complete on every node")
    for nid in live + [leader]:  # the restarted leader and the new member are ready for admin changes again
        await c.wait_ready(nid)
    w.stop.set()
    await writer
    st = await c.status(leader)
    assert st["membership"]["members"]["n4"] == "active"
    await c.final_check(w.history, "n4")
    for k in range(300):
        status, _, body = await c.get("n4", f"pre{k:04d}", STRICT_ALL)
        assert status == 200 and body == b"x"
