"""Durable storage for one node's Raft state: hard state, log entries and the latest snapshot, on disk.

Layout of the directory:
- ``log``: append-only file of framed records, one per entry (``[len:u32][crc32:u32][msgpack payload]``).
  A torn tail (kill -9 mid-write) fails its length or CRC check and is cut off at load: never misread.
  Replacing a conflicting suffix truncates the file at the first replaced entry, then appends.
- ``hardstate`` and ``snapshot``: one framed record each, replaced atomically (temp file, fsync, rename,
  fsync of the directory), so a crash leaves either the old or the new version.
Every write that Raft needs before sending (entries, hard state, snapshot) is fsynced before returning.
Blocking I/O by design: the asyncio driver calls it from a worker thread.

Apply a ``Ready`` with ``persist(ready)``: snapshot first, then entries, then hard state (the order
ring/raft/ready.py prescribes). ``load()`` rebuilds exactly the ``PersistentState`` a node restarts from.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgpack

from ring.raft import ConfState, Entry, EntryType, HardState, PersistentState, Ready, Snapshot

_HEADER = struct.Struct("<II")  # payload length, crc32 of payload
MAX_RECORD = 1 << 30


class CorruptLog(Exception):
    """The log is damaged somewhere other than its tail (e.g. entries out of sequence)."""


def frame(payload: bytes) -> bytes:
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def read_frames(blob: bytes) -> tuple[list[bytes], int]:
    """Decode consecutive framed records; returns them and the offset just past the last intact one."""
    out: list[bytes] = []
    pos = 0
    while pos + _HEADER.size <= len(blob):
        length, crc = _HEADER.unpack_from(blob, pos)
        end = pos + _HEADER.size + length
        if length > MAX_RECORD or end > len(blob):
            break
        payload = blob[pos + _HEADER.size : end]
        if zlib.crc32(payload) != crc:
            break
        out.append(payload)
        pos = end
    return out, pos


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _encode_entry(e: Entry) -> bytes:
    return msgpack.packb([e.index, e.term, int(e.type), e.data])


def _decode_entry(b: bytes) -> Entry:
    index, term, kind, data = msgpack.unpackb(b)
    return Entry(index, term, EntryType(kind), bytes(data))


def _encode_snapshot(s: Snapshot) -> bytes:
    return msgpack.packb([s.index, s.term, sorted(s.conf.voters), sorted(s.conf.learners), s.data])


def _decode_snapshot(b: bytes) -> Snapshot:
    index, term, voters, learners, data = msgpack.unpackb(b)
    return Snapshot(index, term, ConfState(frozenset(voters), frozenset(learners)), bytes(data))


class RaftLogStore:
    """One node's durable Raft state in ``directory`` (created if missing)."""

    def __init__(self, directory: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._fsync = fsync
        self._log_path = self.dir / "log"
        self._offsets: list[int] = []  # file offset of each entry in ``_entries``
        self._entries: list[Entry] = []
        self._end = 0
        self.hard_state = HardState()
        self.snapshot = Snapshot(0, 0, ConfState())
        self._fd: int | None = None
        self._load()

    # ---- loading ----
    def _read_single(self, name: str) -> bytes | None:
        path = self.dir / name
        if not path.exists():
            return None
        frames, _ = read_frames(path.read_bytes())
        if len(frames) != 1:
            raise CorruptLog(f"{path} is damaged")  # written atomically: damage means the disk lied
        return frames[0]

    def _load(self) -> None:
        hs = self._read_single("hardstate")
        if hs is not None:
            term, vote, commit = msgpack.unpackb(hs)
            self.hard_state = HardState(term, vote, commit)
        snap = self._read_single("snapshot")
        if snap is not None:
            self.snapshot = _decode_snapshot(snap)
        blob = self._log_path.read_bytes() if self._log_path.exists() else b""
        frames, good = read_frames(blob)
        self._fd = os.open(self._log_path, os.O_RDWR | os.O_CREAT, 0o644)
        if good < len(blob):
            os.ftruncate(self._fd, good)  # cut the torn tail so the next append starts on a clean record
            self._sync()
        pos = 0
        for payload in frames:
            e = _decode_entry(payload)
            if self._entries and e.index != self._entries[-1].index + 1:
                raise CorruptLog(f"entry {e.index} follows {self._entries[-1].index}")
            self._entries.append(e)
            self._offsets.append(pos)
            pos += _HEADER.size + len(payload)
        self._end = good
        self._drop_covered_by_snapshot()  # a crash between saving a snapshot and rewriting the log

    def _drop_covered_by_snapshot(self) -> None:
        """Keep only entries after the snapshot, and only if the log agrees with it at its last index."""
        s = self.snapshot
        at = [e for e in self._entries if e.index == s.index]
        keep = [e for e in self._entries if e.index > s.index]
        if (at and at[0].term != s.term) or (keep and keep[0].index != s.index + 1):
            keep = []
        if keep != self._entries:
            self._rewrite(keep)

    def load(self) -> PersistentState:
        """What a restarting node is built from."""
        first = self.snapshot.index + 1
        entries = tuple(e for e in self._entries if e.index >= first)
        commit = min(self.hard_state.commit, entries[-1].index if entries else self.snapshot.index)
        hs = HardState(self.hard_state.term, self.hard_state.vote, max(commit, self.snapshot.index))
        return PersistentState(hs, self.snapshot, entries)

    # ---- writing ----
    def _sync(self) -> None:
        if self._fsync and self._fd is not None:
            os.fsync(self._fd)

    def _atomic_write(self, name: str, payload: bytes) -> None:
        tmp = self.dir / (name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(frame(payload))
            f.flush()
            if self._fsync:
                os.fsync(f.fileno())
        os.replace(tmp, self.dir / name)
        if self._fsync:
            _fsync_dir(self.dir)

    def save_hard_state(self, hs: HardState) -> None:
        self._atomic_write("hardstate", msgpack.packb([hs.term, hs.vote, hs.commit]))
        self.hard_state = hs

    def append(self, entries: Sequence[Entry]) -> None:
        """Store entries; the first replaces the stored entry at its index and everything after it."""
        if not entries:
            return
        assert self._fd is not None
        first = entries[0].index
        base = self._entries[0].index if self._entries else self.snapshot.index + 1
        if first < base or first > base + len(self._entries):
            raise CorruptLog(f"append at {first} does not fit a log holding {base}..{base + len(self._entries) - 1}")
        cut = first - base
        if cut < len(self._entries):
            self._end = self._offsets[cut]
            os.ftruncate(self._fd, self._end)
            del self._entries[cut:]
            del self._offsets[cut:]
        chunks = []
        pos = self._end
        for e in entries:
            rec = frame(_encode_entry(e))
            self._offsets.append(pos)
            self._entries.append(e)
            chunks.append(rec)
            pos += len(rec)
        os.pwrite(self._fd, b"".join(chunks), self._end)
        self._end = pos
        self._sync()

    def save_snapshot(self, snap: Snapshot) -> None:
        """Store a snapshot and drop the entries it covers (all entries if the log disagrees with it)."""
        if snap.index <= self.snapshot.index and self.snapshot.index > 0:
            return
        self._atomic_write("snapshot", _encode_snapshot(snap))
        self.snapshot = snap
        self._drop_covered_by_snapshot()

    def _rewrite(self, keep: list[Entry]) -> None:
        tmp = self.dir / "log.tmp"
        with open(tmp, "wb") as f:
            offsets, pos = [], 0
            for e in keep:
                rec = frame(_encode_entry(e))
                offsets.append(pos)
                f.write(rec)
                pos += len(rec)
            f.flush()
            if self._fsync:
                os.fsync(f.fileno())
        if self._fd is not None:
            os.close(self._fd)
        os.replace(tmp, self._log_path)
        if self._fsync:
            _fsync_dir(self.dir)
        self._fd = os.open(self._log_path, os.O_RDWR, 0o644)
        self._entries, self._offsets, self._end = keep, offsets, pos

    def persist(self, rd: Ready) -> None:
        """Make a Ready's durable parts durable, in the required order; returns once all are fsynced."""
        if rd.snapshot is not None:
            self.save_snapshot(rd.snapshot)
        if rd.entries:
            self.append(rd.entries)
        if rd.hard_state is not None:
            self.save_hard_state(rd.hard_state)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RaftLogStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
