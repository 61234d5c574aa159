"""Unit tests of the log view and of the Ready contract, without the simulator."""

from __future__ import annotations

import random

import pytest

from ring.raft import (
    AppendEntries,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    LogCorruption,
    PersistentState,
    RaftConfig,
    RaftLog,
    RaftNode,
    Role,
    Snapshot,
    VoteRequest,
    VoteResponse,
)

EMPTY = Snapshot(0, 0, ConfState())


def _log(terms: list[int], commit: int = 0) -> RaftLog:
    return RaftLog(EMPTY, [Entry(i + 1, t) for i, t in enumerate(terms)], commit)


def test_term_lookup_and_up_to_date() -> None:
    log = _log([1, 1, 2, 3])
    assert [log.term(i) for i in range(6)] == [0, 1, 1, 2, 3, None]
    assert log.is_up_to_date(4, 3) and log.is_up_to_date(1, 4)
    assert not log.is_up_to_date(5, 2) and not log.is_up_to_date(3, 3)


def test_maybe_append_truncates_only_conflicts() -> None:
    log = _log([1, 1, 2, 2, 2])
    assert log.maybe_append(2, 1, [Entry(3, 2)]) == 3  # stale, matching: keeps 4 and 5
    assert log.last_index == 5
    assert log.maybe_append(2, 1, [Entry(3, 3)]) == 3  # conflict at 3: 3.. replaced
    assert log.last_index == 3 and log.term(3) == 3
    assert log.maybe_append(7, 3, [Entry(8, 3)]) is None  # gap: consistency check fails


def test_truncating_committed_entry_is_refused() -> None:
    log = _log([1, 1, 2], commit=3)
    with pytest.raises(LogCorruption):
        log.append([Entry(2, 5)])


def test_conflict_hint_points_at_first_index_of_conflicting_term() -> None:
    log = _log([1, 2, 2, 2, 2])
    assert log.conflict_hint(4) == (2, 2)  # skip the whole term 2
    assert log.conflict_hint(9) == (6, None)  # shorter log: retry after its end
    assert log.last_index_of_term(2, 5) == 5 and log.last_index_of_term(3, 5) is None


def test_compaction_keeps_term_of_snapshot_point() -> None:
    log = _log([1, 1, 2, 2], commit=4)
    log.applied = 4
    log.compact(Snapshot(3, 2, ConfState(frozenset({"a"})), b"s"))
    assert log.term(3) == 2 and log.term(2) is None and log.entries(2, 4) is None
    assert [e.index for e in log.entries(4, 4) or []] == [4]


def test_conf_tracks_log_and_reverts_on_truncation() -> None:
    add = lambda n: ConfChange(ConfChangeType.ADD_VOTER, n).encode()  # noqa: E731
    log = RaftLog(EMPTY, [Entry(1, 1, type=EntryType.CONF_CHANGE, data=add("a"))], 1)
    log.append([Entry(2, 1, type=EntryType.CONF_CHANGE, data=add("b"))])
    assert log.conf.voters == {"a", "b"}
    log.append([Entry(2, 2)])  # the uncommitted change is overwritten: configuration reverts
    assert log.conf.voters == {"a"}


def _node(id: str = "a", storage: PersistentState | None = None) -> RaftNode:
    st = storage or PersistentState.bootstrap({"a", "b", "c"})
    return RaftNode(id, RaftConfig(), random.Random(1), st)


def test_vote_and_its_hard_state_come_out_in_one_ready() -> None:
    n = _node("b")
    n.step(VoteRequest(frm="a", to="b", term=2, last_index=3, last_term=1))
    rd = n.ready()
    assert rd.hard_state == HardState(2, "a", 3)
    assert rd.messages == (VoteResponse(frm="b", to="a", term=2, granted=True),)
    n.advance(rd)
    with pytest.raises(RuntimeError):
        n.ready()
        n.ready()


def test_restart_remembers_vote_and_refuses_second_candidate() -> None:
    n = _node("b")
    n.step(VoteRequest(frm="a", to="b", term=2, last_index=3, last_term=1))
    rd = n.ready()
    n.advance(rd)
    assert rd.hard_state is not None
    again = _node("b", PersistentState(rd.hard_state, EMPTY, tuple(PersistentState.bootstrap({"a", "b", "c"}).entries)))
    again.step(VoteRequest(frm="c", to="b", term=2, last_index=3, last_term=1))
    assert again.ready().messages == (VoteResponse(frm="b", to="c", term=2, granted=False),)


def test_single_node_elects_itself_and_commits() -> None:
    n = RaftNode("a", RaftConfig(), random.Random(3), PersistentState.bootstrap({"a"}))
    for _ in range(30):
        n.tick()
    assert n.role is Role.LEADER
    idx = n.propose(b"x")
    rd = n.ready()
    assert rd.entries[-1].index == idx and rd.committed_entries[-1].data == b"x"
    n.advance(rd)
    assert not n.has_ready()


def test_follower_rejects_append_with_conflict_hint() -> None:
    n = _node("b")
    n.step(AppendEntries(frm="a", to="b", term=2, prev_index=10, prev_term=2, entries=(), commit=3))
    (resp,) = n.ready().messages
    assert not resp.success and resp.conflict_index == 4 and resp.conflict_term is None  # type: ignore[union-attr]


def test_learner_never_campaigns() -> None:
    n = RaftNode("l", RaftConfig(), random.Random(1), PersistentState.bootstrap({"a"}, {"l"}))
    for _ in range(100):
        n.tick()
    assert n.role is Role.FOLLOWER and not any(isinstance(m, VoteRequest) for m in n.ready().messages)
