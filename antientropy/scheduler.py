"""Pacing core of the anti-entropy worker: which (partition, peer) exchange to run next, and when.

Pure: time comes in as a float argument (seconds, any monotonic origin), randomness from an injected
``random.Random``. The asyncio worker loops on::

    task = sched.poll(now)            # start it (or None)
    ... sched.finished(task, now, outcome, keys_differing)
    wake = sched.next_wakeup(now)     # sleep until then, or until an exchange finishes if None
    granted = sched.grant_repairs(n, now); sched.repair_wait(n, now)   # pace the repair of found keys

Policy:
- Every (partition, peer) pair is due once per interval (per partition, default ``interval``). Both replicas
  initiate, but an exchange the peer started counts for the pair too (``answered``): in a healthy cluster a
  pair is compared about once per interval, not twice, which halves what anti-entropy costs a node under
  steady writes (every comparison rehashes the dirty paths of both trees). The first exchange of a new
  pair is spread uniformly over one interval so a restart does not fire every exchange at once.
- At most ``max_concurrent`` exchanges at a time, one per partition (two walks of one tree add load and
  find the same keys) and at most ``max_per_peer`` per peer.
- A peer whose exchange failed or that was unavailable is backed off exponentially with jitter (per peer,
  since unavailability is a property of the node, not of one partition); a success resets it.
- A token bucket (``ring.pacing``) of ``repair_rate`` keys/s (burst ``repair_burst``) paces repairs; while it
  is empty no new exchange starts, since exchanges would only find more work than the node may do.
- The most overdue pair goes first; ties by (partition, peer), so the schedule is deterministic.

The pairs are kept in due order (a ``SortedList`` of ``(due, partition, peer)``): a node replicating a few
hundred partitions has a thousand pairs or so, nearly all of them not due for minutes, and the driver asks
``poll`` and ``next_wakeup`` every time an exchange ends. In due order both stop at the first pair that cannot
matter (``poll`` at the first not yet due, ``next_wakeup`` at the first due no earlier than the best start found)
instead of looking at every pair.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sortedcontainers import SortedList

from ring.pacing import TokenBucket


# Float slack: a driver that wakes exactly at next_wakeup() must find the token it waited for.
_EPS = 1e-9


class ExchangeOutcome(enum.Enum):
    OK = "ok"
    PEER_UNAVAILABLE = "peer_unavailable"
    FAILED = "failed"


@dataclass(frozen=True)
class SchedulerConfig:
    interval: float = 600.0  # seconds between exchanges of one (partition, peer) pair
    max_concurrent: int = 2
    max_per_peer: int = 1
    spread_first: bool = True  # first exchange of a new pair at a random time within one interval
    jitter: float = 0.1  # each interval is scaled by uniform(1 - jitter, 1 + jitter)
    retry_delay: float = 5.0  # a failed pair is retried no sooner than this (plus the peer's backoff)
    backoff_initial: float = 5.0
    backoff_factor: float = 2.0
    backoff_max: float = 300.0
    repair_rate: float = 500.0  # keys repaired per second
    repair_burst: float = 5000.0  # token bucket capacity

    def __post_init__(self) -> None:
        if self.interval <= 0 or self.max_concurrent < 1 or self.max_per_peer < 1:
            raise ValueError("interval must be > 0 and concurrency limits >= 1")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be in [0, 1)")
        if self.repair_rate <= 0 or self.repair_burst < 1:
            raise ValueError("repair_rate must be > 0 and repair_burst >= 1")
        if self.backoff_initial <= 0 or self.backoff_factor < 1 or self.backoff_max < self.backoff_initial:
            raise ValueError("backoff settings must satisfy 0 < initial <= max and factor >= 1")


@dataclass(frozen=True)
class ExchangeTask:
    partition: int
    peer: str
    started_at: float


@dataclass(frozen=True)
class PairStatus:
    partition: int
    peer: str
    next_due: float
    last_finished: float | None
    last_outcome: ExchangeOutcome | None
    last_keys_differing: int
    running: bool


class _Pair:
    __slots__ = ("due", "last_finished", "last_outcome", "last_keys")

    def __init__(self, due: float) -> None:
        self.due = due
        self.last_finished: float | None = None
        self.last_outcome: ExchangeOutcome | None = None
        self.last_keys = 0


class ExchangeScheduler:
    def __init__(self, config: SchedulerConfig, rng: random.Random, now: float) -> None:
        self.config = config
        self._rng = rng
        self._pairs: dict[tuple[int, str], _Pair] = {}
        self._due = SortedList()  # (pair.due, partition, peer) of every pair in _pairs
        self._intervals: dict[int, float] = {}
        self._running: dict[tuple[int, str], ExchangeTask] = {}
        self._peer_failures: dict[str, int] = {}
        self._peer_backoff_until: dict[str, float] = {}
        self._bucket = TokenBucket(config.repair_rate, config.repair_burst, now)

    # -- inputs -------------------------------------------------------------------------------------

    def set_partitions(
        self,
        peers: Mapping[int, Sequence[str]],
        now: float,
        intervals: Mapping[int, float] | None = None,
    ) -> None:
        """The partitions this node replicates and, for each, the other replicas (called on ring change).

        Known pairs keep their schedule; new pairs are scheduled; pairs no longer listed are dropped
        (a running exchange of a dropped pair may still finish and is then ignored).
        """
        self._intervals = {p: v for p, v in (intervals or {}).items() if v > 0}
        wanted = {(p, peer) for p, ps in peers.items() for peer in ps}
        for key in list(self._pairs):
            if key not in wanted:
                pair = self._pairs.pop(key)
                self._due.remove((pair.due, *key))
        for key in sorted(wanted):
            if key not in self._pairs:
                delay = self._rng.uniform(0, self._interval(key[0])) if self.config.spread_first else 0.0
                self._pairs[key] = _Pair(now + delay)
                self._due.add((now + delay, *key))

    def finished(
        self, task: ExchangeTask, now: float, outcome: ExchangeOutcome, keys_differing: int = 0
    ) -> None:
        key = (task.partition, task.peer)
        if self._running.get(key) is task:
            del self._running[key]
        if outcome is ExchangeOutcome.OK:
            self._peer_failures.pop(task.peer, None)
            self._peer_backoff_until.pop(task.peer, None)
        else:
            failures = self._peer_failures.get(task.peer, 0) + 1
            self._peer_failures[task.peer] = failures
            c = self.config
            backoff = min(c.backoff_max, c.backoff_initial * c.backoff_factor ** (failures - 1))
            backoff *= self._rng.uniform(0.5, 1.0)  # jitter: peers coming back are not hit in lockstep
            self._peer_backoff_until[task.peer] = now + backoff
        pair = self._pairs.get(key)
        if pair is None:
            return
        pair.last_finished = now
        pair.last_outcome = outcome
        pair.last_keys = keys_differing
        if outcome is ExchangeOutcome.OK:
            j = self.config.jitter
            self._reschedule(key, pair, now + self._interval(task.partition) * self._rng.uniform(1 - j, 1 + j))
        else:
            self._reschedule(key, pair, now + self.config.retry_delay)

    def answered(self, partition: int, peer: str, now: float) -> None:
        """`peer` started an exchange of `partition` with us: our own comparison of the pair can wait one
        interval from now. (If the peer's exchange then fails, its own retry and backoff take over.)"""
        key = (partition, peer)
        pair = self._pairs.get(key)
        if pair is None or key in self._running:
            return
        j = self.config.jitter
        self._reschedule(key, pair, max(pair.due, now + self._interval(partition) * self._rng.uniform(1 - j, 1 + j)))

    # -- decisions ----------------------------------------------------------------------------------

    def poll(self, now: float) -> ExchangeTask | None:
        """The exchange to start now, marked running; None if nothing is due or allowed."""
        if len(self._running) >= self.config.max_concurrent or self._bucket.available(now) < 1 - _EPS:
            return None
        busy, loaded = self._blocked()
        backoff = self._peer_backoff_until
        best: tuple[float, int, str] | None = None
        for due, p, peer in self._due:
            if due > now:
                break  # neither this pair nor any after it can start yet
            if p in busy or peer in loaded:
                continue
            start = max(due, backoff.get(peer, due))
            if start <= now and (best is None or (start, p, peer) < best):
                best = (start, p, peer)
        if best is None:
            return None
        task = ExchangeTask(best[1], best[2], now)
        self._running[(task.partition, task.peer)] = task
        return task

    def next_wakeup(self, now: float) -> float | None:
        """Earliest time ``poll`` may return a task. None: nothing can start until an exchange finishes
        or the partitions change."""
        if len(self._running) >= self.config.max_concurrent:
            return None
        busy, loaded = self._blocked()
        backoff = self._peer_backoff_until
        first: float | None = None
        for due, p, peer in self._due:
            if first is not None and due >= first:
                break  # a pair starts no earlier than it is due
            if p in busy or peer in loaded:
                continue
            start = max(due, backoff.get(peer, due))
            if first is None or start < first:
                first = start
        if first is None:
            return None
        return max(first, now + self._bucket.wait(1, now))

    def grant_repairs(self, n: int, now: float) -> int:
        """How many of ``n`` keys may be repaired now (consumes that many tokens)."""
        return self._bucket.take(n, now)

    def repair_wait(self, n: int, now: float) -> float:
        """Seconds until ``n`` repairs (at most one burst) would be granted."""
        return self._bucket.wait(n, now)

    # -- observation --------------------------------------------------------------------------------

    @property
    def running(self) -> tuple[ExchangeTask, ...]:
        return tuple(self._running.values())

    def peer_backoff_until(self, peer: str) -> float | None:
        return self._peer_backoff_until.get(peer)

    def status(self) -> list[PairStatus]:
        return [
            PairStatus(p, peer, s.due, s.last_finished, s.last_outcome, s.last_keys, (p, peer) in self._running)
            for (p, peer), s in sorted(self._pairs.items())
        ]

    # -- internals ----------------------------------------------------------------------------------

    def _interval(self, partition: int) -> float:
        return self._intervals.get(partition, self.config.interval)

    def _reschedule(self, key: tuple[int, str], pair: _Pair, due: float) -> None:
        self._due.remove((pair.due, *key))
        pair.due = due
        self._due.add((due, *key))

    def _blocked(self) -> tuple[set[int], set[str]]:
        """Partitions with an exchange running (one at a time per partition) and peers at their limit."""
        busy = {t.partition for t in self._running.values()}
        peer_load: dict[str, int] = {}
        for t in self._running.values():
            peer_load[t.peer] = peer_load.get(t.peer, 0) + 1
        return busy, {peer for peer, n in peer_load.items() if n >= self.config.max_per_peer}
