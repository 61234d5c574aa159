"""The ring-change schedule (tests/nemesis.py `make_ring_schedule`) is pure and seeded: the same seed gives
the same schedule, and every change it draws is possible when it comes."""

from __future__ import annotations

import pytest

from tests.nemesis import FaultKind, RingOp, make_ring_schedule
from tests.ringfaults import SCHEDULES, schedule_of

FOUNDERS = ["n1", "n2", "n3", "n4"]
SPARES = ["n5", "n6", "n7"]


@pytest.mark.parametrize("kind", sorted(SCHEDULES))
def test_the_same_seed_gives_the_same_schedule(kind: str) -> None:
    assert schedule_of(kind, 7) == schedule_of(kind, 7)
    assert len(schedule_of(kind, 7)) == SCHEDULES[kind].changes


def test_different_seeds_give_different_schedules() -> None:
    assert len({tuple(schedule_of("mixed", s)) for s in range(10)}) > 1


@pytest.mark.parametrize("seed", range(50))
def test_every_change_is_possible_when_it_comes(seed: int) -> None:
    members, used = set(FOUNDERS), set(FOUNDERS)
    for ch in make_ring_schedule(seed, list(RingOp), FOUNDERS, SPARES, 6,
                                 fault_kinds=[FaultKind.KILL, FaultKind.PAUSE]):
        kind = ch.inner or ch.op
        if kind in (RingOp.JOIN, RingOp.CYCLE):
            assert ch.node not in used  # a node id is never reused
            used.add(ch.node)
            if kind is RingOp.JOIN:
                members.add(ch.node)
        elif kind is RingOp.REPLACE:
            assert ch.node in members and ch.new is not None and ch.new not in used
            used.add(ch.new)
            members = (members - {ch.node}) | {ch.new}
        else:
            assert ch.node in members and len(members) > 3  # a leave or remove keeps N=3 members
            members.discard(ch.node)
        if ch.fault is not None:  # another member, never the one changing
            assert ch.op is not RingOp.LEADER_KILL
            assert set(ch.fault.nodes) <= members and ch.node not in ch.fault.nodes
        assert len(members) >= 3
