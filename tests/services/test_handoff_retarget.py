"""Hints follow ring changes (issue 14, item 4), through fakes of the handoff service's views: hints held for a
node that was removed go to their keys' current owners, and a leaving node hands every hint it holds to them
instead of taking the hints with it."""

from __future__ import annotations

from dataclasses import dataclass

from dynamostore.config import HandoffSettings
from dynamostore.kv.replica import LocalReplica
from dynamostore.services.handoff import HandoffService
from handoff.transfer import done_command, plan_transfer
from ring.membership import Commit, MembershipState, StageLeave, StageRemove, apply
from tests.services.conftest import OpenReplica
from tests.services.fakes import FakeClock, FakeLiveness, FakePlacement, Network, Spawner, membership

P = 8
NODES = ["n1", "n2", "n3", "n4"]
KEYS = [b"k%03d" % i for i in range(60)]


@dataclass
class Node:
    replica: LocalReplica
    service: HandoffService
    liveness: FakeLiveness
    spawner: Spawner


async def nodes(replicas: OpenReplica, state: MembershipState) -> dict[str, Node]:
    net, clock = Network(), FakeClock()
    out = {}
    for n in NODES:
        replica = await replicas(n, partitions=P)
        liveness, spawner = FakeLiveness(n, NODES), Spawner()
        svc = HandoffService(HandoffSettings(enabled=False, rate_per_sec=100_000), replica=replica,
                             peers=net.peers(n), liveness=liveness, methods=net.router(n), spawner=spawner,
                             clock=clock, partitions=P, placement=FakePlacement(n, state))
        await svc.start()
        out[n] = Node(replica, svc, liveness, spawner)
    return out


def finished(state: MembershipState) -> MembershipState:
    while state.transfers:
        state, res = apply(state, done_command(plan_transfer(state, state.transfers[0])))
        assert res.ok, res.reason
    return state


def owners(state: MembershipState, r: LocalReplica, key: bytes) -> list[str]:
    assert state.ring is not None
    return state.ring.walk(r.ref(key).partition)[: state.n_val]


async def test_hints_for_a_removed_node_go_to_their_keys_current_primaries(replicas: OpenReplica) -> None:
    state = finished(membership(NODES, P, 3, StageRemove("n2"), Commit(1)))
    assert state.members["n2"].status.value == "removed"
    c = await nodes(replicas, state)
    n1 = c["n1"]
    for k in KEYS:  # accepted while n2 was down, before it was removed
        await n1.replica.coordinate(n1.replica.ref(k), {}, b"v" + k, "t", durable=False, hint_for="n2")
    for node in c.values():
        node.liveness.set_down("n2", 0.0)
    assert n1.service.step() == ["n2"]
    await n1.spawner.settle()
    assert await n1.replica.hint_counts() == {}
    for k in KEYS:
        for o in owners(state, n1.replica, k):
            got = await c[o].replica.get(c[o].replica.ref(k))
            assert got is not None and [s.value for s in got.siblings] == [b"v" + k], (k, o)


async def test_a_leaving_node_hands_its_hints_to_the_keys_owners_that_are_up(replicas: OpenReplica) -> None:
    state = membership(NODES, P, 3, StageLeave("n1"), Commit(1))
    c = await nodes(replicas, state)
    n1 = c["n1"]
    for k in KEYS:  # n1 stood in for n2, which is down (and stays a member)
        await n1.replica.coordinate(n1.replica.ref(k), {}, b"v" + k, "t", durable=False, hint_for="n2")
    n1.liveness.set_down("n2", 0.0)
    assert n1.service.step() == ["n2"]
    await n1.spawner.settle()
    assert await n1.replica.hint_counts() == {}
    for k in KEYS:
        up_owners = [o for o in owners(state, n1.replica, k) if o not in ("n1", "n2")]
        assert up_owners
        for o in up_owners:
            assert await c[o].replica.get(c[o].replica.ref(k)) is not None, (k, o)


async def test_before_any_membership_is_applied_hints_go_to_their_target(replicas: OpenReplica) -> None:
    """A node serving the ring of its config file has an empty committed membership: nobody is 'removed'."""
    c = await nodes(replicas, MembershipState())
    n1 = c["n1"]
    for k in KEYS[:5]:
        await n1.replica.coordinate(n1.replica.ref(k), {}, b"v", "t", durable=False, hint_for="n2")
    assert n1.service.step() == ["n2"]
    await n1.spawner.settle()
    assert await n1.replica.hint_counts() == {}
    for k in KEYS[:5]:
        assert await c["n2"].replica.get(c["n2"].replica.ref(k)) is not None
