"""The Ready batch: everything a node asks its driver to do, in the order the driver must do it.

1. Persist ``snapshot`` (storage keeps log entries after it only if its entry at ``snapshot.index`` has
   ``snapshot.term``, else it drops the whole log), then ``entries`` (an entry at index i replaces the stored
   entry at i and everything after it), then ``hard_state``; fsync.
2. Only then send ``messages`` (a vote or an append acknowledgement must never outrun the disk).
3. If ``snapshot`` is newer than the state machine, restore the state machine from ``snapshot.data``; apply
   ``committed_entries`` in order (skip NORMAL entries with empty data: they are leaders' no-ops); serve the
   ``read_states`` whose index the state machine has reached.
4. Call ``RaftNode.advance(ready)``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .messages import Entry, HardState, Message, Snapshot


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state worth reporting (never persisted)."""

    leader: str | None
    role: Role


@dataclass(frozen=True, slots=True)
class ReadState:
    """ReadIndex answer: once the state machine has applied ``index``, a read for ``ctx`` is linearizable."""

    index: int
    ctx: bytes


@dataclass(frozen=True, slots=True)
class Ready:
    soft_state: SoftState | None  # None: unchanged since the last Ready
    hard_state: HardState | None  # None: unchanged since the last Ready
    snapshot: Snapshot | None
    entries: tuple[Entry, ...]
    messages: tuple[Message, ...]
    committed_entries: tuple[Entry, ...]
    read_states: tuple[ReadState, ...]

    @property
    def must_sync(self) -> bool:
        """Whether this Ready carries anything durable (needs an fsync before the messages go)."""
        return self.hard_state is not None or bool(self.entries) or self.snapshot is not None
