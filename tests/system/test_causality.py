"""The causality contract on a real cluster (docs/causality.md): a write's context covers only what its writer
saw, a DELETE without a context deletes what is there, and a node that lost its data never mints a dot again
that its earlier life minted."""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Callable
from typing import Any

import pytest

from tests.harness import STRICT_ALL, Cluster, wait_for

pytestmark = pytest.mark.cluster

# No anti-entropy or handoff: what each node holds is exactly what the test wrote through it.
QUIET = {"handoff": {"enabled": False}, "antientropy": {"enabled": False}}
ALL = {"X-Write-Quorum": "all"}


async def values(c: Cluster, via: str, key: str) -> tuple[int, list[bytes]]:
    status, _, body = await c.get(via, key, STRICT_ALL)
    if status == 300:
        return status, sorted(base64.b64decode(s["value"]) for s in json.loads(body)["siblings"])
    return status, [body] if status == 200 else []


async def test_a_writes_context_never_drops_a_sibling_its_writer_did_not_read(make_cluster: Callable[..., Any]) -> None:
    """Four nodes, N=3: through n1, one key's writes are coordinated by n1 and another's are forwarded to a
    primary (the context's dot cloud then crosses kv.coord_put)."""
    c: Cluster = await make_cluster(4, QUIET)
    seen = set()
    for i in range(40):
        key = f"cart{i}"
        status, h, _ = await c.put("n1", key, b"alice", ALL)
        assert status == 204
        forwarded = h["X-Coordinator"] != "n1"
        if forwarded in seen:
            continue
        seen.add(forwarded)
        status, h, _ = await c.put("n1", key, b"bob", ALL)
        assert status == 204
        # bob's writer keeps "the last context it saw", its own write's, and writes again
        assert (await c.put("n1", key, b"bob-v2", {**ALL, "X-Context": h["X-Context"]}))[0] == 204
        assert await values(c, "n2", key) == (300, [b"alice", b"bob-v2"]), forwarded
        # returnbody answers with the merged state and a context covering all of it, as before
        status, h, body = await c.put("n1", key, b"both", {**ALL, "Accept": "application/json"}, returnbody="true")
        assert status == 300 and len(json.loads(body)["siblings"]) == 3
        assert (await c.put("n1", key, b"merged", {**ALL, "X-Context": h["X-Context"]}))[0] == 204
        assert await values(c, "n3", key) == (200, [b"merged"])
    assert seen == {True, False}


async def test_a_delete_without_a_context_deletes_what_is_there(make_cluster: Callable[..., Any]) -> None:
    c: Cluster = await make_cluster(3, QUIET)
    assert (await c.put("n1", "gone", b"a", ALL))[0] == 204
    assert (await c.put("n2", "gone", b"b", ALL))[0] == 204  # two siblings
    assert (await values(c, "n3", "gone"))[0] == 300
    status, h, _ = await c.delete("n3", "gone", {**ALL, "X-Read-Quorum": "all"})
    assert status == 204 and h["X-Deleted-Siblings"] == "2", h
    assert await values(c, "n1", "gone") == (404, [])
    # nothing there: 404, and nothing is written
    status, h, body = await c.delete("n2", "gone", {**ALL, "X-Read-Quorum": "all"})
    assert status == 404 and h["X-Deleted-Siblings"] == "0", (status, h, body)


async def test_a_node_whose_data_was_wiped_never_reuses_a_dot(make_cluster: Callable[..., Any]) -> None:
    c: Cluster = await make_cluster(3, QUIET)
    assert (await c.put("n1", "k", b"old", ALL))[0] == 204
    c.kill("n1")
    shutil.rmtree(c.root / "n1")
    c.start("n1")
    await c.wait_healthy("n1")
    for a, b in (("n1", "n2"), ("n1", "n3"), ("n2", "n1"), ("n3", "n1")):
        await wait_for(lambda a=a, b=b: c.sees(a, b, True), 15, f"{a} to see {b} up")
    # n1 holds nothing now: its blind write is concurrent with the old one, which n2 and n3 hold
    assert (await c.put("n1", "k", b"new", ALL))[0] == 204
    assert await values(c, "n2", "k") == (300, [b"new", b"old"])
