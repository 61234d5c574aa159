"""Issue 14's reproductions on real node processes.

- A leave must not make a node a primary of a partition it never received: 4 nodes with anti-entropy off
  (nothing repairs behind the transfers' back), keys written at W=3 strict, `admin leave n4`, commit, wait
  until no transfer is pending, stop n4: every key must read 200 at strict R=1 through every remaining node.
  Before the fix, the nodes pulled into preference lists by the leave (not the transfers' targets) held
  nothing for the partitions they gained, and some keys read 404.
- A reaped delete must not come back when a partition returns to a former owner: 3 nodes, anti-entropy on
  with a 1 s tombstone grace, n4 joins, every key deleted with its context at W=ALL, the tombstones reaped,
  n4 leaves: every key must read 404 at R=ALL on every node. Before the fix, the former owners still held
  the old values of the partitions n4 had taken, and served them again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from tests.harness import Cluster, wait_for

pytestmark = pytest.mark.cluster

SETTINGS = {"antientropy": {"enabled": False}, "handoff": {"interval_ms": 100}}
W3 = {"X-Write-Quorum": "3", "X-Sloppy-Quorum": "false"}
R1 = {"X-Read-Quorum": "1", "X-Sloppy-Quorum": "false"}


async def left(c: Cluster, nodes: list[str], leaver: str) -> bool:
    """Every listed node has applied the same ring, with no transfer pending and `leaver` removed."""
    views = []
    for nid in nodes:
        try:
            st = await c.status(nid)
        except (aiohttp.ClientError, AssertionError, asyncio.TimeoutError):
            return False
        m = st["membership"]
        views.append((st["ring"]["epoch"], tuple(st["ring"]["owners"]), bool(m["transfers_pending"]),
                      m["members"].get(leaver)))
    return len(set(views)) == 1 and not views[0][2] and views[0][3] == "removed"


async def admin(c: Cluster, nid: str, op: str, body: dict[str, Any]) -> None:
    """An admin change that must be accepted; retried while the node has not applied the bootstrap yet (its
    /health answers before it can take a membership change: issue 14, item 6, a readiness check)."""
    outcome: list[tuple[int, dict[str, Any]]] = []

    async def accepted() -> bool:
        status, doc = await c.admin(nid, op, body)
        outcome[:] = [(status, doc)]
        if status == 200:
            return True
        assert status in (409, 503) and ("not bootstrapped" in str(doc) or status == 503), doc
        return False

    await wait_for(accepted, 30, f"admin {op} to be accepted (last: {outcome})")


async def test_after_a_leave_every_key_written_at_w3_reads_at_r1_on_every_node(
        make_cluster: Callable[..., Any]) -> None:
    c: Cluster = await make_cluster(4, SETTINGS)
    keys = [f"k{i:03d}" for i in range(120)]
    for k in keys:
        assert (await c.put(f"n{1 + len(k) % 4}", k, k.encode(), W3))[0] == 204
    await admin(c, "n1", "leave", {"id": "n4"})
    await admin(c, "n1", "commit", {})
    survivors = ["n1", "n2", "n3"]
    await wait_for(lambda: left(c, survivors, "n4"), 60, "n4 to leave")
    c.kill("n4")
    missing = []
    for nid in survivors:
        for k in keys:
            status, _, body = await c.get(nid, k, R1)
            if status != 200 or body != k.encode():
                missing.append((nid, k, status))
    assert missing == [], f"{len(missing)} reads at R=1 missed a key written at W=3"


REAP = {"antientropy": {"tombstone_grace_s": 1.0, "sweep_interval_s": 1.0, "exchange_interval_s": 1.0,
                        "segments": 16},
        "handoff": {"interval_ms": 100}}
ALL = {"X-Read-Quorum": "all", "X-Write-Quorum": "all", "X-Sloppy-Quorum": "false"}


async def reaped(c: Cluster, nodes: list[str]) -> int:
    total = 0
    for nid in nodes:
        st = await c.status(nid)
        total += st["antientropy"]["totals"]["tombstones"]["reaped"]
    return total


async def test_a_reaped_delete_stays_deleted_when_a_joined_node_leaves_again(
        make_cluster: Callable[..., Any]) -> None:
    c: Cluster = await make_cluster(3, REAP)
    keys = [f"d{i:03d}" for i in range(60)]
    for k in keys:
        assert (await c.put("n1", k, b"old", ALL))[0] == 204
    c.start("n4")
    await c.wait_healthy("n4")
    await admin(c, "n1", "join", c.member_doc("n4"))
    await admin(c, "n1", "commit", {})
    everyone = ["n1", "n2", "n3", "n4"]

    async def joined() -> bool:
        sts = [await c.status(n) for n in everyone]
        return all(s["membership"]["members"].get("n4") == "active" and not s["membership"]["transfers_pending"]
                   for s in sts) and len({s["ring"]["epoch"] for s in sts}) == 1

    await wait_for(joined, 60, "n4 to join")
    for k in keys:
        status, hd, _ = await c.get("n2", k, ALL)
        assert status == 200
        status, _, _ = await c.delete("n2", k, {**ALL, "X-Context": hd["X-Context"]})
        assert status == 204
    await wait_for(lambda: _at_least(reaped(c, everyone), 3 * len(keys)), 60, "the tombstones to be reaped")
    await admin(c, "n1", "leave", {"id": "n4"})
    await admin(c, "n1", "commit", {})
    await wait_for(lambda: left(c, ["n1", "n2", "n3"], "n4"), 60, "n4 to leave")
    back = []
    for nid in ["n1", "n2", "n3"]:
        for k in keys:
            status, _, _ = await c.get(nid, k, ALL)
            if status != 404:
                back.append((nid, k, status))
    assert back == [], f"{len(back)} reads found a deleted key again"


async def _at_least(n: Any, want: int) -> bool:
    return bool(await n >= want)
