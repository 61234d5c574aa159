"""A rolling upgrade's middle: one node speaks only the previous RPC protocol version (1, as the release before
version ranges: DYNAMOSTORE_RPC_VERSION_MAX=1) beside nodes of the current one. They negotiate per connection:
the old node and its peers talk version 1, the new nodes version 2 among themselves; replication, reads,
forwarded writes and Raft all cross the boundary. Then the old node is restarted at the current version (its
upgrade) and every connection speaks version 2."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from dynamostore.net import wire as w
from tests.harness import Cluster, wait_for

pytestmark = pytest.mark.cluster

OLD = {"DYNAMOSTORE_RPC_VERSION_MAX": "1"}


async def versions(c: Cluster, nid: str) -> dict[str, dict[str, int]]:
    rpc = (await c.status(nid))["rpc"]
    return {"inbound": rpc["inbound"], "outbound": rpc["outbound"]}


async def test_a_node_of_the_previous_protocol_version_beside_current_ones(make_cluster: Callable[..., Any]) -> None:
    c: Cluster = await make_cluster(3, start=False)
    c.start("n1")
    c.start("n2")
    c.start("n3", env=OLD)
    for nid in c.ids:
        await c.wait_healthy(nid)
    for a in c.ids:
        for b in c.ids:
            if a != b:
                await wait_for(lambda a=a, b=b: c.sees(a, b, True), 15, f"{a} to see {b} up")
    assert (await c.status("n3"))["rpc"]["versions"] == [1, 1]
    assert (await c.status("n1"))["rpc"]["versions"] == [w.MIN_VERSION, w.VERSION]

    # writes that need every replica, coordinated by a new node and by the old one, read back across
    for coord, reader, key in (("n1", "n3", "from-new"), ("n3", "n1", "from-old")):
        status, _, _ = await c.put(coord, key, key.encode(), {"X-Write-Quorum": "all"})
        assert status == 204, (coord, status)
        status, _, body = await c.get(reader, key, {"X-Read-Quorum": "all", "X-Sloppy-Quorum": "false"})
        assert status == 200 and body == key.encode()

    v1, v2, v3 = [await versions(c, n) for n in ("n1", "n2", "n3")]
    assert v1 == {"outbound": {"n2": 2, "n3": 1}, "inbound": {"n2": 2, "n3": 1}}, v1
    assert v2 == {"outbound": {"n1": 2, "n3": 1}, "inbound": {"n1": 2, "n3": 1}}, v2
    assert v3 == {"outbound": {"n1": 1, "n2": 1}, "inbound": {"n1": 1, "n2": 1}}, v3

    # Raft crosses the boundary too: one leader elected, seen by all, and a token change committed everywhere
    async def one_leader() -> bool:
        leaders = {(await c.status(n))["raft"]["leader"] for n in c.ids}
        return len(leaders) == 1 and None not in leaders

    await wait_for(one_leader, 20, "one Raft leader seen by every node")
    s = await c.http()
    async with s.post(c.url("n3") + "/admin/tokens", json={"name": "crossing", "roles": ["read"]}) as r:
        assert r.status == 201, await r.text()
        made = await r.json()

    async def everyone_has_it() -> bool:
        for n in c.ids:
            async with s.get(c.url(n) + "/admin/tokens") as r:
                if made["id"] not in {t["id"] for t in (await r.json())["tokens"]}:
                    return False
        return True

    await wait_for(everyone_has_it, 20, "the token, proposed through the old node, on every node")

    # the upgrade: n3 restarts at the current version; every connection then speaks version 2
    c.kill("n3")
    c.start("n3")
    await c.wait_healthy("n3")

    async def all_current() -> bool:
        for n in c.ids:
            vs = await versions(c, n)
            peers = {p for p in c.ids if p != n}
            if vs["outbound"] != {p: 2 for p in peers} or vs["inbound"] != {p: 2 for p in peers}:
                return False
        return True

    await wait_for(all_current, 20, "every connection to speak version 2 after the upgrade")
    status, _, body = await c.get("n3", "from-old", {"X-Read-Quorum": "all"})
    assert status == 200 and body == b"from-old"
