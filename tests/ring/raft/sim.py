"""A deterministic simulated network and cluster for RaftNode tests, with invariants checked after every step.

Time is in micro-ticks: every node ticks once per ``TICK`` micro-ticks (each at its own phase) and a message
takes ``min_latency..max_latency`` micro-ticks, so the network can be much faster than the election clock
(as in practice) or slow, lossy, duplicating and reordering. Everything random comes from one seeded
``random.Random``: a failing seed replays exactly.

A node persists only through its Readys (``MemStorage``); a crash throws away the RaftNode and its state
machine, a restart rebuilds both from exactly what was persisted.

Invariants (``Checker``), asserted after every tick, delivery and proposal:
- election safety: at most one leader per term; a node never votes for two candidates in one term;
- log matching: an (index, term) pair always names the same entry with the same predecessor term;
- leader completeness: a leader of term T holds every entry committed in a term < T;
- state machine safety: no two nodes apply different entries at one index, and each applies in order;
- terms and commit indexes never go backwards; commit never passes the log's end.
"""

from __future__ import annotations

import heapq
import itertools
import os
import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import msgpack

from ring.raft import (
    ConfChange,
    Entry,
    EntryType,
    HardState,
    Message,
    NotLeader,
    PersistentState,
    ProposalDropped,
    RaftConfig,
    RaftNode,
    ReadState,
    Ready,
    Role,
    Snapshot,
)

TICK = 10  # micro-ticks per node tick


def seeds(default: int) -> range:
    """Seeds a randomized test runs: ``default`` in CI, ``RAFT_SEEDS`` (per test) on demand."""
    return range(int(os.environ.get("RAFT_SEEDS", default)))


class InvariantViolation(AssertionError):
    pass


class MemStorage:
    """What one node durably persisted through its Readys (a stand-in for dynamostore.raftlog)."""

    def __init__(self, initial: PersistentState) -> None:
        self.hard_state = initial.hard_state
        self.snapshot = initial.snapshot
        self.entries: list[Entry] = list(initial.entries)

    def persist(self, rd: Ready) -> None:
        if rd.snapshot is not None:
            s = rd.snapshot
            keep = [e for e in self.entries if e.index > s.index]
            at = [e for e in self.entries if e.index == s.index]
            self.entries = keep if at and at[0].term == s.term else []
            self.snapshot = s
        if rd.entries:
            first = rd.entries[0].index
            self.entries = [e for e in self.entries if e.index < first] + list(rd.entries)
            expect = self.snapshot.index + 1
            assert all(e.index == expect + k for k, e in enumerate(self.entries)), "stored log has a gap"
        if rd.hard_state is not None:
            self.hard_state = rd.hard_state

    def state(self) -> PersistentState:
        return PersistentState(self.hard_state, self.snapshot, tuple(self.entries))


@dataclass
class StateMachine:
    """Applied commands, by log index. Its snapshot is the whole map (the sims keep it small)."""

    applied_index: int = 0
    data: dict[int, bytes] = field(default_factory=dict)

    def encode(self) -> bytes:
        return msgpack.packb([self.applied_index, sorted(self.data.items())])

    @staticmethod
    def decode(blob: bytes) -> StateMachine:
        if not blob:
            return StateMachine()
        idx, items = msgpack.unpackb(blob)
        return StateMachine(idx, {int(k): bytes(v) for k, v in items})


