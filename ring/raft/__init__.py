"""A deterministic, sans-IO Raft core (etcd-io/raft style) that orders ring membership changes.

Use::

    node = RaftNode("n1", RaftConfig(), random.Random(seed), PersistentState.bootstrap({"n1", "n2", "n3"}))
    node.tick(); node.step(msg); node.propose(b"...")
    while node.has_ready():
        rd = node.ready()   # persist rd.snapshot / rd.entries / rd.hard_state, then send rd.messages,
        ...                 # apply rd.committed_entries, serve rd.read_states
        node.advance(rd)

Membership: single-server changes (``ConfChange``), one at a time, effective once appended to a node's log.
Learners receive the log but never vote or count toward commit. Messages travel as ``wire.encode_message``
bytes (``decode_message`` refuses anything else with a ``WireError``).
"""

from .config import NotLeader, PersistentState, ProposalDropped, RaftConfig
from .core import RaftNode
from .log import LogCorruption, RaftLog
from .messages import (
    AppendEntries,
    AppendResponse,
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Message,
    Snapshot,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)
from .progress import Progress, ProgressState
from .ready import ReadState, Ready, Role, SoftState
from .wire import WIRE_VERSION, WireError, decode_message, encode_message

__all__ = [
    "WIRE_VERSION",
    "AppendEntries",
    "AppendResponse",
    "ConfChange",
    "ConfChangeType",
    "ConfState",
    "Entry",
    "EntryType",
    "HardState",
    "Heartbeat",
    "HeartbeatResponse",
    "InstallSnapshot",
    "LogCorruption",
    "Message",
    "NotLeader",
    "PersistentState",
    "Progress",
    "ProgressState",
    "ProposalDropped",
    "RaftConfig",
    "RaftLog",
    "RaftNode",
    "ReadState",
    "Ready",
    "Role",
    "Snapshot",
    "SoftState",
    "TimeoutNow",
    "VoteRequest",
    "VoteResponse",
    "WireError",
    "decode_message",
    "encode_message",
]
