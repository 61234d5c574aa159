"""Node configuration, the persisted state a node starts from, and the errors proposals can raise."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .messages import ConfChange, ConfChangeType, ConfState, Entry, EntryType, HardState, Snapshot


@dataclass(frozen=True, slots=True)
class RaftConfig:
    election_ticks: int = 10  # election timeout is drawn uniformly from [election_ticks, 2*election_ticks)
    heartbeat_ticks: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    max_entries_per_msg: int = 64
    max_inflight_msgs: int = 256
    snapshot_timeout_ticks: int = 20  # resend a snapshot nobody acknowledged after this many ticks

    def __post_init__(self) -> None:
        if not 0 < self.heartbeat_ticks < self.election_ticks:
            raise ValueError("need 0 < heartbeat_ticks < election_ticks")


@dataclass(frozen=True, slots=True)
class PersistentState:
    """Everything a node persisted through its Readys: what a (re)started node is built from."""

    hard_state: HardState
    snapshot: Snapshot
    entries: tuple[Entry, ...] = ()

    @staticmethod
    def bootstrap(voters: Iterable[str], learners: Iterable[str] = ()) -> PersistentState:
        """The identical starting state of every founding member: one committed configuration entry per
        member, in term 1 (as etcd bootstraps). Keeping the initial membership in the log, not in a
        snapshot, means a node added later learns it by ordinary replication."""
        changes = [ConfChange(ConfChangeType.ADD_VOTER, v) for v in sorted(voters)]
        changes += [ConfChange(ConfChangeType.ADD_LEARNER, v) for v in sorted(learners)]
        entries = tuple(Entry(k + 1, 1, EntryType.CONF_CHANGE, cc.encode()) for k, cc in enumerate(changes))
        return PersistentState(HardState(1, None, len(entries)), Snapshot(0, 0, ConfState()), entries)

    @staticmethod
    def joining() -> PersistentState:
        """A node about to be added to an existing group: empty; it learns everything from the leader."""
        return PersistentState(HardState(), Snapshot(0, 0, ConfState()))


class NotLeader(Exception):
    def __init__(self, leader_hint: str | None) -> None:
        super().__init__(f"not the leader (leader is {leader_hint!r})")
        self.leader_hint = leader_hint


class ProposalDropped(Exception):
    """The leader refused a proposal (transfer in progress, membership change already pending, ...)."""
