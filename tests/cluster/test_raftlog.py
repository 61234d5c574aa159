"""The on-disk Raft log: round trips, suffix truncation, snapshots, torn tails and kill -9 mid-append."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dynamostore.cluster.raftlog import CorruptLog, RaftLogStore, frame, read_frames
from ring.raft import ConfState, Entry, EntryType, HardState, PersistentState, RaftConfig, RaftNode, Snapshot


def _entries(lo: int, hi: int, term: int) -> list[Entry]:
    return [Entry(i, term, EntryType.NORMAL, b"v%d" % i) for i in range(lo, hi + 1)]


def test_round_trip(tmp_path: Path) -> None:
    with RaftLogStore(tmp_path) as st:
        st.append(_entries(1, 5, 1))
        st.append([Entry(6, 2, EntryType.CONF_CHANGE, b"0:n4")])
        st.save_hard_state(HardState(2, "n1", 4))
    loaded = RaftLogStore(tmp_path).load()
    assert loaded.hard_state == HardState(2, "n1", 4)
    assert list(loaded.entries) == _entries(1, 5, 1) + [Entry(6, 2, EntryType.CONF_CHANGE, b"0:n4")]
    assert loaded.entries[-1].type is EntryType.CONF_CHANGE


def test_append_truncates_conflicting_suffix(tmp_path: Path) -> None:
    with RaftLogStore(tmp_path) as st:
        st.append(_entries(1, 10, 1))
        st.append(_entries(6, 7, 3))  # replaces 6..10
        st.append(_entries(8, 8, 3))
        with pytest.raises(CorruptLog):
            st.append(_entries(20, 20, 3))  # a gap is a caller bug, never silently stored
    got = RaftLogStore(tmp_path).load().entries
    assert [(e.index, e.term) for e in got] == [(i, 1) for i in range(1, 6)] + [(6, 3), (7, 3), (8, 3)]


def test_snapshot_compacts_and_keeps_matching_suffix(tmp_path: Path) -> None:
    conf = ConfState(frozenset({"n1", "n2"}), frozenset({"l1"}))
    with RaftLogStore(tmp_path) as st:
        st.append(_entries(1, 10, 1))
        st.save_snapshot(Snapshot(6, 1, conf, b"state@6"))
        st.append(_entries(11, 12, 2))
    loaded = RaftLogStore(tmp_path).load()
    assert loaded.snapshot == Snapshot(6, 1, conf, b"state@6")
    assert [e.index for e in loaded.entries] == [7, 8, 9, 10, 11, 12]
    assert (tmp_path / "log").stat().st_size < 10 * 40  # the compacted prefix is gone from disk


def test_snapshot_that_disagrees_with_log_replaces_it(tmp_path: Path) -> None:
    with RaftLogStore(tmp_path) as st:
        st.append(_entries(1, 10, 1))
        st.save_snapshot(Snapshot(8, 5, ConfState(), b"leader's"))  # our entry 8 has term 1: whole log goes
        assert st.load().entries == ()
        st.append(_entries(9, 9, 5))
    assert [e.index for e in RaftLogStore(tmp_path).load().entries] == [9]


def _write_log(path: Path, n: int) -> int:
    """n entries; returns the offset where the last record starts."""
    with RaftLogStore(path) as st:
        st.append(_entries(1, n - 1, 1))
        start = (path / "log").stat().st_size
        st.append(_entries(n, n, 1))
    return start


def test_torn_tail_at_every_offset_is_cut(tmp_path: Path) -> None:
    base = tmp_path / "base"
    start = _write_log(base, 5)
    full = (base / "log").read_bytes()
    for cut in range(start, len(full)):
        d = tmp_path / f"cut{cut}"
        d.mkdir()
        (d / "log").write_bytes(full[:cut])
        with RaftLogStore(d) as st:
            assert [e.index for e in st.load().entries] == [1, 2, 3, 4], f"cut at {cut}"
            st.append(_entries(5, 6, 2))  # appends continue on a clean record boundary
        assert (d / "log").stat().st_size > start
        assert [e.term for e in RaftLogStore(d).load().entries] == [1, 1, 1, 1, 2, 2]


@pytest.mark.parametrize("seed", range(10))
def test_random_garbage_tail_is_cut(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    _write_log(tmp_path, 5)
    with open(tmp_path / "log", "ab") as f:
        f.write(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))))
    st = RaftLogStore(tmp_path)
    assert [e.index for e in st.load().entries] == [1, 2, 3, 4, 5]
    st.close()


def test_frames_detect_bit_flips() -> None:
    blob = frame(b"hello") + frame(b"world")
    assert read_frames(blob) == ([b"hello", b"world"], len(blob))
    flipped = blob[:-1] + bytes([blob[-1] ^ 1])
    assert read_frames(flipped) == ([b"hello"], len(frame(b"hello")))


def test_persist_ready_and_restart_node(tmp_path: Path) -> None:
    """A single-voter node persists through the store, restarts from it, and keeps its log and term."""
    st = RaftLogStore(tmp_path)
    init = PersistentState.bootstrap({"a"})
    st.append(init.entries)
    st.save_hard_state(init.hard_state)
    node = RaftNode("a", RaftConfig(), random.Random(1), st.load())
    for _ in range(30):
        node.tick()
    node.propose(b"x")
    while node.has_ready():
        rd = node.ready()
        st.persist(rd)
        node.advance(rd)
    node.compact(node.log.applied, b"sm")
    rd = node.ready()
    st.persist(rd)
    node.advance(rd)
    st.close()
    again = RaftLogStore(tmp_path).load()
    assert again.hard_state.term == node.term and again.snapshot.index == node.log.applied
    assert again.snapshot.data == b"sm"
    restarted = RaftNode("a", RaftConfig(), random.Random(2), again)
    assert restarted.log.last_index == node.log.last_index and restarted.term == node.term


_CHILD = r"""
import sys
from dynamostore.cluster.raftlog import RaftLogStore
from ring.raft import Entry, HardState
st = RaftLogStore(sys.argv[1])
i = st.load().entries[-1].index + 1 if st.load().entries else 1
while True:
    st.append([Entry(j, 1, data=b"x" * (j % 997)) for j in range(i, i + 7)])
    st.save_hard_state(HardState(1, None, i + 6))
    i += 7
"""


def test_sigkill_mid_append_leaves_loadable_log(tmp_path: Path) -> None:
    for round_ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path)])
        deadline = time.monotonic() + 20
        target = (round_ + 1) * 20_000
        while (not (tmp_path / "log").exists() or (tmp_path / "log").stat().st_size < target) and time.monotonic() < deadline:
            time.sleep(0.005)  # polling a condition with a deadline, not hoping
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert (tmp_path / "log").stat().st_size >= target, "child never wrote enough"
        st = RaftLogStore(tmp_path)
        state = st.load()
        idx = [e.index for e in state.entries]
        assert idx == list(range(1, len(idx) + 1)) and len(idx) > 0
        assert all(e.data == b"x" * (e.index % 997) for e in state.entries)
        assert state.hard_state.commit <= idx[-1]
        st.close()
