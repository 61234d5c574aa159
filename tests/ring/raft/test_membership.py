"""Membership changes: single-server voter changes, learners (a 50-node group has 5 voters and 45
learners), the one-change-at-a-time rule, and a randomized churn of changes under failures."""

from __future__ import annotations

import random

import pytest

from ring.raft import AppendEntries, ConfChange, ConfChangeType, ProposalDropped, RaftConfig, Role

from .sim import Cluster, seeds

ADD, LEARN, REMOVE = ConfChangeType.ADD_VOTER, ConfChangeType.ADD_LEARNER, ConfChangeType.REMOVE_NODE


def _change(c: Cluster, cc: ConfChange, max_ticks: int = 100) -> None:
    """Propose ``cc`` at the leader (retrying across elections) until every live member applied it."""
    def done() -> bool:
        ld = c.leader()
        return ld is not None and c.nodes[ld].r.log.last_conf_index <= c.nodes[ld].r.commit and (
            c.nodes[ld].r.conf == _expected
        )

    ld = c.check_one_leader()
    _expected = c.nodes[ld].r.conf.apply(cc)
    for _ in range(max_ticks):
        if done():
            return
        if c.conf_change(cc) is None:
            c.run(1)
        else:
            c.run_until(done, 10)
    assert done(), f"seed {c.seed}: {cc} did not commit"


@pytest.mark.parametrize("seed", seeds(5))
def test_add_voter(seed: int) -> None:
    c = Cluster(3, seed)
    first = c.one(b"a0", 3)
    for k in range(1, 5):
        c.one(b"a%d" % k, 3)
    c.add_node("n4")
    _change(c, ConfChange(ADD, "n4"))
    idx = c.one(b"with-n4", 4)
    assert c.nodes["n4"].sm.applied_index >= idx and c.nodes["n4"].sm.data.get(first) == b"a0"
    assert c.nodes["n4"].r.conf.voters == {"n1", "n2", "n3", "n4"}
    # quorum is now 3 of 4: n4 must count for the commit when two originals are gone
    ld = c.check_one_leader()
    gone = [i for i in ("n1", "n2", "n3") if i != ld][:1]
    c.partition([i for i in c.nodes if i not in gone], gone)
    c.one(b"3-of-4", 3)
    c.partition([i for i in c.nodes if i != ld and i not in gone][:1] + gone, [ld], [])  # two vs two
    c.run(40)
    assert not any(c.nodes[i].r.role is Role.LEADER and c.nodes[i].r.term > c.nodes[ld].r.term for i in c.nodes)


@pytest.mark.parametrize("seed", seeds(5))
def test_remove_leader(seed: int) -> None:
    c = Cluster(3, seed)
    c.one(b"x", 3)
    ld = c.check_one_leader()
    _change(c, ConfChange(REMOVE, ld))
    assert c.run_until(lambda: c.nodes[ld].r.role is Role.FOLLOWER, 5), "removed leader kept leading"
    new = c.check_one_leader(among=[i for i in c.nodes if i != ld])
    c.one(b"y", 2)
    term = c.nodes[new].r.term
    c.run(60)  # the removed node knows it is not a voter: it never campaigns, never disturbs
    assert c.nodes[new].r.term == term and c.leader() == new
    assert ld not in c.nodes[new].r.conf.members


@pytest.mark.parametrize("seed", seeds(5))
def test_remove_follower_then_cluster_of_two(seed: int) -> None:
    c = Cluster(3, seed)
    ld = c.check_one_leader()
    f = next(i for i in c.nodes if i != ld)
    _change(c, ConfChange(REMOVE, f))
    c.crash(f)
    c.one(b"two", 2)
    ld = c.check_one_leader()
    other = next(i for i in c.nodes if i not in (ld, f))
    c.isolate(other)  # quorum of 2 is 2: nothing commits alone
    idx = c.propose(b"alone", via=ld)
    c.run(20)
    assert idx is not None and c.applied_count(idx)[1] != b"alone"


def test_one_change_at_a_time() -> None:
    c = Cluster(3, 1)
    ld = c.check_one_leader()
    c.one(b"x", 3)
    c.isolate(ld)  # the first change cannot commit
    r = c.nodes[ld].r
    r.propose_conf_change(ConfChange(LEARN, "l9"))
    with pytest.raises(ProposalDropped):
        r.propose_conf_change(ConfChange(LEARN, "l10"))
    with pytest.raises(ProposalDropped):
        r.propose_conf_change(ConfChange(REMOVE, "nobody"))


