"""Anti-entropy in the node (services/antientropy.py) through fakes of its views: three services, each over its
own real replica, exchange Merkle trees over the in-memory network. The fake clock moves only when the test
says so, so no exchange starts on its own unless a test advances it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from antientropy.scheduler import ExchangeOutcome
from dynamostore.config import AntiEntropySettings
from dynamostore.kv import versioning as v
from dynamostore.kv.replica import LocalReplica
from dynamostore.metrics import NodeMetrics
from dynamostore.runtime import LoopClock
from dynamostore.services.antientropy import AntiEntropyService
from tests.services.conftest import OpenReplica
from tests.services.fakes import FakeClock, FakeLiveness, FakePlacement, Network, membership, until

Q = 4
SEGMENTS = 16
NODES = ["n1", "n2", "n3"]
INTERVAL = 10.0


@dataclass
class Node:
    service: AntiEntropyService
    replica: LocalReplica
    liveness: FakeLiveness
    metrics: NodeMetrics


async def start_node(net: Network, clock: FakeClock | LoopClock, replica: LocalReplica, node: str) -> Node:
    liveness = FakeLiveness(node, NODES)
    metrics = NodeMetrics(node)
    svc = AntiEntropyService(
        AntiEntropySettings(segments=SEGMENTS, exchange_interval_s=INTERVAL, scan_keys_per_sec=1_000_000,
                            max_keys_per_sec=100_000),
        placement=FakePlacement(node, membership(NODES, Q, 3)), liveness=liveness, peers=net.peers(node),
        methods=net.router(node), replica=replica, storage=replica.storage, metrics=metrics, clock=clock,
        nodes=lambda: list(NODES),
    )
    await svc.start()
    await until(lambda: len(svc.trees.built) == Q, f"{node}'s trees to be built")
    return Node(svc, replica, liveness, metrics)


@pytest.fixture
def net() -> Network:
    return Network()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def stores(replicas: OpenReplica) -> dict[str, LocalReplica]:
    return {n: await replicas(n, partitions=Q, segments=SEGMENTS) for n in NODES}


@pytest.fixture
async def nodes(net: Network, clock: FakeClock, stores: dict[str, LocalReplica]) -> AsyncIterator[dict[str, Node]]:
    """The three nodes with different data, written before their services start (found by the tree build):
    n1 alone has a00..a19, n2 alone b00..b19, both a concurrent write each to "c"; n3 has nothing."""
    for i in range(20):
        await write(stores["n1"], b"a%02d" % i, b"from n1")
        await write(stores["n2"], b"b%02d" % i, b"from n2")
    await write(stores["n1"], b"c", b"x")
    await write(stores["n2"], b"c", b"y")
    started = {n: await start_node(net, clock, stores[n], n) for n in NODES}
    yield started
    for node in started.values():
        await node.service.stop()


async def write(r: LocalReplica, key: bytes, value: bytes) -> None:
    await r.coordinate(r.ref(key), {}, value, "t", durable=False)


async def contents(r: LocalReplica) -> dict[bytes, list[bytes]]:
    out = {}
    for p in range(Q):
        for skey, raw in await r.scan_partition(p, None, 1000):
            state = v.decode(raw)
            out[skey] = sorted(s.value or b"" for s in state.live)
    return out


async def test_two_replicas_converge_after_one_exchange_per_partition(nodes: dict[str, Node]) -> None:
    n1, n2 = nodes["n1"], nodes["n2"]
    differing = 0
    for p in range(Q):
        differing += await n1.service.exchange(p, "n2")
    assert differing == 41  # 20 + 20 keys one side lacks, and "c"
    one, two = await contents(n1.replica), await contents(n2.replica)
    assert one == two and len(one) == 41
    assert one[n1.replica.ref(b"c").skey] == [b"x", b"y"]  # concurrent versions kept as siblings on both
    for p in range(Q):
        assert n1.service.trees.root_hex(p) == n2.service.trees.root_hex(p)
    # every copy that changed is counted once, by the node whose store changed: 20 + 1 on each side
    assert (n1.service.totals.keys_repaired, n2.service.totals.keys_repaired) == (21, 21)
    assert n1.service.totals.keys_pushed == 21
    assert sum(n1.service.stats[p].repairs for p in range(Q)) == 21
    again = [await n1.service.exchange(p, "n2") for p in range(Q)]
    assert again == [0] * Q  # converged: nothing differs any more


async def test_three_replicas_converge_through_pairwise_exchanges(nodes: dict[str, Node]) -> None:
    n1, n2, n3 = nodes["n1"], nodes["n2"], nodes["n3"]
    for p in range(Q):
        await n3.service.exchange(p, "n1")  # n3 (empty) gets n1's keys and gives nothing
        await n2.service.exchange(p, "n3")  # n2 and n3 swap theirs
        await n1.service.exchange(p, "n3")  # n1 gets n2's, through n3
    c1, c2, c3 = [await contents(n.replica) for n in (n1, n2, n3)]
    assert c1 == c2 == c3 and len(c1) == 41
    assert n3.service.totals.keys_repaired == 42  # 21 from n1, then 21 from n2 ("c" changed twice: x, then x+y)


async def test_the_scheduler_is_offered_only_built_partitions_and_peers_seen_up(
    net: Network, stores: dict[str, LocalReplica]
) -> None:
    # Time passes for n1 only: n2 and n3 never start exchanges of their own (which would count for n1's pairs).
    clock, still = FakeClock(), FakeClock()
    n1 = await start_node(net, clock, stores["n1"], "n1")
    others = [await start_node(net, still, stores[n], n) for n in ("n2", "n3")]

    def offered() -> set[tuple[int, str]]:
        return {(s.partition, s.peer) for s in n1.service.sched.status()}

    try:
        assert offered() == {(p, peer) for p in range(Q) for peer in ("n2", "n3")}
        n1.liveness.set_down("n3", clock.now())
        n1.service.trees.built.discard(2)  # as if partition 2's tree were still being built
        n1.service.offer_pairs(clock.now())
        assert offered() == {(p, "n2") for p in (0, 1, 3)}
        n1.service.trees.built.add(2)
        n1.service.offer_pairs(clock.now())
        assert offered() == {(p, "n2") for p in range(Q)}

        # The loop runs what is due once time passes: with n3 down, n1 compares with n2 only.
        assert net.calls_of("ae.x") == []
        clock.advance(2 * INTERVAL)
        await until(lambda: all(s.last_outcome is ExchangeOutcome.OK for s in n1.service.sched.status()),
                    "n1's due exchanges to run")
        assert {c.node for c in net.calls_of("ae.x")} == {"n2"}
        assert n1.service.totals.exchanges_ok == Q
        n1.liveness.set_up("n3")
        n1.service.offer_pairs(clock.now())
        assert offered() == {(p, peer) for p in range(Q) for peer in ("n2", "n3")}
    finally:
        for node in (n1, *others):
            await node.service.stop()


async def test_a_peer_without_a_built_tree_is_not_a_failure(nodes: dict[str, Node]) -> None:
    n1, n2 = nodes["n1"], nodes["n2"]
    n2.service.trees.built.discard(0)
    from dynamostore.services.antientropy import NotReady

    with pytest.raises(NotReady):
        await n1.service.exchange(0, "n2")


async def test_trees_saved_at_stop_are_loaded_at_start(net: Network, clock: FakeClock,
                                                      stores: dict[str, LocalReplica]) -> None:
    await write(stores["n1"], b"k", b"v")
    first = await start_node(net, clock, stores["n1"], "n1")
    roots = [first.service.trees.root_hex(p) for p in range(Q)]
    await first.service.stop()
    again = await start_node(Network(), clock, stores["n1"], "n1")
    assert again.service.snapshot_loaded == Q
    assert [again.service.trees.root_hex(p) for p in range(Q)] == roots
    await again.service.stop()


async def test_stop_returns_even_when_a_kick_races_the_cancel(net: Network, stores: dict[str, LocalReplica],
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """The exchange loop waits for a kick (an exchange ended, a peer came up) or its poll interval. On Python
    3.11, asyncio.wait_for around that wait swallowed a cancel arriving in the same loop pass as the kick: the
    loop went on and stop() never returned (the node's "stop timed out in step 'AntiEntropyService'").
    The supervisor now cancels such a task again after a grace period; here the first cancel must do."""
    node = await start_node(net, LoopClock(), stores["n1"], "n1")
    for _ in range(3):
        await asyncio.sleep(0)  # the loop is parked in its wait
    node.service.peer_up("n2")  # the kick...
    with caplog.at_level(logging.WARNING, logger="dynamostore.runtime"):
        await asyncio.wait_for(node.service.stop(), 5.0)  # ...and the cancel, in the same pass
    assert not [r for r in caplog.records if "cancelling again" in r.getMessage()]


async def test_repairs_are_fsynced_on_the_receiving_replica_before_the_exchange_ends(nodes: dict[str, Node]) -> None:
    """Repaired copies are stored durably on both sides (no background syncer here: only a durable write syncs)."""
    n1, n2 = nodes["n1"], nodes["n2"]
    before = [n.replica.storage.stats()["durable_batches"] for n in (n1, n2)]
    for p in range(Q):
        await n1.service.exchange(p, "n2")
    for node, durable_before in zip((n1, n2), before):
        assert node.replica.storage.stats()["durable_batches"] > durable_before
        assert not node.replica.storage._committer.unsynced, "repaired copies are not on disk yet"
