"""`GET /debug/kv/{key}` on real node processes: a hinted copy held for a dead primary is found on the fallback,
the dead primary is reported unreachable, and the explanation names the hint; bad keys are refused."""

from __future__ import annotations

import signal
from typing import Any

import pytest

from ring.placement import initial_ring
from tests.harness import Cluster, wait_for

pytestmark = pytest.mark.cluster


async def _debug(c: Cluster, nid: str, key: str) -> tuple[int, dict[str, Any]]:
    s = await c.http()
    async with s.get(f"{c.url(nid)}/debug/kv/{key}") as r:
        return r.status, await r.json()


async def test_the_inspector_finds_the_hint_a_fallback_holds_for_a_dead_primary(make_cluster: Any) -> None:
    c: Cluster = await make_cluster(3, settings={"cluster": {"n_val": 2}, "handoff": {"enabled": False}})
    ring = initial_ring(c.ids, 64)
    key = next(k for k in (f"k{i}" for i in range(500))
               if ring.preference_list(ring.partition_for_key(k.encode()), 2)[0] == ["n2", "n3"])
    c.kill("n3", signal.SIGKILL)
    await wait_for(lambda: c.sees("n2", "n3", False), 10, "n2 to see n3 down")
    status, hd, _ = await c.put("n2", key, b"while n3 was down", {"X-Write-Quorum": "2"})
    assert status == 204 and hd["X-Hinted"] == "1"

    status, doc = await _debug(c, "n2", key)
    assert status == 200 and doc["preference_list"] == {"primaries": ["n2", "n3"], "fallbacks": ["n1"]}
    by = {(cp["node"], cp["kind"]): cp for cp in doc["copies"]}
    n2 = by[("n2", "data")]["record"]
    hint = by[("n1", "hint")]
    assert hint["target"] == "n3" and hint["role"] == "fallback 1"
    assert [s["dot"] for s in hint["record"]["siblings"]] == [s["dot"] for s in n2["siblings"]]
    assert hint["record"]["siblings"][0]["preview"] == "while n3 was down"
    assert by[("n3", "data")]["error"] == "unreachable" and doc["primaries_agree"] is False
    assert by[("n1", "data")]["record"] is None  # n1 holds it only as a hint
    assert any("n1 holds a hinted copy for n3" in line for line in doc["explanation"])
    assert any("Could not ask n3" in line for line in doc["explanation"])

    c.start("n3")  # back, with handoff off: n3 answers, lacks the write, and the hint is still named
    await c.wait_healthy("n3")
    await wait_for(lambda: c.sees("n1", "n3", True), 10, "n1, which is asked next, to see n3 up")
    status, doc = await _debug(c, "n1", key)
    n3 = next(cp for cp in doc["copies"] if cp["node"] == "n3" and cp["kind"] == "data")
    dot = doc["merged"]["siblings"][0]["dot"]
    assert n3["record"] is None and n3["missing"] == [f"{dot[0]}:{dot[1]}"]
    assert any(line.startswith(f"Primary n3 lacks {dot[0]}:{dot[1]}; n1 hold(s) a hint") for line in doc["explanation"])


async def test_bad_keys_are_refused_with_a_reason(make_cluster: Any) -> None:
    c: Cluster = await make_cluster(1)
    s = await c.http()
    for target, status in [("/debug/kv/", 400), ("/debug/kv/" + "x" * 5000, 400), ("/debug/kv/absent", 200)]:
        async with s.get(c.url("n1") + target) as r:
            body = await r.json()
            assert r.status == status, (target, r.status, body)
            if status == 400:
                assert body["error"] == "bad_request" and "key" in body["reason"]
            else:
                assert body["merged"] is None and "No node holds this key" in body["explanation"][-1]
