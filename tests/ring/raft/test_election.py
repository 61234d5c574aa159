"""Leader election (6.824 2A), pre-vote, check-quorum and leadership transfer, over the simulated network."""

from __future__ import annotations

import random

import pytest

from ring.raft import NotLeader, ProposalDropped, RaftConfig, Role

from .sim import TICK, Cluster, seeds


@pytest.mark.parametrize("seed", seeds(5))
def test_initial_election(seed: int) -> None:
    c = Cluster(3, seed)
    ld = c.check_one_leader()
    # within a heartbeat everyone has heard of the new term
    assert c.run_until(lambda: len(set(c.terms().values())) == 1, 3), f"seed {seed}: terms disagree {c.terms()}"
    term = c.nodes[ld].r.term
    assert term >= 2  # term 1 is the bootstrap configuration's
    c.run(50)  # no failure: no new election
    assert c.terms() == {i: term for i in c.nodes}, f"seed {seed}: term changed without failures"
    assert c.leader() == ld


@pytest.mark.parametrize("seed", seeds(10))
def test_re_election(seed: int) -> None:
    c = Cluster(3, seed)
    ld1 = c.check_one_leader()
    c.isolate(ld1)
    ld2 = c.check_one_leader()  # the majority elects a new leader (the isolated one is in an older term)
    assert ld2 != ld1
    c.heal()  # the old leader rejoins and must not disturb the new one
    ld3 = c.check_one_leader()
    c.run(5)
    assert len(set(c.terms().values())) == 1
    others = [i for i in c.nodes if i != ld3]
    c.partition([ld3], [others[0]], [others[1]])  # no quorum anywhere
    c.run(60)
    assert all(c.nodes[i].r.role is not Role.LEADER for i in others), f"seed {seed}: leader without quorum"
    c.partition([others[0], others[1]], [ld3])
    c.check_one_leader()
    c.heal()
    c.check_one_leader()


@pytest.mark.parametrize("seed", seeds(10))
def test_many_elections(seed: int) -> None:
    c = Cluster(7, seed)
    c.check_one_leader()
    rng = random.Random(seed)
    for _ in range(6):
        gone = rng.sample(sorted(c.nodes), 3)  # the other 4 are a majority
        c.partition([i for i in c.nodes if i not in gone], *[[g] for g in gone])
        ld = c.check_one_leader()
        assert ld not in gone
        c.heal()
    c.check_one_leader()


@pytest.mark.parametrize("seed", seeds(5))
def test_prevote_rejoining_node_does_not_disrupt(seed: int) -> None:
    c = Cluster(3, seed)
    ld = c.check_one_leader()
    assert c.run_until(lambda: len(set(c.terms().values())) == 1, 3)
    term = c.nodes[ld].r.term
    follower = next(i for i in c.nodes if i != ld)
    c.isolate(follower)
    c.run(100)  # many election timeouts: pre-votes fail, so its term must not grow
    assert c.nodes[follower].r.term == term, f"seed {seed}: isolated node bumped its term"
    c.heal()
    c.run(30)
    assert c.leader() == ld and c.nodes[ld].r.term == term, f"seed {seed}: rejoin disrupted the leader"
    c.one(b"after-rejoin", 3)


@pytest.mark.parametrize("seed", seeds(3))
def test_without_prevote_rejoining_node_disrupts(seed: int) -> None:
    """The counterfactual that shows what pre-vote buys: the isolated node's term runs away and its return
    forces an election."""
    c = Cluster(3, seed, cfg=RaftConfig(pre_vote=False, check_quorum=False))
    ld = c.check_one_leader()
    term = c.nodes[ld].r.term
    follower = next(i for i in c.nodes if i != ld)
    c.isolate(follower)
    c.run(100)
    assert c.nodes[follower].r.term > term + 2
    c.heal()
    c.run(60)
    assert c.nodes[c.check_one_leader()].r.term > term


@pytest.mark.parametrize("seed", seeds(5))
def test_check_quorum_isolated_leader_steps_down(seed: int) -> None:
    c = Cluster(5, seed)
    ld = c.check_one_leader()
    c.isolate(ld)
    # within two election timeouts it notices it has not heard from a majority
    assert c.run_until(lambda: c.nodes[ld].r.role is not Role.LEADER, 25), f"seed {seed}: leader kept leading"
    with pytest.raises(NotLeader):
        c.nodes[ld].r.propose(b"x")


def test_without_check_quorum_isolated_leader_stays() -> None:
    c = Cluster(3, 1, cfg=RaftConfig(check_quorum=False))
    ld = c.check_one_leader()
    c.isolate(ld)
    c.run(60)
    assert c.nodes[ld].r.role is Role.LEADER


@pytest.mark.parametrize("seed", seeds(5))
def test_leadership_transfer(seed: int) -> None:
    c = Cluster(3, seed)
    ld = c.check_one_leader()
    c.one(b"a", 3)
    term = c.nodes[ld].r.term
    target = sorted(i for i in c.nodes if i != ld)[0]
    c.nodes[ld].r.transfer_leadership(target)
    with pytest.raises(ProposalDropped):
        c.nodes[ld].r.propose(b"refused during transfer")
    c.process(c.nodes[ld])
    assert c.run_until(lambda: c.leader() == target, 5), f"seed {seed}: transfer did not happen quickly"
    assert c.nodes[target].r.term == term + 1  # TimeoutNow skips pre-vote; one election, no split
    c.one(b"b", 3)


@pytest.mark.parametrize("seed", seeds(3))
def test_transfer_to_lagging_follower_catches_it_up_first(seed: int) -> None:
    c = Cluster(3, seed)
    ld = c.check_one_leader()
    target = sorted(i for i in c.nodes if i != ld)[0]
    c.isolate(target)
    for k in range(20):
        c.one(b"lag%d" % k, 2)
    c.heal()
    c.nodes[ld].r.transfer_leadership(target)
    c.process(c.nodes[ld])
    assert c.run_until(lambda: c.leader() == target, 10), f"seed {seed}"
    assert c.nodes[target].sm.applied_index >= 20 or c.nodes[target].r.log.last_index >= 21


def test_transfer_to_unreachable_node_is_abandoned() -> None:
    c = Cluster(3, 7)
    ld = c.check_one_leader()
    target = sorted(i for i in c.nodes if i != ld)[0]
    c.isolate(target)
    c.nodes[ld].r.transfer_leadership(target)
    c.process(c.nodes[ld])
    assert c.nodes[ld].r.lead_transferee == target
    c.run(12)  # one election timeout later the leader gives up and serves again
    assert c.leader() == ld and c.nodes[ld].r.lead_transferee is None
    c.one(b"still-serving", 2)


def test_election_needs_a_majority_of_voters_only() -> None:
    c = Cluster(3, 3, learners=4)
    ld = c.check_one_leader()
    assert ld.startswith("n")
    c.run(int(3 * TICK / TICK))
    assert all(c.nodes[i].r.role is Role.FOLLOWER for i in c.nodes if i.startswith("l"))
