"""The Raft log as a node sees it: a snapshot (the compacted prefix) followed by in-memory entries.

Entries up to ``stable`` are known to be persisted by the driver; those after it are *unstable* and are
handed out in the next Ready. ``pending_snapshot`` is a snapshot not yet persisted (installed from the
leader or produced by compaction). ``committed``/``applied`` track how far the log is decided and applied.
The membership configuration in force is the *latest* configuration entry in the log, committed or not
(Raft thesis 4.1); ``conf`` is recomputed whenever the log changes.
"""

from __future__ import annotations

from collections.abc import Sequence

from .messages import ConfChange, ConfState, Entry, EntryType, Snapshot


class LogCorruption(AssertionError):
    """A step would break a Raft safety property (e.g. truncating a committed entry)."""


class RaftLog:
    def __init__(self, snapshot: Snapshot, entries: Sequence[Entry], commit: int) -> None:
        self.snapshot = snapshot
        self._entries: list[Entry] = [e for e in entries if e.index > snapshot.index]
        for k, e in enumerate(self._entries):
            if e.index != snapshot.index + 1 + k:
                raise LogCorruption(f"entries not contiguous after snapshot {snapshot.index}: {e.index}")
        self.stable = self.last_index
        self.pending_snapshot: Snapshot | None = None
        self.committed = max(snapshot.index, min(commit, self.last_index))
        self.applied = snapshot.index
        self._conf_indices: list[int] = [e.index for e in self._entries if e.type == EntryType.CONF_CHANGE]
        self.conf = self.conf_at(self.last_index)

    # ---- lookups ----
    @property
    def first_index(self) -> int:
        return self.snapshot.index + 1

    @property
    def last_index(self) -> int:
        return self.snapshot.index + len(self._entries)

    @property
    def last_term(self) -> int:
        t = self.term(self.last_index)
        assert t is not None
        return t

    def term(self, index: int) -> int | None:
        """Term of the entry at ``index``; None when compacted away or not yet in the log."""
        if index == self.snapshot.index:
            return self.snapshot.term
        if index < self.snapshot.index or index > self.last_index:
            return None
        return self._entries[index - self.snapshot.index - 1].term

    def entry(self, index: int) -> Entry:
        return self._entries[index - self.snapshot.index - 1]

    def match_term(self, index: int, term: int) -> bool:
        return self.term(index) == term

    def entries(self, lo: int, hi: int) -> list[Entry] | None:
        """Entries ``lo..hi`` inclusive, or None when ``lo`` is compacted away."""
        if lo <= self.snapshot.index:
            return None
        off = self.snapshot.index + 1
        return self._entries[lo - off : max(lo, hi + 1) - off]

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Election restriction: is a candidate's log at least as up to date as ours?"""
        return last_term > self.last_term or (last_term == self.last_term and last_index >= self.last_index)

    def conflict_hint(self, prev_index: int) -> tuple[int, int | None]:
        """(ConflictIndex, ConflictTerm) for a rejected append at ``prev_index``: lets the leader skip a whole
        term per round trip instead of one entry."""
        if prev_index > self.last_index:
            return self.last_index + 1, None
        t = self.term(prev_index)
        assert t is not None  # prev_index >= committed >= snapshot.index
        i = prev_index
        while i - 1 > self.committed and self.term(i - 1) == t:
            i -= 1
        return i, t

    def last_index_of_term(self, term: int, at_most: int) -> int | None:
        """Highest index <= at_most whose entry has ``term`` (terms only grow along the log)."""
        i = min(at_most, self.last_index)
        while i >= self.snapshot.index:
            t = self.term(i)
            assert t is not None
            if t == term:
                return i
            if t < term:
                return None
            i -= 1
        return None

    def conf_at(self, index: int) -> ConfState:
        """Configuration in force at ``index``: the latest conf entry at or before it, else the snapshot's."""
        conf = self.snapshot.conf
        for ci in self._conf_indices:  # each conf entry is a single-server delta on the one before
            if ci > index:
                break
            conf = conf.apply(ConfChange.decode(self.entry(ci).data))
        return conf

    @property
    def last_conf_index(self) -> int:
        return self._conf_indices[-1] if self._conf_indices else self.snapshot.index

    # ---- mutations ----
    def append(self, entries: Sequence[Entry]) -> None:
        """Append entries; the first may overwrite an uncommitted suffix, which is cut."""
        if not entries:
            return
        start = entries[0].index
        if start <= self.committed:
            raise LogCorruption(f"truncating committed entry {start} (committed {self.committed})")
        if start > self.last_index + 1:
            raise LogCorruption(f"gap: appending {start} after {self.last_index}")
        del self._entries[start - self.snapshot.index - 1 :]
        self._conf_indices = [i for i in self._conf_indices if i < start]
        self.stable = min(self.stable, start - 1)
        for e in entries:
            self._entries.append(e)
            if e.type == EntryType.CONF_CHANGE:
                self._conf_indices.append(e.index)
        self.conf = self.conf_at(self.last_index)

    def maybe_append(self, prev_index: int, prev_term: int, entries: Sequence[Entry]) -> int | None:
        """Follower side of AppendEntries: None on consistency-check failure, else the last index the
        message proves we share with the leader. Only the conflicting suffix (if any) is rewritten, so a
        stale or reordered message never truncates newer matching entries."""
        if not self.match_term(prev_index, prev_term):
            return None
        for k, e in enumerate(entries):
            if self.term(e.index) != e.term:
                self.append(entries[k:])
                break
        return prev_index + len(entries)

    def commit_to(self, index: int) -> bool:
        if index > self.committed:
            if index > self.last_index:
                raise LogCorruption(f"commit {index} beyond last index {self.last_index}")
            self.committed = index
            return True
        return False

    def restore(self, snapshot: Snapshot) -> None:
        """Replace the whole log with a snapshot from the leader (our log did not contain its last entry)."""
        self.snapshot = snapshot
        self._entries = []
        self._conf_indices = []
        self.pending_snapshot = snapshot
        self.stable = snapshot.index
        self.committed = snapshot.index
        self.applied = snapshot.index  # the driver restores the state machine from the Ready's snapshot
        self.conf = snapshot.conf

    def compact(self, snapshot: Snapshot) -> None:
        """Drop entries covered by an application snapshot (index <= applied)."""
        if snapshot.index <= self.snapshot.index:
            return
        cut = snapshot.index - self.snapshot.index
        del self._entries[:cut]
        self._conf_indices = [i for i in self._conf_indices if i > snapshot.index]
        self.snapshot = snapshot
        self.pending_snapshot = snapshot
        self.stable = max(self.stable, snapshot.index)

    def unstable_entries(self) -> list[Entry]:
        return self._entries[self.stable - self.snapshot.index :] if self.stable >= self.snapshot.index else []

    def stable_to(self, index: int, term: int) -> None:
        if self.match_term(index, term) and index > self.stable:
            self.stable = index

    def stable_snap_to(self, index: int) -> None:
        if self.pending_snapshot is not None and self.pending_snapshot.index == index:
            self.pending_snapshot = None

    def next_committed(self) -> list[Entry]:
        got = self.entries(self.applied + 1, self.committed)
        return got or []

    def applied_to(self, index: int) -> None:
        if index > self.committed:
            raise LogCorruption(f"applied {index} beyond commit {self.committed}")
        self.applied = max(self.applied, index)
