"""Scheduler: due times, concurrency limits, peer backoff, repair token bucket. Time is an argument."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from antientropy.scheduler import (
    ExchangeOutcome,
    ExchangeScheduler,
    ExchangeTask,
    SchedulerConfig,
)

OK, DOWN = ExchangeOutcome.OK, ExchangeOutcome.PEER_UNAVAILABLE


def make(now: float = 0.0, **cfg: object) -> ExchangeScheduler:
    defaults: dict[str, object] = {"interval": 100.0, "spread_first": False, "jitter": 0.0}
    defaults.update(cfg)
    return ExchangeScheduler(SchedulerConfig(**defaults), random.Random(7), now)  # type: ignore[arg-type]


def drain(s: ExchangeScheduler, now: float) -> list[ExchangeTask]:
    out = []
    while (t := s.poll(now)) is not None:
        out.append(t)
    return out


def test_most_overdue_first_and_one_per_partition() -> None:
    s = make(max_concurrent=10, max_per_peer=10)
    s.set_partitions({1: ["b", "c"], 2: ["b"]}, now=0.0)
    tasks = drain(s, 0.0)
    # Partition 1 has two pairs but only one may run at a time.
    assert [(t.partition, t.peer) for t in tasks] == [(1, "b"), (2, "b")]
    s.finished(tasks[0], 5.0, OK)
    assert (t := s.poll(5.0)) is not None and (t.partition, t.peer) == (1, "c")


def test_interval_respected_after_success() -> None:
    s = make(max_concurrent=1)
    s.set_partitions({1: ["b"]}, now=0.0)
    task = s.poll(0.0)
    assert task is not None
    assert s.next_wakeup(0.0) is None  # at the concurrency limit: wait for a finish
    s.finished(task, 10.0, OK, keys_differing=3)
    assert s.poll(50.0) is None
    assert s.next_wakeup(50.0) == pytest.approx(110.0)
    assert s.poll(110.0) is not None
    status = s.status()[0]
    assert (status.last_outcome, status.last_keys_differing, status.running) == (OK, 3, True)


def test_per_partition_interval_override() -> None:
    s = make(max_concurrent=5)
    s.set_partitions({1: ["b"], 2: ["c"]}, now=0.0, intervals={2: 10.0})
    for t in drain(s, 0.0):
        s.finished(t, 0.0, OK)
    assert [(t.partition, t.peer) for t in drain(s, 10.0)] == [(2, "c")]


def test_max_concurrent_and_per_peer_limits() -> None:
    s = make(max_concurrent=2, max_per_peer=1)
    s.set_partitions({1: ["b"], 2: ["b"], 3: ["c"], 4: ["d"]}, now=0.0)
    tasks = drain(s, 0.0)
    assert [(t.partition, t.peer) for t in tasks] == [(1, "b"), (3, "c")]
    assert {t.peer for t in s.running} == {"b", "c"}


def test_unavailable_peer_backs_off_exponentially_and_resets_on_success() -> None:
    s = make(max_concurrent=1, backoff_initial=10.0, backoff_factor=2.0, backoff_max=35.0, retry_delay=1.0)
    s.set_partitions({1: ["b"]}, now=0.0)
    now = 0.0
    waits = []
    for _ in range(4):
        task = s.poll(now)
        assert task is not None
        s.finished(task, now, DOWN)
        until = s.peer_backoff_until("b")
        assert until is not None
        waits.append(until - now)
        assert s.poll(until - 0.001) is None
        assert s.next_wakeup(now) == pytest.approx(until)
        now = until
    # Jittered in [0.5, 1] x 10, 20, 35 (capped), 35.
    for w, cap in zip(waits, [10.0, 20.0, 35.0, 35.0]):
        assert cap / 2 <= w <= cap
    task = s.poll(now)
    assert task is not None
    s.finished(task, now, OK)
    assert s.peer_backoff_until("b") is None


def test_backoff_is_per_peer_other_peers_proceed() -> None:
    s = make(max_concurrent=1)
    s.set_partitions({1: ["b", "c"]}, now=0.0)
    task = s.poll(0.0)
    assert task is not None and task.peer == "b"
    s.finished(task, 0.0, DOWN)
    nxt = s.poll(0.0)
    assert nxt is not None and nxt.peer == "c"


def test_first_exchanges_spread_over_one_interval() -> None:
    s = ExchangeScheduler(SchedulerConfig(interval=100.0), random.Random(1), 0.0)
    s.set_partitions({p: ["b"] for p in range(50)}, now=0.0)
    dues = [st.next_due for st in s.status()]
    assert all(0.0 <= d <= 100.0 for d in dues)
    assert max(dues) - min(dues) > 50.0  # not all at once


def test_partition_change_keeps_known_pairs_and_drops_gone_ones() -> None:
    s = make(max_concurrent=5)
    s.set_partitions({1: ["b"], 2: ["c"]}, now=0.0)
    t1, t2 = drain(s, 0.0)
    s.finished(t1, 1.0, OK)
    s.set_partitions({1: ["b"], 3: ["d"]}, now=2.0)
    assert [(st.partition, st.peer) for st in s.status()] == [(1, "b"), (3, "d")]
    assert s.status()[0].next_due == pytest.approx(101.0)
    s.finished(t2, 3.0, OK)  # a dropped pair's exchange finishing is harmless
    assert [(t.partition, t.peer) for t in drain(s, 3.0)] == [(3, "d")]


def test_repair_token_bucket_paces_repairs_and_exchanges() -> None:
    s = make(max_concurrent=5, repair_rate=10.0, repair_burst=100.0)
    s.set_partitions({1: ["b"], 2: ["c"]}, now=0.0)
    assert s.grant_repairs(250, 0.0) == 100
    assert s.grant_repairs(5, 0.0) == 0
    assert s.repair_wait(50, 0.0) == pytest.approx(5.0)
    assert s.poll(0.0) is None  # no budget: do not start exchanges that would find more work
    assert s.next_wakeup(0.0) == pytest.approx(0.1)
    assert s.grant_repairs(50, 5.0) == 50
    assert s.poll(5.1) is not None


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        SchedulerConfig(interval=0)
    with pytest.raises(ValueError):
        SchedulerConfig(jitter=1.0)
    with pytest.raises(ValueError):
        SchedulerConfig(backoff_initial=10, backoff_max=5)


def test_an_exchange_the_peer_started_counts_for_the_pair() -> None:
    s = make(max_concurrent=1)
    s.set_partitions({1: ["b"], 2: ["b"]}, now=0.0)
    s.answered(1, "b", 30.0)  # b compared partition 1 with us: ours can wait one interval from then
    assert [(t.partition, t.peer) for t in drain(s, 30.0)] == [(2, "b")]
    s.answered(2, "b", 40.0)  # a pair already running is left alone
    assert s.status()[1].running
    assert s.next_wakeup(40.0) is None
    s.answered(3, "b", 40.0)  # a pair we do not have: nothing to do
    assert [p.next_due for p in s.status()] == [pytest.approx(130.0), pytest.approx(0.0)]


def _expected(s: ExchangeScheduler, now: float) -> tuple[tuple[float, int, str] | None, float | None]:
    """What poll and next_wakeup must answer, worked out from the public view of every pair (a full pass over
    them, which the due-ordered queue of the scheduler avoids). The repair bucket is never drawn from here."""
    pairs = s.status()
    running = s.running  # a dropped pair's exchange still running counts until it finishes
    if len(running) >= s.config.max_concurrent:
        return None, None
    busy = {t.partition for t in running}
    load: dict[str, int] = {}
    for t in running:
        load[t.peer] = load.get(t.peer, 0) + 1
    starts = []
    for p in pairs:
        if p.partition in busy or load.get(p.peer, 0) >= s.config.max_per_peer:
            continue
        backoff = s.peer_backoff_until(p.peer)
        starts.append((max(p.next_due, p.next_due if backoff is None else backoff), p.partition, p.peer))
    due = [st for st in starts if st[0] <= now]
    return (min(due) if due else None), (max(min(starts)[0], now) if starts else None)  # a full bucket: no wait


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["ring", "poll", "ok", "fail", "answered", "wait"]),
                          st.integers(0, 7), st.sampled_from(["b", "c", "d"]), st.floats(0, 40)),
                max_size=60),
       st.integers(1, 4), st.integers(1, 2))
def test_the_due_queue_answers_like_a_full_pass_over_every_pair(
    steps: list[tuple[str, int, str, float]], max_concurrent: int, max_per_peer: int
) -> None:
    s = ExchangeScheduler(SchedulerConfig(interval=30.0, max_concurrent=max_concurrent, max_per_peer=max_per_peer,
                                          jitter=0.2, retry_delay=3.0, backoff_initial=2.0, repair_rate=1e9,
                                          repair_burst=1e9),
                          random.Random(1), 0.0)
    now = 0.0
    running: list[ExchangeTask] = []
    for op, partition, peer, x in steps:
        if op == "ring":
            s.set_partitions({p: [q for q in "bcd" if (p + ord(q)) % (partition + 2)] for p in range(partition + 1)},
                             now)
        elif op in ("ok", "fail") and running:
            task = running.pop(partition % len(running))
            s.finished(task, now, OK if op == "ok" else DOWN, 1)
        elif op == "answered":
            s.answered(partition, peer, now)
        elif op == "wait":
            now += x
        want_task, want_wake = _expected(s, now)
        assert s.next_wakeup(now) == want_wake
        if op == "poll":
            task = s.poll(now)
            assert (task and (task.started_at, task.partition, task.peer)) == (
                want_task and (now, want_task[1], want_task[2])), (task, want_task)
            if task is not None:
                running.append(task)