class Checker:
    """Global safety invariants over every node of one simulation."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.leader_of_term: dict[int, str] = {}
        self.votes: dict[tuple[str, int], str] = {}
        self.entries: dict[tuple[int, int], tuple[EntryType, bytes, int | None]] = {}
        self.committed: dict[int, tuple[int, bytes, int]] = {}  # index -> (entry term, data, commit term)
        self.applied: dict[int, bytes] = {}

    def fail(self, msg: str) -> None:
        raise InvariantViolation(f"seed {self.seed}: {msg}")

    def on_leader(self, node: RaftNode) -> None:
        prev = self.leader_of_term.setdefault(node.term, node.id)
        if prev != node.id:
            self.fail(f"two leaders in term {node.term}: {prev} and {node.id}")
        snap = node.log.snapshot.index
        for i, (term, _, commit_term) in self.committed.items():
            if commit_term < node.term and i > snap and node.log.term(i) != term:
                self.fail(f"leader {node.id} of term {node.term} lacks committed entry {i} (term {term})")

    def on_hard_state(self, node_id: str, hs: HardState) -> None:
        if hs.vote is not None:
            prev = self.votes.setdefault((node_id, hs.term), hs.vote)
            if prev != hs.vote:
                self.fail(f"{node_id} voted for {prev} and {hs.vote} in term {hs.term}")

    def on_entries(self, node: RaftNode, entries: Iterable[Entry]) -> None:
        for e in entries:
            prev_term = node.log.term(e.index - 1)
            key = (e.index, e.term)
            got = (e.type, e.data, prev_term)
            known = self.entries.setdefault(key, got)
            if known[:2] != got[:2] or (known[2] is not None and prev_term is not None and known[2] != prev_term):
                self.fail(f"log matching: {node.id} has a different entry at {key}: {got} vs {known}")

    def on_commit(self, node: RaftNode, old: int, new: int) -> None:
        for i in range(max(old, node.log.snapshot.index) + 1, new + 1):
            e = node.log.entry(i)
            known = self.committed.setdefault(i, (e.term, e.data, node.term))
            if known[:2] != (e.term, e.data):
                self.fail(f"{node.id} committed a different entry at {i}: {e} vs {known}")

    def on_apply(self, node_id: str, index: int, data: bytes) -> None:
        known = self.applied.setdefault(index, data)
        if known != data:
            self.fail(f"state machine safety: {node_id} applied {data!r} at {index}, another applied {known!r}")


class SimNode:
    def __init__(self, id: str, cluster: Cluster, initial: PersistentState) -> None:
        self.id = id
        self.cluster = cluster
        self.storage = MemStorage(initial)
        self.phase = cluster.rng.randrange(TICK)
        self.incarnation = 0
        self.raft: RaftNode | None = None
        self.sm = StateMachine()
        self.read_states: list[ReadState] = []
        self.start()

    def start(self) -> None:
        self.incarnation += 1
        rng = random.Random(f"{self.cluster.seed}/{self.id}/{self.incarnation}")
        self.raft = RaftNode(self.id, self.cluster.cfg, rng, self.storage.state())
        self.sm = StateMachine.decode(self.storage.snapshot.data)
        self.last_term = self.storage.hard_state.term
        self.last_commit = self.raft.commit
        self.cluster.process(self)

    @property
    def up(self) -> bool:
        return self.raft is not None

    @property
    def r(self) -> RaftNode:
        assert self.raft is not None, f"{self.id} is down"
        return self.raft


class Cluster:
    def __init__(
        self,
        n: int,
        seed: int,
        *,
        learners: int = 0,
        cfg: RaftConfig | None = None,
        unreliable: bool = False,
        drop: float | None = None,
        snapshot_every: int | None = None,
        voters: Iterable[str] | None = None,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.cfg = cfg or RaftConfig(election_ticks=10, heartbeat_ticks=1)
        self.now = 0
        self.unreliable = unreliable
        self.drop = drop if drop is not None else (0.1 if unreliable else 0.0)
        self.min_latency, self.max_latency = (1, 3 * TICK) if unreliable else (1, 3)
        self.snapshot_every = snapshot_every
        self.check = Checker(seed)
        self.sent: Counter[str] = Counter()
        self._net: list[tuple[int, float, Message]] = []
        self._fifo: dict[tuple[str, str], int] = {}
        # scripted scenarios drop (None) or rewrite chosen messages
        self.intercept: Callable[[Message], Message | None] | None = None
        self._seq = itertools.count()
        self.group: dict[str, int] = {}
        ids = [f"n{k}" for k in range(1, n + 1)]
        learner_ids = [f"l{k}" for k in range(1, learners + 1)]
        voter_set = set(voters) if voters is not None else set(ids)
        initial = PersistentState.bootstrap(voter_set, set(learner_ids))
        self.nodes: dict[str, SimNode] = {}
        for i in ids + learner_ids:
            self.group[i] = 0
            self.nodes[i] = SimNode(i, self, initial if i in voter_set | set(learner_ids) else PersistentState.joining())

    # ---- node lifecycle ----
    def add_node(self, id: str) -> SimNode:
        """A fresh, empty node that will learn the configuration from the leader once it is added."""
        self.group[id] = 0
        self.nodes[id] = SimNode(id, self, PersistentState.joining())
        return self.nodes[id]

    def crash(self, id: str) -> None:
        self.nodes[id].raft = None

    def restart(self, id: str) -> None:
        assert not self.nodes[id].up
        self.nodes[id].start()

    def up_ids(self) -> list[str]:
        return [i for i, n in self.nodes.items() if n.up]

    # ---- network ----
    def partition(self, *groups: Iterable[str]) -> None:
        """Only nodes in the same group can talk; nodes not named form a group of their own."""
        for i in self.group:
            self.group[i] = -1
        for g, members in enumerate(groups):
            for i in members:
                self.group[i] = g
        for k, i in enumerate(sorted(x for x in self.group if self.group[x] == -1)):
            self.group[i] = 1000 + k

    def isolate(self, id: str) -> None:
        self.group[id] = 10_000 + list(self.nodes).index(id)

    def heal(self) -> None:
        for i in self.group:
            self.group[i] = 0

    def connected(self, a: str, b: str) -> bool:
        return self.group[a] == self.group[b]

    def _send(self, m: Message) -> None:
        self.sent[type(m).__name__] += 1
        if self.intercept is not None:
            got = self.intercept(m)
            if got is None:
                return
            m = got
        if not self.connected(m.frm, m.to) or self.rng.random() < self.drop:
            return
        copies = 2 if self.unreliable and self.rng.random() < 0.02 else 1
        for _ in range(copies):
            at = self.now + self.rng.randint(self.min_latency, self.max_latency)
            if self.unreliable:
                if self.rng.random() < 0.03:
                    at += self.rng.randint(0, 10 * TICK)  # a long delay: old messages turn up late
            else:  # a reliable network is FIFO per link, like TCP
                at = max(at, self._fifo.get((m.frm, m.to), 0))
                self._fifo[(m.frm, m.to)] = at
            heapq.heappush(self._net, (at, next(self._seq) if not self.unreliable else self.rng.random(), m))

    # ---- driving ----
    def process(self, node: SimNode) -> None:
        """Drain a node's Readys: persist, send, apply, check invariants, then maybe compact."""
        r = node.r
        while True:
            while r.has_ready():
                self._handle_ready(node, r, r.ready())
            if self.snapshot_every and node.sm.applied_index - r.log.snapshot.index >= self.snapshot_every:
                r.compact(node.sm.applied_index, node.sm.encode())
                continue
            break
        self._check_node(node, r)

    def _handle_ready(self, node: SimNode, r: RaftNode, rd: Ready) -> None:
        ck = self.check
        if rd.hard_state is not None:
            ck.on_hard_state(node.id, rd.hard_state)
        ck.on_entries(r, rd.entries)
        node.storage.persist(rd)
        for m in rd.messages:
            self._send(m)
        if rd.snapshot is not None and rd.snapshot.index > node.sm.applied_index:
            node.sm = StateMachine.decode(rd.snapshot.data)
            for i, d in node.sm.data.items():
                ck.on_apply(node.id, i, d)
        for e in rd.committed_entries:
            if e.index != node.sm.applied_index + 1:
                ck.fail(f"{node.id} applied {e.index} after {node.sm.applied_index}")
            node.sm.applied_index = e.index
            if e.type is EntryType.NORMAL and e.data:
                node.sm.data[e.index] = e.data
                ck.on_apply(node.id, e.index, e.data)
        node.read_states.extend(rd.read_states)
        r.advance(rd)

    def _check_node(self, node: SimNode, r: RaftNode) -> None:
        ck = self.check
        if r.term < node.last_term:
            ck.fail(f"{node.id} term went back from {node.last_term} to {r.term}")
        node.last_term = r.term
        if r.commit < node.last_commit:
            ck.fail(f"{node.id} commit went back from {node.last_commit} to {r.commit}")
        if r.commit > r.log.last_index:
            ck.fail(f"{node.id} commit {r.commit} beyond its log end {r.log.last_index}")
        if r.commit > node.last_commit:
            ck.on_commit(r, node.last_commit, r.commit)
        node.last_commit = r.commit
        if r.role is Role.LEADER:
            ck.on_leader(r)

    def step_once(self) -> None:
        """Advance one micro-tick: deliver what is due, then tick the nodes whose phase it is."""
        self.now += 1
        while self._net and self._net[0][0] <= self.now:
            _, _, m = heapq.heappop(self._net)
            dst = self.nodes.get(m.to)
            if dst is None or not dst.up or not self.connected(m.frm, m.to):
                continue
            dst.r.step(m)
            self.process(dst)
        for node in self.nodes.values():
            if node.up and (self.now + node.phase) % TICK == 0:
                node.r.tick()
                self.process(node)

    def deliver_all(self) -> None:
        """Deliver every message in flight (and what they cause) without letting time pass."""
        while self._net:
            self.now = max(self.now, self._net[0][0] - 1)
            self.now += 1
            while self._net and self._net[0][0] <= self.now:
                _, _, m = heapq.heappop(self._net)
                dst = self.nodes.get(m.to)
                if dst is not None and dst.up and self.connected(m.frm, m.to):
                    dst.r.step(m)
                    self.process(dst)

    def campaign(self, id: str, attempts: int = 5) -> None:
        """Scripted election: only ``id``'s clock runs until it stands, then the network settles.
        Repeats (a rejected candidate learns the higher term and tries again) until it leads."""
        node = self.nodes[id]
        for _ in range(attempts):
            start = node.r.term
            for _ in range(4 * self.cfg.election_ticks):
                node.r.tick()
                self.process(node)
                if node.r.term > start or node.r.role is Role.LEADER:
                    break
            self.deliver_all()
            if node.r.role is Role.LEADER:
                return
        raise AssertionError(f"{id} could not win an election")

    def run(self, ticks: int) -> None:
        for _ in range(ticks * TICK):
            self.step_once()

    def run_until(self, pred: Callable[[], bool], max_ticks: int) -> bool:
        for _ in range(max_ticks * TICK):
            if pred():
                return True
            self.step_once()
        return pred()

    # ---- observations ----
    def leaders(self) -> list[str]:
        return [i for i, n in self.nodes.items() if n.up and n.r.role is Role.LEADER]

    def leader(self) -> str | None:
        """The leader of the highest term among live nodes, if any."""
        best: tuple[int, str] | None = None
        for i in self.leaders():
            t = self.nodes[i].r.term
            if best is None or t > best[0]:
                best = (t, i)
        return best[1] if best else None

    def majority_side(self) -> set[str]:
        """Live nodes of the largest partition group (the side that can make progress)."""
        sizes = Counter(self.group[i] for i in self.up_ids())
        if not sizes:
            return set()
        g = sizes.most_common(1)[0][0]
        return {i for i in self.up_ids() if self.group[i] == g}

    def check_one_leader(self, max_ticks: int = 100, among: Iterable[str] | None = None) -> str:
        """Wait until exactly one leader of the highest term exists among ``among`` (default: the largest
        connected group of live nodes) and return it; fails the test (naming the seed) otherwise."""
        pool = set(among) if among is not None else None

        def found() -> str | None:
            lds = [i for i in self.leaders() if i in (pool if pool is not None else self.majority_side())]
            if not lds:
                return None
            top = max(self.nodes[i].r.term for i in lds)
            best = [i for i in lds if self.nodes[i].r.term == top]
            return best[0] if len(best) == 1 else None

        assert self.run_until(lambda: found() is not None, max_ticks), (
            f"seed {self.seed}: no leader within {max_ticks} ticks"
        )
        ld = found()
        assert ld is not None
        return ld

    def terms(self) -> dict[str, int]:
        return {i: n.r.term for i, n in self.nodes.items() if n.up}

    def applied_count(self, index: int) -> tuple[int, bytes | None]:
        """How many live nodes have applied ``index``, and its data."""
        count, data = 0, None
        for n in self.nodes.values():
            if n.up and n.sm.applied_index >= index:
                count += 1
                data = n.sm.data.get(index, data)
        return count, data

    def propose(self, data: bytes, via: str | None = None) -> int | None:
        """Propose at ``via`` (default: the current leader); None if it is not leader (or refused)."""
        target = via or self.leader()
        if target is None or not self.nodes[target].up:
            return None
        node = self.nodes[target]
        try:
            idx = node.r.propose(data)
        except (NotLeader, ProposalDropped):
            return None
        self.process(node)
        return idx

    def conf_change(self, cc: ConfChange) -> int | None:
        ld = self.leader()
        if ld is None:
            return None
        try:
            idx = self.nodes[ld].r.propose_conf_change(cc)
        except (NotLeader, ProposalDropped):
            return None
        self.process(self.nodes[ld])
        return idx

    def one(self, data: bytes, expected: int, max_ticks: int = 200, retry: bool = True) -> int:
        """Like the 6.824 lab's ``one()``: submit ``data`` until some leader gets it applied on at least
        ``expected`` live nodes; returns its index. Fails (naming the seed) after ``max_ticks``."""
        deadline = self.now + max_ticks * TICK
        while self.now < deadline:
            idx = None
            for cand in sorted(self.leaders(), key=lambda i: -self.nodes[i].r.term):
                idx = self.propose(data, via=cand)
                if idx is not None:
                    break
            if idx is None:
                self.run(1)
                continue
            sub_deadline = min(deadline, self.now + 20 * TICK)
            while self.now < sub_deadline:
                count, got = self.applied_count(idx)
                if count >= expected and got == data:
                    return idx
                if got is not None and got != data:
                    break  # another entry won that index: resubmit
                self.step_once()
            if not retry:
                break
        raise AssertionError(f"seed {self.seed}: one({data!r}) failed to reach {expected} nodes in time")

    def snapshot_of(self, id: str) -> Snapshot:
        return self.nodes[id].storage.snapshot
