"""The put and get coordinators driven step by step: a real local replica, and peers whose answers the test
gives (or withholds) one at a time through the futures the coordinator is waiting on."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dynamostore.kv import versioning as v
from dynamostore.kv.coordinator import Coordinator, ReadOptions, Unavailable, WriteOptions
from dynamostore.kv.replica import LocalReplica, SiblingLimitError
from dynamostore.net.rpc import RpcRemoteError, RpcUnavailable
from dynamostore.outcome import Then, then_from
from dynamostore.storage.store import Storage
from ring.placement import Ring, initial_ring

NODES = ["n1", "n2", "n3", "n4"]


@dataclass
class Call:
    node: str
    method: str
    payload: Any
    future: asyncio.Future[Any]


@dataclass
class Peers:
    """The ClusterView of node n1: a fixed ring over four nodes, and replica calls that wait for the test."""

    node_id: str = "n1"
    n_val: int = 3
    repair_wait: float = 5.0
    replica_timeout: float = 5.0
    read_all: bool = False
    down: set[str] = field(default_factory=set)
    calls: list[Call] = field(default_factory=list)
    repairs: list[Call] = field(default_factory=list)
    tasks: list[asyncio.Future[None]] = field(default_factory=list)
    pending_owners: tuple[str, ...] = ()  # nodes a pending ring move makes primaries of every partition
    _ring: Ring = field(default_factory=lambda: initial_ring(NODES, 8))

    @property
    def ring(self) -> Ring:
        return self._ring

    @property
    def liveness_version(self) -> int:
        return len(self.down)

    def up_set(self) -> set[str]:
        return set(NODES) - self.down

    def may_hint(self, primary: str) -> bool:
        return True

    def extra_targets(self, partition: int) -> tuple[str, ...]:
        return self.pending_owners

    async def call(self, node: str, method: str, payload: Any, timeout: float) -> Any:
        fut = asyncio.get_running_loop().create_future()
        self.repairs.append(Call(node, method, payload, fut))
        fut.set_result(True)
        return await fut

    def call_then(self, node: str, method: str, payload: Any, timeout: float, then: Then) -> None:
        fut = asyncio.get_running_loop().create_future()
        self.calls.append(Call(node, method, payload, fut))
        then_from(fut, then)

    def spawn(self, coro: Awaitable[None], name: str) -> None:
        self.tasks.append(asyncio.ensure_future(coro))

    def pending(self) -> list[Call]:
        return [c for c in self.calls if not c.future.done()]


async def coordinator_of_n1(path: Path, max_siblings: int = 64) -> tuple[Coordinator, Peers, bytes]:
    """n1's coordinator over a real local replica, and a key whose three primaries include n1 (so n1
    coordinates it)."""
    storage = await Storage.open(path)
    replica = await LocalReplica.open("n1", storage, partitions=8, segments=16, max_siblings=max_siblings,
                                      warn_siblings=min(16, max_siblings))
    peers = Peers()
    key = next(k for k in (b"k%d" % i for i in range(1000))
               if "n1" in peers.ring.preference_list(replica.ref(k).partition, 3)[0])
    return Coordinator(peers, replica), peers, key


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[tuple[Coordinator, Peers, bytes]]:
    coord, peers, key = await coordinator_of_n1(tmp_path / "s")
    yield coord, peers, key
    await coord.replica.storage.close()


async def until(cond: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0)


W2 = WriteOptions(w=2, dw=0, pw=0, sloppy=True, timeout=5.0)
R2 = ReadOptions(r=2, pr=0, sloppy=True, timeout=5.0)


async def test_put_answers_at_w_without_waiting_for_the_last_replica(setup: Any) -> None:
    coord, peers, key = setup
    put = asyncio.ensure_future(coord.put(key, b"v", "t", {}, W2))
    await until(lambda: len(peers.calls) == 2)
    assert {c.method for c in peers.calls} == {"kv.put"} and "n1" not in {c.node for c in peers.calls}
    # replicas get the causal encoding: the coordinator's local actor bookkeeping stays home
    sent = v.decode(peers.calls[0].payload[1])
    assert sent.local_actor is None and [s.value for s in sent.siblings] == [b"v"]
    peers.calls[0].future.set_result(True)
    res = await asyncio.wait_for(put, 5)
    assert (res.acks, res.hinted) == (2, 0) and not peers.calls[1].future.done()


async def test_a_copy_a_pending_owner_did_not_take_is_kept_as_a_hint_for_it(setup: Any) -> None:
    """Issue 14, item 3: writes during a ring move reach the pending owner durably, not fire-and-forget."""
    coord, peers, key = setup
    primaries = peers.ring.preference_list(coord.replica.ref(key).partition, 3)[0]
    newcomer = next(n for n in NODES if n not in primaries)
    peers.pending_owners = (newcomer,)
    put = asyncio.ensure_future(coord.put(key, b"v", "t", {}, W2))
    await until(lambda: len(peers.calls) == 3)
    to_newcomer = [c for c in peers.calls if c.node == newcomer]
    assert len(to_newcomer) == 1 and to_newcomer[0].payload[3] is None  # a copy for its own data
    for c in peers.calls:
        if c.node != newcomer:
            c.future.set_result(True)
    res = await asyncio.wait_for(put, 5)
    assert res.acks == 3  # the pending owner's copy does not count toward W (it serves no reads yet)
    to_newcomer[0].future.set_exception(RpcUnavailable("refused"))
    ref = coord.replica.ref(key)
    await until(lambda: coord.replica.read_now(ref, newcomer) is not None)  # handoff delivers it later
    held = v.decode(coord.replica.read_now(ref, newcomer) or b"")
    assert [s.value for s in held.siblings] == [b"v"]


async def test_a_failed_replica_is_replaced_by_a_fallback_holding_a_hint(setup: Any) -> None:
    coord, peers, key = setup
    put = asyncio.ensure_future(coord.put(key, b"v", "t", {}, W2))
    await until(lambda: len(peers.calls) == 2)
    failed = peers.calls[0]
    failed.future.set_exception(RpcUnavailable("refused"))
    await until(lambda: len(peers.calls) == 3)
    spare = peers.calls[2]
    assert spare.node not in {c.node for c in peers.calls[:2]} | {"n1"}
    assert spare.payload[3] == failed.node  # the fallback keeps the copy as a hint for the failed primary
    spare.future.set_result(True)
    res = await asyncio.wait_for(put, 5)
    assert (res.acks, res.hinted) == (2, 1)


async def test_a_put_nobody_answers_times_out_with_a_reason(setup: Any) -> None:
    coord, peers, key = setup
    peers.replica_timeout = 0.05  # slow replicas are replaced (by the one spare), then the deadline passes
    with pytest.raises(Unavailable, match="timed out: required w=2, 1 acknowledged"):
        await coord.put(key, b"v", "t", {}, WriteOptions(w=2, dw=0, pw=0, sloppy=True, timeout=0.3))
    assert len(peers.calls) == 3


async def test_a_get_reads_its_own_copy_and_one_peer_and_repairs_nothing_when_they_agree(setup: Any) -> None:
    coord, peers, key = setup
    put = asyncio.ensure_future(coord.put(key, b"v", "t", {}, W2))
    await until(lambda: len(peers.calls) == 2)
    peers.calls[0].future.set_result(True)
    written = (await put).state
    peers.calls.clear()
    get = asyncio.ensure_future(coord.get(key, R2))
    await until(lambda: len(peers.calls) == 1)  # R=2: this node's copy plus one peer, not all three
    assert peers.calls[0].method == "kv.get"
    peers.calls[0].future.set_result(v.encode(written, local=False))
    res = await asyncio.wait_for(get, 5)
    assert res.replies == 2 and res.state is not None and [s.value for s in res.state.live] == [b"v"]
    assert peers.tasks == []  # equal bytes: no read repair was even started


async def test_a_stale_peer_is_repaired_after_the_client_was_answered(setup: Any) -> None:
    coord, peers, key = setup
    put = asyncio.ensure_future(coord.put(key, b"new", "t", {}, W2))
    await until(lambda: len(peers.calls) == 2)
    peers.calls[0].future.set_result(True)
    await put
    peers.calls.clear()
    get = asyncio.ensure_future(coord.get(key, R2))
    await until(lambda: len(peers.calls) == 1)
    stale = peers.calls[0]
    stale.future.set_result(None)  # that peer never got the write
    res = await asyncio.wait_for(get, 5)
    assert res.state is not None and [s.value for s in res.state.live] == [b"new"]
    await asyncio.wait_for(asyncio.gather(*peers.tasks), 5)
    assert [(c.node, c.method) for c in peers.repairs] == [(stale.node, "kv.put")]
    assert [s.value for s in v.decode(peers.repairs[0].payload[1]).live] == [b"new"]


async def test_a_failed_read_asks_the_replica_held_in_reserve(setup: Any) -> None:
    coord, peers, key = setup
    get = asyncio.ensure_future(coord.get(key, R2))
    await until(lambda: len(peers.calls) == 1)
    first = peers.calls[0]
    first.future.set_exception(RpcUnavailable("refused"))
    await until(lambda: len(peers.calls) == 2)
    second = peers.calls[1]
    assert second.node not in (first.node, "n1") and second.method == "kv.get"
    second.future.set_result(None)
    res = await asyncio.wait_for(get, 5)
    assert res.replies == 2 and res.state is None  # nobody has the key: a 404, from two answers


async def test_a_get_that_cannot_reach_r_replicas_fails_at_once(setup: Any) -> None:
    coord, peers, key = setup
    ring = peers.ring
    primaries, _ = ring.preference_list(coord.replica.ref(key).partition, 3)
    peers.down = {p for p in primaries if p != "n1"}
    with pytest.raises(Unavailable, match="required r=3"):
        await coord.get(key, ReadOptions(r=3, pr=0, sloppy=False, timeout=5.0))
    assert peers.calls == []


async def test_a_silent_replica_is_replaced_at_the_soft_deadline_and_not_before(setup: Any) -> None:
    coord, peers, key = setup
    peers.replica_timeout = 0.05
    loop = asyncio.get_running_loop()
    started = loop.time()
    get = asyncio.ensure_future(coord.get(key, R2))
    await until(lambda: len(peers.calls) == 1)
    await until(lambda: len(peers.calls) == 2)  # the first peer never answers
    assert loop.time() - started >= 0.05
    assert peers.calls[1].node not in (peers.calls[0].node, "n1")
    peers.calls[1].future.set_result(None)
    res = await asyncio.wait_for(get, 5)
    assert res.replies == 2 and res.state is None


async def test_finished_requests_leave_no_reference_cycles(setup: Any) -> None:
    """Each request's objects are freed by reference counting, not left for the cyclic collector (which
    cost a coordinator ~4% of its CPU when every request left a cycle behind)."""
    coord, peers, key = setup

    async def put_and_get() -> None:
        put = asyncio.ensure_future(coord.put(key, b"v", "t", {}, W2))
        await until(lambda: len(peers.pending()) == 2)
        for c in peers.pending():
            c.future.set_result(True)
        await put
        get = asyncio.ensure_future(coord.get(key, R2))
        await until(lambda: len(peers.pending()) == 1)
        peers.pending()[0].future.set_result(None)  # a stale peer: the read repairs it
        await get
        await asyncio.gather(*peers.tasks)
        peers.calls.clear()
        peers.repairs.clear()
        peers.tasks.clear()

    await put_and_get()  # warm up: plans, alarms and the like are made once
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        await put_and_get()
        gc.collect()
        kept = sorted({type(o).__name__ for o in gc.garbage
                       if type(o).__module__ in ("dynamostore.coordinator", "dynamostore.quorum")})
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert kept == []


async def test_a_write_refused_here_fails_the_put_with_its_reason_and_reaches_no_replica(tmp_path: Path) -> None:
    coord, peers, key = await coordinator_of_n1(tmp_path / "s", max_siblings=2)
    for _ in range(2):  # two blind writes: two siblings, the limit
        put = asyncio.ensure_future(coord.put(key, b"v", "t", {}, W2))
        await until(lambda: len(peers.pending()) == 2)
        for c in peers.pending():
            c.future.set_result(True)
        await put
    sent = len(peers.calls)
    with pytest.raises(SiblingLimitError):
        await coord.put(key, b"v", "t", {}, W2)
    assert len(peers.calls) == sent  # the refused write was sent nowhere
    await coord.replica.storage.close()


async def test_w0_answers_once_the_local_write_is_committed_without_waiting_for_replicas(setup: Any) -> None:
    coord, peers, key = setup
    res = await asyncio.wait_for(coord.put(key, b"v", "t", {}, WriteOptions(w=0, dw=0, pw=0, sloppy=True,
                                                                            timeout=5.0)), 5)
    assert res.acks == 1 and [s.value for s in res.state.live] == [b"v"]
    assert len(peers.calls) == 2 and not any(c.future.done() for c in peers.calls)  # sent, not waited for


@dataclass
class OldReleasePeers(Peers):
    """Peers of the previous release: kv.coord_put takes exactly five elements (no dot cloud)."""

    forwarded: list[list[Any]] = field(default_factory=list)

    async def call(self, node: str, method: str, payload: Any, timeout: float) -> Any:
        assert method == "kv.coord_put"
        self.forwarded.append(payload)
        if len(payload) != 5:
            raise RpcRemoteError("bad_request", "kv.coord_put payload: too many values to unpack (expected 5)")
        ctx = dict(payload[3])
        state = v.update(None, ctx, "n2.9", payload[1], payload[2], 1)
        return [node, 2, 0, 0, v.encode(v.VersionSet(state.clock, state.siblings, "n2.9"))]


async def test_a_forwarded_write_sends_its_context_cloud_and_falls_back_to_the_vector_for_an_old_release(
    tmp_path: Path,
) -> None:
    storage = await Storage.open(tmp_path / "s")
    replica = await LocalReplica.open("n1", storage, partitions=8, segments=16, max_siblings=8, warn_siblings=8)
    peers = OldReleasePeers()
    coord = Coordinator(peers, replica)
    key = next(k for k in (b"k%d" % i for i in range(1000))
               if "n1" not in peers.ring.preference_list(replica.ref(k).partition, 3)[0])
    res = await coord.put(key, b"v", "t", {"a.1": 2}, W2, (("b.1", 4),))
    first, second = peers.forwarded
    assert first[5] == [["b.1", 4]] and len(second) == 5 and second[:4] == first[:4]  # the cloud, then without
    assert v.minted_dot(res.state) == ("n2.9", 1)  # the forwarded answer names the write's dot
    await storage.close()
