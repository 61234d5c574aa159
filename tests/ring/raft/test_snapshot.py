"""Snapshots and log compaction (6.824 2D): the app compacts every ``snapshot_every`` applied entries;
lagging or restarted followers catch up through InstallSnapshot."""

from __future__ import annotations

import random

import pytest

from .sim import Cluster, seeds

EVERY = 9


def _assert_compacted(c: Cluster) -> None:
    for i, n in c.nodes.items():
        if n.up:
            log = n.r.log
            assert log.last_index - log.snapshot.index <= EVERY + 12, f"{i} keeps {log.last_index - log.snapshot.index} entries"


def _snap_loop(seed: int, *, disconnect: bool, reliable: bool, crash: bool, iters: int = 12) -> Cluster:
    c = Cluster(3, seed, unreliable=not reliable, snapshot_every=EVERY)
    rng = random.Random(seed)
    c.one(b"init", 3, max_ticks=300)
    ld = c.check_one_leader()
    for it in range(iters):
        victim = ld if it % 3 == 1 else next(i for i in c.nodes if i != ld)
        if disconnect:
            c.isolate(victim)
            c.one(b"d%d" % it, 2, max_ticks=300)
        if crash:
            c.crash(victim)
            c.one(b"c%d" % it, 2, max_ticks=300)
        for k in range(EVERY + 1 + rng.randrange(EVERY)):  # enough to make the victim need a snapshot
            c.propose(b"s%d-%d" % (it, k))
        c.one(b"e%d" % it, 2, max_ticks=300)
        if crash:
            c.restart(victim)
        if disconnect:
            c.heal()
        c.one(b"h%d" % it, 3, max_ticks=300)
        ld = c.check_one_leader(max_ticks=300)
        _assert_compacted(c)
    return c


@pytest.mark.parametrize("seed", seeds(5))
def test_snapshot_basic(seed: int) -> None:
    c = Cluster(3, seed, snapshot_every=EVERY)
    for k in range(60):
        c.one(b"b%d" % k, 3)
        _assert_compacted(c)
    assert all(c.snapshot_of(i).index > 40 for i in c.nodes)
    assert c.sent["InstallSnapshot"] == 0  # nobody lagged: compaction alone, no installs


@pytest.mark.parametrize("seed", seeds(5))
def test_snapshot_install(seed: int) -> None:
    c = _snap_loop(seed, disconnect=True, reliable=True, crash=False)
    assert c.sent["InstallSnapshot"] > 0, f"seed {seed}: no snapshot was ever installed"


@pytest.mark.parametrize("seed", seeds(5))
def test_snapshot_install_unreliable(seed: int) -> None:
    _snap_loop(seed, disconnect=True, reliable=False, crash=False, iters=8)


@pytest.mark.parametrize("seed", seeds(5))
def test_snapshot_install_crash(seed: int) -> None:
    c = _snap_loop(seed, disconnect=False, reliable=True, crash=True)
    assert c.sent["InstallSnapshot"] > 0


@pytest.mark.parametrize("seed", seeds(5))
def test_snapshot_install_unreliable_crash(seed: int) -> None:
    _snap_loop(seed, disconnect=True, reliable=False, crash=True, iters=6)


@pytest.mark.parametrize("seed", seeds(5))
def test_snapshot_all_crash(seed: int) -> None:
    c = Cluster(3, seed, snapshot_every=EVERY)
    c.one(b"x", 3)
    for it in range(5):
        for k in range(EVERY + 2):
            c.one(b"a%d-%d" % (it, k), 3)
        idx = c.one(b"pre%d" % it, 3)
        for i in list(c.nodes):
            c.crash(i)
        for i in list(c.nodes):
            c.restart(i)
            # rebuilt from the snapshot, then the committed entries persisted after it were re-applied
            assert c.snapshot_of(i).index > 0
            assert c.nodes[i].sm.applied_index >= c.snapshot_of(i).index
        idx2 = c.one(b"post%d" % it, 3)
        assert idx2 > idx


@pytest.mark.parametrize("seed", seeds(10))
def test_crash_during_snapshot_install(seed: int) -> None:
    """The follower crashes right after it persisted an installed snapshot (and, other times, just before):
    it must come back with the snapshot's state and catch up from there."""
    c = Cluster(3, seed, snapshot_every=EVERY)
    c.one(b"x", 3)
    ld = c.check_one_leader()
    f = next(i for i in c.nodes if i != ld)
    c.isolate(f)
    for k in range(3 * EVERY):
        c.one(b"y%d" % k, 2)
    c.heal()
    rng = random.Random(seed)
    crash_after = rng.randrange(1, 4)
    installs = 0
    before = c.nodes[f].sm.applied_index
    # deliver step by step; crash the follower once it has handled its ``crash_after``-th message
    for _ in range(5000):
        c.step_once()
        n = c.nodes[f]
        if n.up and n.sm.applied_index > before:
            installs += 1
            if installs >= crash_after:
                break
    c.crash(f)
    c.restart(f)
    assert c.nodes[f].sm.applied_index >= c.snapshot_of(f).index > 0
    idx = c.one(b"z", 3)
    assert c.run_until(lambda: all(c.nodes[i].sm.applied_index >= idx for i in c.nodes), 20)
    mine = {k: v for k, v in c.nodes[f].sm.data.items() if k <= idx}
    theirs = {k: v for k, v in c.nodes[ld].sm.data.items() if k <= idx}
    assert mine == theirs, f"seed {seed}: state machines differ after the install/crash"
