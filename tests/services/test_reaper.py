"""Tombstone reaping (services/reaper.py) through fakes of its views: three nodes, each with its real replica,
Merkle trees and reaper answering `ae.check` / `ae.reap` over the in-memory network. The agreement rule
itself (antientropy/reaping.py) is tested pure in tests/antientropy/test_reaping.py."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from antientropy.merkle import MerkleTree
from dynamostore.kv import versioning as v
from dynamostore.kv.replica import LocalReplica
from dynamostore.services.merkle_trees import PartitionTrees
from dynamostore.services.reaper import TombstoneReaper
from tests.services.conftest import OpenReplica
from tests.services.fakes import Call, FakeLiveness, FakePlacement, Network, membership

Q = 4
SEGMENTS = 16
NODES = ["n1", "n2", "n3"]
KEY = b"gone"


@dataclass
class Node:
    replica: LocalReplica
    trees: PartitionTrees
    reaper: TombstoneReaper
    liveness: FakeLiveness


@pytest.fixture
def net() -> Network:
    return Network()


@pytest.fixture
async def nodes(net: Network, replicas: OpenReplica) -> AsyncIterator[dict[str, Node]]:
    out = {}
    state = membership(NODES, Q, 3)
    for n in NODES:
        replica = await replicas(n, partitions=Q, segments=SEGMENTS)
        trees = PartitionTrees(replica.storage, range(Q), SEGMENTS, scan_keys_per_sec=1_000_000)
        replica.on_change = trees.on_change
        liveness = FakeLiveness(n, NODES)
        reaper = TombstoneReaper(trees, grace_s=1.0, placement=FakePlacement(n, state), liveness=liveness,
                                 peers=net.peers(n), replica=replica, nodes=lambda: list(NODES))
        net.router(n).register("ae.check", reaper.rpc_check)
        net.router(n).register("ae.reap", reaper.rpc_reap)
        out[n] = Node(replica, trees, reaper, liveness)
    yield out


def states() -> tuple[v.VersionSet, v.VersionSet]:
    """A value written a minute ago and its delete ten seconds ago: the tombstone is past the 1 s grace."""
    now = int(time.time() * 1000)
    value = v.update(None, {}, "n1.1", b"old value", "t", now - 60_000)
    return value, v.update(value, value.clock, "n1.1", None, "t", now - 10_000)


async def store(node: Node, state: v.VersionSet, hint_for: str | None = None) -> None:
    await node.replica.merge(node.replica.ref(KEY), state, durable=False, hint_for=hint_for)


async def candidates(node: Node) -> tuple[int, dict[bytes, bytes]]:
    """What a sweep of the key's partition hands the reaper: tombstones past grace, key -> digest."""
    p = node.replica.ref(KEY).partition
    found: dict[int, dict[bytes, bytes]] = {}
    await node.trees.verify_partition(p, node.reaper.collector(found))
    return p, found.get(p, {})


async def stored(node: Node) -> bytes | None:
    return await node.replica.stored(node.replica.ref(KEY))


async def test_a_tombstone_every_node_agrees_on_is_reaped_everywhere(nodes: dict[str, Node], net: Network) -> None:
    _, tomb = states()
    for n in nodes.values():
        await store(n, tomb)
    p, found = await candidates(nodes["n1"])
    assert list(found) == [KEY]
    assert await nodes["n1"].reaper.reap(p, found) == 1
    assert [await stored(n) for n in nodes.values()] == [None, None, None]
    assert {c.node for c in net.calls_of("ae.reap")} == {"n2", "n3"}
    assert nodes["n1"].trees.root_hex(p) == MerkleTree(SEGMENTS).root().hex()  # the reap reached the tree
    assert (nodes["n1"].reaper.stats.reaped, nodes["n2"].reaper.stats.reaped) == (1, 1)


async def test_a_value_or_a_tombstone_within_grace_is_no_candidate(nodes: dict[str, Node]) -> None:
    value, _ = states()
    await store(nodes["n1"], value)
    assert (await candidates(nodes["n1"]))[1] == {}
    now = int(time.time() * 1000)
    await store(nodes["n1"], v.update(value, value.clock, "n1.1", None, "t", now))  # deleted just now
    assert (await candidates(nodes["n1"]))[1] == {}


async def test_a_node_down_defers_the_reap(nodes: dict[str, Node], net: Network) -> None:
    _, tomb = states()
    for n in nodes.values():
        await store(n, tomb)
    p, found = await candidates(nodes["n1"])
    nodes["n1"].liveness.set_down("n3", 0.0)  # it may hold an older copy: nobody can tell
    assert await nodes["n1"].reaper.reap(p, found) == 0
    assert net.calls == [] and nodes["n1"].reaper.stats.deferred == 1
    assert None not in [await stored(n) for n in nodes.values()]


async def test_a_primary_that_missed_the_delete_defers_the_reap(nodes: dict[str, Node], net: Network) -> None:
    value, tomb = states()
    await store(nodes["n1"], tomb)
    await store(nodes["n2"], tomb)
    await store(nodes["n3"], value)  # would bring the value back through anti-entropy
    p, found = await candidates(nodes["n1"])
    assert await nodes["n1"].reaper.reap(p, found) == 0
    assert net.calls_of("ae.reap") == [] and nodes["n1"].reaper.stats.deferred == 1
    assert None not in [await stored(n) for n in nodes.values()]


