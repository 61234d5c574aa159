"""The hinted-handoff service (services/handoff.py) through fakes of its views: n1 holds hints for n2 and hands
them off to n2's own service over the in-memory network; the clock moves only when the test says so."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from dynamostore.config import HandoffSettings
from dynamostore.kv import versioning as v
from dynamostore.kv.replica import LocalReplica
from dynamostore.net.rpc import RpcTimeout
from dynamostore.runtime import LoopClock
from dynamostore.services.handoff import HandoffService
from tests.services.conftest import OpenReplica
from tests.services.fakes import FakeClock, FakeLiveness, Network, Spawner, until
from tests.storage.gates import SyncGate

P = 8
NODES = ["n1", "n2", "n3"]


@dataclass
class Side:
    replica: LocalReplica
    service: HandoffService
    liveness: FakeLiveness
    spawner: Spawner


async def side(net: Network, clock: FakeClock | LoopClock, replicas: OpenReplica, node: str,
               **settings: object) -> Side:
    replica = await replicas(node, partitions=P)
    liveness = FakeLiveness(node, NODES)
    spawner = Spawner()
    delivered: list[tuple[str, int]] = []
    svc = HandoffService(HandoffSettings(**{"enabled": False, "rate_per_sec": 100_000, **settings}),  # type: ignore[arg-type]
                         replica=replica, peers=net.peers(node), liveness=liveness, methods=net.router(node),
                         spawner=spawner, clock=clock, partitions=P, delivered=lambda t, n: delivered.append((t, n)))
    svc.delivered_log = delivered  # type: ignore[attr-defined]
    await svc.start()
    return Side(replica, svc, liveness, spawner)


async def hint(r: LocalReplica, key: bytes, value: bytes, target: str = "n2") -> None:
    """A write n1 accepted as a fallback for `target`: kept as a hint."""
    await r.coordinate(r.ref(key), {}, value, "t", durable=False, hint_for=target)


@pytest.fixture
def net() -> Network:
    return Network()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


async def test_hints_for_a_down_target_wait_and_go_in_batches_once_it_is_up(
    net: Network, clock: FakeClock, replicas: OpenReplica
) -> None:
    n1 = await side(net, clock, replicas, "n1")
    n2 = await side(net, clock, replicas, "n2")
    keys = [b"k%03d" % i for i in range(450)]
    for k in keys:
        await hint(n1.replica, k, k + b"!")
    assert n1.service.planner.progress("n2").pending == 450  # counted by the replica's hint hook

    n1.liveness.set_down("n2", clock.now())
    assert n1.service.step() == [] and net.calls == []  # held while the target is down

    n1.liveness.set_up("n2")
    assert n1.service.step() == ["n2"]
    assert n1.service.step() == []  # already being delivered: not started twice
    await n1.spawner.settle()
    sizes = [len(c.payload) for c in net.calls_of("handoff.deliver")]
    assert sizes == [200, 200, 50]  # the planner's batch size
    assert await n1.replica.hint_counts() == {}  # each dropped after n2 acknowledged it
    for k in keys:
        got = await n2.replica.get(n2.replica.ref(k))
        assert got is not None and [s.value for s in got.live] == [k + b"!"]
    assert n1.service.delivered_log == [("n2", 200), ("n2", 200), ("n2", 50)]  # type: ignore[attr-defined]
    p = n1.service.planner.progress("n2")
    assert (p.pending, p.delivered, p.last_delivery) == (0, 450, clock.now())


async def test_a_hint_that_changed_while_it_was_in_flight_is_kept_for_the_next_round(
    net: Network, clock: FakeClock, replicas: OpenReplica
) -> None:
    n1 = await side(net, clock, replicas, "n1")
    n2 = await side(net, clock, replicas, "n2")
    await hint(n1.replica, b"a", b"old")
    await hint(n1.replica, b"b", b"b")

    kept: list[v.VersionSet | None] = []

    async def newer_write_meanwhile(call: object) -> None:
        if not kept:  # the first batch only
            await hint(n1.replica, b"a", b"newer")  # merges into the hint already read for this batch
            kept.append(None)
        else:  # the next batch of the same delivery: "a" was not dropped after the first ack
            kept.append(await n1.replica.get(n1.replica.ref(b"a"), "n2"))

    net.before("handoff.deliver", newer_write_meanwhile)
    assert n1.service.step() == ["n2"]
    await n1.spawner.settle()
    first, second = net.calls_of("handoff.deliver")
    assert len(first.payload) == 2 and [k for k, _ in second.payload] == [n1.replica.ref(b"a").skey]  # "a" again
    assert kept[1] is not None and b"newer" in [s.value for s in kept[1].live]
    assert await n1.replica.hint_counts() == {}
    assert n1.service.planner.progress("n2").pending == 0
    got = await n2.replica.get(n2.replica.ref(b"a"))
    assert got is not None and b"newer" in [s.value for s in got.live]


async def test_a_failed_delivery_backs_off_until_retry_at_and_peer_up_clears_the_backoff(
    net: Network, clock: FakeClock, replicas: OpenReplica
) -> None:
    n1 = await side(net, clock, replicas, "n1")
    n2 = await side(net, clock, replicas, "n2")
    await hint(n1.replica, b"k", b"v")
    net.fail("n2", "handoff.deliver", lambda: RpcTimeout("slow"))
    assert n1.service.step() == ["n2"]
    await n1.spawner.settle()
    p = n1.service.planner.progress("n2")
    assert p.failures == 1 and p.last_error == "RpcTimeout" and p.retry_at == clock.now() + 0.5
    assert await n1.replica.hint_counts() == {"n2": 1}  # a failed delivery keeps the hint

    assert n1.service.step() == []  # not before retry_at
    clock.advance(0.4)
    assert n1.service.step() == []
    clock.advance(0.2)
    assert n1.service.step() == ["n2"]  # retried once the clock passed retry_at: fails again, backs off more
    await n1.spawner.settle()
    assert p.failures == 2 and p.retry_at == pytest.approx(clock.now() + 1.0)
    assert n1.service.step() == []

    net.heal("n2", "handoff.deliver")
    n1.service.peer_up("n2")  # the failure detector saw n2 come back: no waiting out the backoff
    assert n1.service.step() == ["n2"]
    await n1.spawner.settle()
    assert await n1.replica.hint_counts() == {} and p.failures == 0
    assert (await n2.replica.get(n2.replica.ref(b"k"))) is not None


async def test_may_hint_respects_the_hint_window_and_the_per_target_cap(
    net: Network, clock: FakeClock, replicas: OpenReplica
) -> None:
    n1 = await side(net, clock, replicas, "n1", max_hint_window_s=60, max_hints_per_target=3)
    n1.liveness.set_down("n2", clock.now())
    assert n1.service.may_hint("n2")
    clock.advance(59)
    assert n1.service.may_hint("n2")
    clock.advance(2)
    assert not n1.service.may_hint("n2")  # down longer than the window: its hints would be stale
    n1.liveness.set_down("n3", clock.now())
    for i in range(3):
        assert n1.service.may_hint("n3") and n1.service.accepts_hint("n3")
        await hint(n1.replica, b"k%d" % i, b"v", target="n3")
    assert not n1.service.may_hint("n3") and not n1.service.accepts_hint("n3")  # the cap
    await hint(n1.replica, b"k0", b"again", target="n3")  # a key already hinted is not a new hint
    assert n1.service.planner.progress("n3").pending == 3


async def test_a_delivery_refuses_keys_outside_the_partitions(net: Network, clock: FakeClock,
                                                             replicas: OpenReplica) -> None:
    await side(net, clock, replicas, "n2")
    from dynamostore.storage.keys import data_key
    from dynamostore.net.rpc import RpcRemoteError

    state = v.encode(v.update(None, {}, "n1.1", b"v", "t", 0))
    with pytest.raises(RpcRemoteError, match="out of range"):
        await net.deliver("n1", "n2", "handoff.deliver", [[data_key(P, 0, b"k"), state]])
    with pytest.raises(RpcRemoteError, match="payload"):
        await net.deliver("n1", "n2", "handoff.deliver", [[b"k"]])


async def test_stop_returns_even_when_a_kick_races_the_cancel(net: Network, replicas: OpenReplica) -> None:
    """The delivery loop waits for a kick or its interval. On Python 3.11, asyncio.wait_for around that wait
    swallowed a cancel arriving in the same loop pass as the kick, the loop went on, and stop() never ended."""
    n1 = await side(net, LoopClock(), replicas, "n1", enabled=True, interval_ms=60_000)
    for _ in range(3):
        await asyncio.sleep(0)  # the loop is parked in its wait
    n1.service.peer_up("n2")  # the kick...
    await asyncio.wait_for(n1.service.stop(), 5.0)  # ...and the cancel, in the same pass


async def test_the_primary_has_fsynced_delivered_hints_before_the_sender_drops_them(
    net: Network, clock: FakeClock, replicas: OpenReplica
) -> None:
    """A hint may be the only other copy of a write acknowledged as durable: n2 stores what it is handed durably
    (fsynced) before it acknowledges, and n1 drops its hints only after that acknowledgement."""
    n1 = await side(net, clock, replicas, "n1")
    n2 = await side(net, clock, replicas, "n2")
    keys = [b"k%d" % i for i in range(5)]
    for k in keys:
        await hint(n1.replica, k, k + b"!")
    gate = SyncGate(n2.replica.storage)    # n2's fsyncs block until the test lets them through
    try:
        assert n1.service.step() == ["n2"]
        await until(lambda: bool(gate.threads) or all(t.done() for _, t in n1.spawner.tasks),
                    "n2 to fsync the delivered hints, or the delivery to end")
        assert gate.threads, "n2 acknowledged the hints without fsyncing them"
        for k in keys:  # merged and committed on n2, waiting for the fsync...
            got = await n2.replica.get(n2.replica.ref(k))
            assert got is not None and [s.value for s in got.live] == [k + b"!"]
        assert await n1.replica.hint_counts() == {"n2": 5}  # ...so n1 still holds every hint
        gate.open(100)
        await n1.spawner.settle()
        assert await n1.replica.hint_counts() == {}
        assert not n2.replica.storage._committer.unsynced  # everything n2 acknowledged is on disk
    finally:
        gate.restore()
