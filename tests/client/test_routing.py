"""The client's routing table, stepped with an explicit clock and a seeded random: which nodes a key's
requests go to, in which order, and when the ring is read again."""

from __future__ import annotations

import random
from typing import Any

import pytest

from dynamostore.client.routing import RoutingTable
from ring.hashing import locate
from ring.placement import initial_ring

NODES = ["n1", "n2", "n3", "n4", "n5"]
Q = 16


def status_doc(epoch: int = 3, down: tuple[str, ...] = (), nodes: list[str] = NODES) -> dict[str, Any]:
    """The shape of a node's /status (only what the client reads)."""
    ring = initial_ring(nodes, Q)
    return {
        "node": nodes[0],
        "ring": {"epoch": epoch, "partitions": Q, "n_val": 3, "owners": list(ring.owners)},
        "members": [{"id": n, "http": f"127.0.0.1:{8000 + i}", "liveness": {"up": n not in down}}
                    for i, n in enumerate(nodes)],
    }


def table(**kw: Any) -> RoutingTable:
    t = RoutingTable(["http://127.0.0.1:8000"], rng=random.Random(7), **kw)
    assert t.load(status_doc(), 0.0)
    return t


def primaries_of(key: bytes) -> tuple[list[str], list[str]]:
    ring = initial_ring(NODES, Q)
    return ring.preference_list(locate(key, Q, 1)[0], 3)


def test_a_key_goes_to_its_primaries_first_then_its_fallbacks() -> None:
    t = table()
    for i in range(50):
        key = f"key{i}".encode()
        prim, fb = primaries_of(key)
        order = [x.node or "" for x in t.targets(key, 1.0)]
        assert sorted(order[:3]) == sorted(prim) and order[3:] == fb
        assert all(x.url.startswith("http://127.0.0.1:80") for x in t.targets(key, 1.0))


def test_the_first_primary_is_spread_over_all_three() -> None:
    t = table()
    firsts = {t.targets(b"hot", 1.0)[0].node for _ in range(60)}
    assert firsts == set(primaries_of(b"hot")[0])


def test_a_failed_primary_goes_after_the_live_fallbacks_until_down_for_passes() -> None:
    t = table(down_for=2.0)
    prim, fb = primaries_of(b"k")
    t.failed(prim[0], now=10.0)
    order = [x.node for x in t.targets(b"k", 11.0)]
    assert order[:2] == [p for p in order[:2] if p in prim[1:]] and order[2:4] == fb and order[4] == prim[0]
    assert sorted(x.node or "" for x in t.targets(b"k", 12.5)[:3]) == sorted(prim)  # believed up again
    t.answered(prim[0], prim[0], write=True)


def test_a_node_reported_down_by_status_is_tried_last() -> None:
    prim, fb = primaries_of(b"k")
    t = RoutingTable(["http://127.0.0.1:8000"], rng=random.Random(1))
    assert t.load(status_doc(down=(prim[1],)), 0.0)
    order = [x.node for x in t.targets(b"k", 1.0)]
    assert prim[1] not in order[:4] and set(order) == set(NODES)


def test_random_routing_uses_every_live_node() -> None:
    t = table(mode="random")
    firsts = {t.targets(b"k", 1.0)[0].node for _ in range(100)}
    assert firsts == set(NODES)


def test_before_the_ring_is_known_the_seeds_take_turns() -> None:
    t = RoutingTable(["http://a:1/", "http://b:2"], rng=random.Random(1))
    assert [x.url for x in t.targets(b"k", 0.0)] == ["http://a:1", "http://b:2"]
    assert [x.url for x in t.targets(b"k", 0.0)] == ["http://b:2", "http://a:1"]
    assert t.needs_refresh(0.0)


def test_refresh_on_a_timer_and_on_signs_of_change_but_never_in_a_storm() -> None:
    t = RoutingTable(["http://127.0.0.1:8000"], rng=random.Random(1), refresh_interval=10.0, min_refresh=0.5)
    assert t.load(status_doc(), 0.0)
    assert not t.needs_refresh(5.0) and t.needs_refresh(10.0)
    assert t.load(status_doc(), 10.0)
    t.failed("n2", 11.0)
    assert t.needs_refresh(11.0)
    t.refreshing(11.0)
    assert not t.needs_refresh(11.2)  # a refresh was just tried
    assert t.needs_refresh(11.6)
    assert t.load(status_doc(), 12.0)
    t.answered("n1", "n1", write=True)
    t.answered("n1", "n2", write=False)  # a read is coordinated where it lands; nothing to learn
    assert not t.needs_refresh(12.6)
    t.answered("n1", "n2", write=True)  # n1 forwarded the write: its ring does not make it a replica
    assert t.needs_refresh(12.6)
    assert t.load(status_doc(), 13.0)
    t.answered("n1", "n9", write=False)  # a coordinator this client has never heard of
    assert t.needs_refresh(13.6)


def test_a_new_epoch_replaces_the_ring() -> None:
    t = table()
    assert t.epoch == 3
    six = NODES + ["n6"]
    assert t.load(status_doc(epoch=4, nodes=six), 1.0)
    assert t.epoch == 4 and "n6" in t.urls
    ring = initial_ring(six, Q)
    key = b"moved"
    prim = ring.preference_list(locate(key, Q, 1)[0], 3)[0]
    assert sorted(x.node or "" for x in t.targets(key, 2.0)[:3]) == sorted(prim)


def test_a_status_without_a_ring_changes_nothing() -> None:
    t = table()
    doc = status_doc()
    doc["ring"]["owners"] = []
    assert not t.load(doc, 1.0)
    assert not t.load({"node": "n1"}, 1.0)
    assert t.epoch == 3


def test_member_urls_follow_the_seeds_scheme_and_bracket_ipv6() -> None:
    t = RoutingTable(["https://[::1]:8000"], rng=random.Random(1))
    doc = status_doc()
    doc["members"][0]["http"] = "::1:8000"
    assert t.load(doc, 0.0)
    assert t.urls["n1"] == "https://[::1]:8000" and t.urls["n2"] == "https://127.0.0.1:8001"


def test_seeds_mode_never_reads_the_ring_and_keeps_to_the_urls_given() -> None:
    t = RoutingTable(["http://a:1", "http://b:2"], rng=random.Random(1), mode="seeds")
    assert not t.needs_refresh(0.0)
    assert t.load(status_doc(), 0.0)  # even with a ring at hand
    assert [x.url for x in t.targets(b"k", 1.0)] == ["http://a:1", "http://b:2"]


def test_routing_mode_is_checked() -> None:
    with pytest.raises(ValueError):
        RoutingTable(["http://a:1"], rng=random.Random(1), mode="nearest")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        RoutingTable([], rng=random.Random(1))