async def test_a_hint_held_anywhere_defers_the_reap(nodes: dict[str, Node], net: Network) -> None:
    value, tomb = states()
    for n in nodes.values():
        await store(n, tomb)
    await store(nodes["n2"], value, hint_for="n3")  # an old write n2 still has to carry to n3
    p, found = await candidates(nodes["n1"])
    assert await nodes["n1"].reaper.reap(p, found) == 0
    assert net.calls_of("ae.reap") == []
    assert None not in [await stored(n) for n in nodes.values()]


async def test_a_write_racing_the_reap_survives(nodes: dict[str, Node], net: Network) -> None:
    _, tomb = states()
    for n in nodes.values():
        await store(n, tomb)
    p, found = await candidates(nodes["n1"])
    n2 = nodes["n2"]

    async def write_on_n2_first(call: Call) -> None:
        if call.node == "n2":  # after everyone agreed, before n2 removes its record
            ref = n2.replica.ref(KEY)
            await n2.replica.coordinate(ref, tomb.clock, b"written again", "t", durable=False)

    net.before("ae.reap", write_on_n2_first)
    assert await nodes["n1"].reaper.reap(p, found) == 1
    assert await stored(nodes["n1"]) is None and await stored(nodes["n3"]) is None
    kept = await n2.replica.get(n2.replica.ref(KEY))
    assert kept is not None and [s.value for s in kept.live] == [b"written again"]  # not reaped by its old digest
    assert n2.reaper.stats.reaped == 0


async def test_malformed_requests_are_refused(nodes: dict[str, Node], net: Network) -> None:
    from dynamostore.net.rpc import RpcRemoteError

    with pytest.raises(RpcRemoteError, match="ae.check payload"):
        await net.deliver("n1", "n2", "ae.check", [0])
    with pytest.raises(RpcRemoteError, match="ae.reap payload"):
        await net.deliver("n1", "n2", "ae.reap", [0, [[b"k"]]])
    with pytest.raises(RpcRemoteError, match="not replicated here"):
        await net.deliver("n1", "n2", "ae.reap", [Q + 1, []])
    with pytest.raises(RpcRemoteError, match="not in partition"):
        other = next(p for p in range(Q) if p != nodes["n2"].replica.ref(KEY).partition)
        await net.deliver("n1", "n2", "ae.reap", [other, [[KEY, b"\x00" * 16]]])


async def removed_n4(replicas: OpenReplica, net: Network) -> dict[str, Node]:
    """n1..n3 after n4 was removed (it is down for good, and still in every node's address book, as the node
    hands the reaper every address it knows)."""
    from handoff.transfer import done_command, plan_transfer
    from ring.membership import Commit, StageRemove, apply

    state = membership([*NODES, "n4"], Q, 3, StageRemove("n4"), Commit(1))
    while state.transfers:
        state, res = apply(state, done_command(plan_transfer(state, state.transfers[0])))
        assert res.ok, res.reason
    assert state.members["n4"].status.value == "removed"
    out = {}
    for n in NODES:
        replica = await replicas(n, partitions=Q, segments=SEGMENTS)
        trees = PartitionTrees(replica.storage, range(Q), SEGMENTS, scan_keys_per_sec=1_000_000)
        replica.on_change = trees.on_change
        liveness = FakeLiveness(n, [*NODES, "n4"])
        liveness.set_down("n4", 0.0)
        reaper = TombstoneReaper(trees, grace_s=1.0, placement=FakePlacement(n, state), liveness=liveness,
                                 peers=net.peers(n), replica=replica, nodes=lambda: [*NODES, "n4"])
        net.router(n).register("ae.check", reaper.rpc_check)
        net.router(n).register("ae.reap", reaper.rpc_reap)
        out[n] = Node(replica, trees, reaper, liveness)
    return out


async def test_reaping_resumes_after_a_member_is_removed(replicas: OpenReplica, net: Network) -> None:
    """Issue 14, item 5: a removed member, down for good, must not hold every reap back."""
    nodes = await removed_n4(replicas, net)
    _, tomb = states()
    for n in nodes.values():
        await store(n, tomb)
    p, found = await candidates(nodes["n1"])
    assert await nodes["n1"].reaper.reap(p, found) == 1
    assert [await stored(n) for n in nodes.values()] == [None, None, None]
    assert "n4" not in {c.node for c in net.calls}


async def test_a_hint_held_for_a_removed_member_still_defers_the_reap(replicas: OpenReplica, net: Network) -> None:
    nodes = await removed_n4(replicas, net)
    value, tomb = states()
    for n in nodes.values():
        await store(n, tomb)
    await store(nodes["n2"], value, hint_for="n4")  # on its way to the key's owners (services/handoff.py)
    p, found = await candidates(nodes["n1"])
    assert await nodes["n1"].reaper.reap(p, found) == 0
    assert None not in [await stored(n) for n in nodes.values()]