def test_new_leader_must_commit_before_changing() -> None:
    """The single-server-change bug fix: no change until the leader committed an entry of its own term."""
    c = Cluster(3, 2, cfg=RaftConfig(pre_vote=False, check_quorum=False))
    c.campaign("n1")
    c.one(b"x", 3)
    c.partition(["n1"], ["n2", "n3"])
    c.intercept = lambda m: None if isinstance(m, AppendEntries) else m  # its no-op reaches nobody
    c.campaign("n2")
    r = c.nodes["n2"].r
    assert r.commit < r.log.last_index
    with pytest.raises(ProposalDropped):
        r.propose_conf_change(ConfChange(LEARN, "l1"))
    c.intercept = None
    c.run(3)
    assert r.commit == r.log.last_index
    r.propose_conf_change(ConfChange(LEARN, "l1"))


@pytest.mark.parametrize("seed", seeds(3))
def test_learners_receive_the_log_but_never_vote(seed: int) -> None:
    c = Cluster(3, seed, learners=5)
    idx = c.one(b"for-all", 8)
    assert all(c.nodes[f"l{k}"].sm.data.get(idx) == b"for-all" for k in range(1, 6))
    ld = c.check_one_leader()
    voters_gone = [i for i in ("n1", "n2", "n3") if i != ld]
    c.partition([i for i in c.nodes if i not in voters_gone], *[[v] for v in voters_gone])
    c.crash(ld)  # one voter of three left, with five learners: no election can succeed
    c.run(80)
    assert c.leaders() == [] or all(i in voters_gone for i in c.leaders())
    assert all(c.nodes[f"l{k}"].r.role is Role.FOLLOWER for k in range(1, 6))
    c.heal()
    c.restart(ld)
    c.one(b"back", 8, max_ticks=300)


@pytest.mark.parametrize("seed", seeds(3))
def test_learner_catch_up_by_snapshot_and_promotion(seed: int) -> None:
    c = Cluster(3, seed, snapshot_every=9)
    first = c.one(b"p0", 3)
    for k in range(1, 30):
        c.one(b"p%d" % k, 3)
    c.add_node("l1")
    _change(c, ConfChange(LEARN, "l1"))
    idx = c.one(b"learner-sees", 4)
    assert c.nodes["l1"].sm.data.get(first) == b"p0", "learner did not get the compacted prefix"
    assert c.sent["InstallSnapshot"] > 0
    _change(c, ConfChange(ADD, "l1"))  # promote
    ld = c.check_one_leader()
    assert c.nodes[ld].r.conf.voters == {"n1", "n2", "n3", "l1"}
    assert c.one(b"promoted", 4) > idx


def test_fifty_node_group_five_voters() -> None:
    voters = [f"n{k}" for k in range(1, 6)]
    c = Cluster(5, 1, learners=45, voters=voters)
    idx = c.one(b"everyone", 50, max_ticks=100)
    assert c.nodes[c.check_one_leader()].r.conf.voters == set(voters)
    assert all(c.nodes[i].sm.data.get(idx) == b"everyone" for i in c.nodes)


@pytest.mark.parametrize("seed", seeds(10))
def test_membership_churn(seed: int) -> None:
    """Random single-server changes (add/remove voters and learners, promotions) while nodes crash and the
    network splits; every invariant is checked after every step."""
    rng = random.Random(seed)
    c = Cluster(3, seed, unreliable=rng.random() < 0.5)
    pool = [f"x{k}" for k in range(1, 4)]
    for it in range(12):
        ld = c.leader()
        if ld is not None:
            conf = c.nodes[ld].r.conf
            cand = sorted(set(pool) | conf.members)
            who = rng.choice(cand)
            kind = rng.choice([ADD, ADD, LEARN, REMOVE])
            if who not in c.nodes:
                c.add_node(who)
            cc = ConfChange(kind, who)
            new = conf.apply(cc)
            if new != conf and len(new.voters) >= 2:
                c.conf_change(cc)
        c.propose(b"m%d" % it)
        r = rng.random()
        victim = rng.choice(sorted(c.nodes))
        if r < 0.15 and c.nodes[victim].up:
            c.crash(victim)
        elif r < 0.3:
            c.isolate(victim)
        c.run(rng.randrange(2, 15))
        for i in c.nodes:
            if not c.nodes[i].up and rng.random() < 0.7:
                c.restart(i)
        if rng.random() < 0.5:
            c.heal()
    c.heal()
    for i in c.nodes:
        if not c.nodes[i].up:
            c.restart(i)
    c.unreliable, c.drop, c.min_latency, c.max_latency = False, 0.0, 1, 3
    ld = c.check_one_leader(max_ticks=300)
    members = c.nodes[ld].r.conf.members
    idx = c.one(b"final", len(members), max_ticks=400)
    assert c.run_until(lambda: all(c.nodes[i].sm.applied_index >= idx for i in members), 50), (
        f"seed {seed}: members did not all apply the final entry"
    )
    assert all(c.nodes[i].r.conf == c.nodes[ld].r.conf for i in members)
