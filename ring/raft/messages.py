"""Wire and log data of the Raft core: entries, snapshots, hard state and every message, as frozen dataclasses.

Everything here is plain data (no behaviour beyond small helpers), so a driver can serialise it any way it
likes and tests can compare it with ``==``. Every message carries ``frm``, ``to`` and ``term``; a node
reacts to a message only through ``RaftNode.step``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Union


class EntryType(enum.IntEnum):
    NORMAL = 0  # application data; an empty NORMAL entry is the no-op a new leader appends
    CONF_CHANGE = 1  # data is an encoded ConfChange


@dataclass(frozen=True, slots=True)
class Entry:
    index: int
    term: int
    type: EntryType = EntryType.NORMAL
    data: bytes = b""


class ConfChangeType(enum.IntEnum):
    ADD_VOTER = 0  # also promotes an existing learner
    ADD_LEARNER = 1  # also demotes an existing voter
    REMOVE_NODE = 2


@dataclass(frozen=True, slots=True)
class ConfChange:
    """A single-server membership change (Raft thesis section 4.1)."""

    type: ConfChangeType
    node_id: str

    def encode(self) -> bytes:
        return f"{int(self.type)}:{self.node_id}".encode()

    @staticmethod
    def decode(data: bytes) -> ConfChange:
        kind, _, node = data.decode().partition(":")
        return ConfChange(ConfChangeType(int(kind)), node)


@dataclass(frozen=True, slots=True)
class ConfState:
    """Who is in the group: voters count for elections and commit, learners only receive the log."""

    voters: frozenset[str] = field(default_factory=frozenset)
    learners: frozenset[str] = field(default_factory=frozenset)

    def apply(self, cc: ConfChange) -> ConfState:
        voters, learners = set(self.voters), set(self.learners)
        voters.discard(cc.node_id)
        learners.discard(cc.node_id)
        if cc.type is ConfChangeType.ADD_VOTER:
            voters.add(cc.node_id)
        elif cc.type is ConfChangeType.ADD_LEARNER:
            learners.add(cc.node_id)
        return ConfState(frozenset(voters), frozenset(learners))

    @property
    def members(self) -> frozenset[str]:
        return self.voters | self.learners


@dataclass(frozen=True, slots=True)
class Snapshot:
    """State-machine image covering every entry up to and including ``index``."""

    index: int
    term: int
    conf: ConfState
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be on disk before a node answers anyone: current term, vote in it, commit index."""

    term: int = 0
    vote: str | None = None
    commit: int = 0


# ---- messages ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class VoteRequest:
    frm: str
    to: str
    term: int  # for a pre-vote: the term the sender would campaign in (its term + 1); its own term is unchanged
    last_index: int
    last_term: int
    pre_vote: bool = False
    transfer: bool = False  # campaign triggered by TimeoutNow: voters skip their leader-lease check


@dataclass(frozen=True, slots=True, kw_only=True)
class VoteResponse:
    frm: str
    to: str
    term: int
    granted: bool
    pre_vote: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class AppendEntries:
    frm: str
    to: str
    term: int
    prev_index: int
    prev_term: int
    entries: tuple[Entry, ...]
    commit: int


@dataclass(frozen=True, slots=True, kw_only=True)
class AppendResponse:
    """``success``: ``index`` is the follower's match index. Rejection: ``index`` is the rejected ``prev_index``
    and ``conflict_index``/``conflict_term`` tell the leader where to retry (fast backup, one RPC per term)."""

    frm: str
    to: str
    term: int
    success: bool
    index: int
    conflict_index: int = 0
    conflict_term: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Heartbeat:
    frm: str
    to: str
    term: int
    commit: int  # never beyond what the follower is known to hold
    ctx: bytes = b""  # ReadIndex round the heartbeat confirms leadership for


@dataclass(frozen=True, slots=True, kw_only=True)
class HeartbeatResponse:
    frm: str
    to: str
    term: int
    ctx: bytes = b""


@dataclass(frozen=True, slots=True, kw_only=True)
class InstallSnapshot:
    """The whole snapshot in one message: the ring's membership state is small, so no chunking."""

    frm: str
    to: str
    term: int
    snapshot: Snapshot


@dataclass(frozen=True, slots=True, kw_only=True)
class TimeoutNow:
    """Leadership transfer: the target campaigns at once, without pre-vote."""

    frm: str
    to: str
    term: int


Message = Union[
    VoteRequest,
    VoteResponse,
    AppendEntries,
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    TimeoutNow,
]
