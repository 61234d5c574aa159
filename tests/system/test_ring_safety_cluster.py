"""Issue 14's reproduction on real node processes: a leave must not make a node a primary of a partition it
never received.

4 nodes with anti-entropy off (nothing repairs behind the transfers' back), keys written at W=3 strict,
`admin leave n4`, commit, wait until no transfer is pending, stop n4: every key must read 200 at strict R=1
through every remaining node. Before the fix, the nodes pulled into preference lists by the leave (not the
transfers' targets) held nothing for the partitions they gained, and some keys read 404.
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


async def test_after_a_leave_every_key_written_at_w3_reads_at_r1_on_every_node(
        make_cluster: Callable[..., Any]) -> None:
    c: Cluster = await make_cluster(4, SETTINGS)
    keys = [f"k{i:03d}" for i in range(120)]
    for k in keys:
        assert (await c.put(f"n{1 + len(k) % 4}", k, k.encode(), W3))[0] == 204
    status, doc = await c.admin("n1", "leave", {"id": "n4"})
    assert status == 200, doc
    status, doc = await c.admin("n1", "commit", {})
    assert status == 200, doc
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
