"""Staying available when nodes die: sloppy quorums, hinted handoff, and kill -9 of real node processes.

Every test records each write's outcome in a History and ends with the lost-write check: zero acknowledged
writes lost. Waits are on /status conditions with deadlines.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from ring.placement import initial_ring
from tests.harness import STRICT_ALL, Cluster, wait_for
from tests.history import History, Outcome, values_of

pytestmark = pytest.mark.cluster

FAST = {"handoff": {"interval_ms": 100}, "antientropy": {"enabled": False}}


def primaries(c: Cluster, key: str) -> list[str]:
    ring = initial_ring(c.ids, 64)
    return ring.preference_list(ring.partition_for_key(key.encode()), 3)[0]


async def write(c: Cluster, nid: str, key: str, value: bytes, h: History, headers: dict[str, str],
                supersedes: frozenset[bytes] = frozenset()) -> tuple[int, dict[str, str], bytes]:
    try:
        status, hd, body = await c.put(nid, key, value, headers)
    except (aiohttp.ClientError, asyncio.TimeoutError):
        h.record(key, value, Outcome.UNKNOWN, supersedes)
        raise
    h.record(key, value, Outcome.OK if status == 204 else Outcome.FAILED, supersedes)
    return status, hd, body


async def drained(c: Cluster, nodes: list[str]) -> bool:
    for nid in nodes:
        st = await c.status(nid)
        if st["handoff"]["pending_total"] != 0:
            return False
    return True


async def pending_total(c: Cluster, nodes: list[str]) -> int:
    return sum([int((await c.status(n))["handoff"]["pending_total"]) for n in nodes])


async def all_see_all_up(c: Cluster) -> bool:
    for a in c.ids:
        st = await c.status(a)
        if not all(m["liveness"]["up"] for m in st["members"]):
            return False
    return True


async def test_sloppy_writes_survive_two_kills_and_hints_drain_to_primaries(make_cluster: Callable[..., Any]) -> None:
    c: Cluster = await make_cluster(5, FAST)
    h = History()
    headers = {"X-Write-Quorum": "2"}
    statuses: list[int] = []

    async def client(w: int) -> None:
        for i in range(w, 1000, 8):
            status, hd, body = await write(c, "n1", f"key{i:04d}", f"v{i}".encode(), h, headers)
            statuses.append(status)
            assert status == 204, (status, body)
            if i == 300:
                c.kill("n4")
                c.kill("n5")

    await asyncio.gather(*(client(w) for w in range(8)))
    assert statuses.count(204) == 1000
    hinted_total = await pending_total(c, ["n1", "n2", "n3"])
    assert hinted_total > 0
    start = time.monotonic()
    c.start("n4")
    c.start("n5")
    await c.wait_healthy("n4")
    await c.wait_healthy("n5")
    await wait_for(lambda: all_see_all_up(c), 15, "every node to see every node up")
    await wait_for(lambda: drained(c, c.ids), 60, "every hint to be delivered")
    print(f"\n{hinted_total} hints drained in {time.monotonic() - start:.1f}s after restart")
    await c.final_check(h, "n1")


async def test_strict_quorum_refuses_writes_whose_primaries_are_down_and_loses_none(
    make_cluster: Callable[..., Any],
) -> None:
    c: Cluster = await make_cluster(5, FAST)
    c.kill("n4")
    c.kill("n5")
    for peer in ("n4", "n5"):
        await wait_for(lambda p=peer: c.sees("n1", p, False), 5, f"n1 to see {peer} down")
    h = History()
    headers = {"X-Write-Quorum": "2", "X-Sloppy-Quorum": "false"}
    refused = 0
    for i in range(300):
        key = f"s{i:04d}"
        status, _, body = await write(c, "n1", key, f"v{i}".encode(), h, headers)
        dead_primaries = {"n4", "n5"} & set(primaries(c, key))
        if len(dead_primaries) == 2:
            assert status == 503, key
            reason = json.loads(body)["reason"]
            assert "w=2" in reason and "primary" in reason
            refused += 1
        else:
            assert status == 204, (key, body)
    assert 0 < refused < 300
    assert await pending_total(c, ["n1", "n2", "n3"]) == 0
    c.start("n4")
    c.start("n5")
    await wait_for(lambda: all_see_all_up(c), 20, "every node to see every node up")
    await c.final_check(h, "n1")


async def test_hints_survive_a_kill_of_the_fallback_holding_them(make_cluster: Callable[..., Any]) -> None:
    c: Cluster = await make_cluster(5, FAST)
    c.kill("n5")
    await wait_for(lambda: c.sees("n1", "n5", False), 5, "n1 to see n5 down")
    h = History()
    keys = [k for k in (f"h{i:04d}" for i in range(600)) if "n5" in primaries(c, k)][:150]
    for key in keys:
        status, _, _ = await write(c, "n1", key, key.encode(), h, {"X-Write-Quorum": "2"})
        assert status == 204
    holders = {}
    for nid in ["n2", "n3", "n4"]:
        pending = (await c.status(nid))["handoff"]["pending"].get("n5", 0)
        if pending:
            holders[nid] = pending
    assert holders, "some fallback must hold hints for n5"
    fallback, count = sorted(holders.items())[0]
    c.kill(fallback)  # kill -9 before it could deliver (n5 is still down)
    c.start(fallback)
    await c.wait_healthy(fallback)
    assert (await c.status(fallback))["handoff"]["pending"].get("n5") == count
    c.start("n5")
    await wait_for(lambda: all_see_all_up(c), 20, "every node to see every node up")
    await wait_for(lambda: drained(c, c.ids), 60, "every hint to be delivered")
    assert (await c.status(fallback))["handoff"]["delivered"]["n5"] >= count
    # n5 alone now answers for the keys it is primary of: stop reading through the others
    for key in keys:
        status, _, body = await c.get("n5", key, STRICT_ALL)
        assert status == 200 and body == key.encode()
    await c.final_check(h, "n1")


async def test_contexts_written_while_a_primary_was_down_resolve_right_after_handoff(
    make_cluster: Callable[..., Any],
) -> None:
    c: Cluster = await make_cluster(5, FAST)
    h = History()
    keys = [k for k in (f"c{i:04d}" for i in range(400)) if "n5" in primaries(c, k)][:20]
    for key in keys:  # the old version reaches all three primaries, n5 included
        assert (await write(c, "n1", key, b"old", h, {"X-Write-Quorum": "all"}))[0] == 204
    c.kill("n5")
    await wait_for(lambda: c.sees("n1", "n5", False), 5, "n1 to see n5 down")
    for key in keys:
        status, hd, body = await c.get("n2", key, {"Accept": "application/json"})
        assert status == 200 and body == b"old"
        ctx = hd["X-Context"]
        # a write that read "old" replaces it; a blind write is concurrent with everything
        assert (await write(c, "n2", key, b"new", h, {"X-Context": ctx}, frozenset({b"old"})))[0] == 204
        assert (await write(c, "n3", key, b"blind", h, {}))[0] == 204
    c.start("n5")
    await wait_for(lambda: all_see_all_up(c), 20, "every node to see every node up")
    await wait_for(lambda: drained(c, c.ids), 60, "every hint to be delivered")
    for key in keys:
        # n5 comes back holding "old"; after handoff the strict read (primaries only) must show exactly the
        # replacement and the concurrent blind write, never the superseded "old".
        status, hd, body = await c.get("n5", key, STRICT_ALL)
        assert values_of(status, hd, body) == {b"new", b"blind"}, key
    await c.final_check(h, "n1")
