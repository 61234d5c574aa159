"""What a leader knows about each follower's log, and how it paces replication to it (etcd's Progress).

PROBE: we do not know where the follower's log matches ours; send one append and wait for its answer.
REPLICATE: the follower is in step; stream appends optimistically, at most ``max_inflight`` unacknowledged.
SNAPSHOT: the entries it needs are compacted; a snapshot is on its way, send nothing else until it lands
(or until a timeout, so a dropped snapshot is resent).
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


@dataclass
class Progress:
    match: int
    next: int
    state: ProgressState = ProgressState.PROBE
    probe_sent: bool = False
    pending_snapshot: int = 0
    snapshot_ticks: int = 0
    recent_active: bool = False  # heard from since the last check-quorum round
    heartbeats_since_ack: int = 0  # heartbeat answers since the last append answer: > 1 means appends were lost
    inflight: deque[int] = field(default_factory=deque)  # last index of each unacknowledged append

    def become_probe(self) -> None:
        if self.state is ProgressState.SNAPSHOT:
            self.next = max(self.match + 1, self.pending_snapshot + 1)
        else:
            self.next = self.match + 1
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.pending_snapshot = 0
        self.inflight.clear()

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.next = self.match + 1
        self.probe_sent = False
        self.inflight.clear()

    def become_snapshot(self, index: int) -> None:
        self.state = ProgressState.SNAPSHOT
        self.pending_snapshot = index
        self.snapshot_ticks = 0
        self.inflight.clear()

    def snapshot_timed_out(self) -> None:
        """The snapshot (or its answer) was lost: probe again from what we know it has."""
        self.pending_snapshot = 0
        self.state = ProgressState.PROBE
        self.next = self.match + 1
        self.probe_sent = False

    def maybe_update(self, index: int) -> bool:
        """A successful append answer: advance match. False when the answer is stale."""
        updated = index > self.match
        if updated:
            self.match = index
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        return updated

    def maybe_decrease(self, rejected: int, hint: int) -> bool:
        """A rejection of the append at prev_index ``rejected``; ``hint`` is the index to try next.
        False when the rejection is stale (for an append we already know succeeded or superseded)."""
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = max(self.match + 1, min(rejected, hint))
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(self.match + 1, min(rejected, hint))
        self.probe_sent = False
        return True

    def sent(self, last: int, count: int) -> None:
        """Record an append covering entries up to ``last`` (``count`` of them)."""
        if self.state is ProgressState.REPLICATE:
            if count:
                self.next = last + 1
                self.inflight.append(last)
        elif self.state is ProgressState.PROBE:
            self.probe_sent = True

    def free_inflight(self, upto: int) -> None:
        while self.inflight and self.inflight[0] <= upto:
            self.inflight.popleft()

    def is_paused(self, max_inflight: int) -> bool:
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return len(self.inflight) >= max_inflight
        return True
