"""Hinted handoff planning: which targets are due, concurrency, backoff, rate limit, hint window."""

from __future__ import annotations

from handoff.hints import HandoffPlanner, within_hint_window


def test_due_targets_are_up_pending_and_most_hints_first_within_concurrency() -> None:
    p = HandoffPlanner(concurrency=2, rate_per_sec=1000)
    p.set_pending("a", 5)
    p.set_pending("b", 50)
    p.set_pending("c", 10)
    p.set_pending("d", 0)
    assert p.due(up={"a", "b", "c", "d"}, now=0.0) == ["b", "c"]
    assert p.due(up={"a", "c"}, now=0.0) == ["c", "a"]
    p.start("b")
    assert p.due(up={"a", "b", "c"}, now=0.0) == ["c"]  # one slot left, b already in flight
    p.start("c")
    assert p.due(up={"a", "b", "c"}, now=0.0) == []


def test_failure_backs_off_exponentially_and_wake_clears_it() -> None:
    p = HandoffPlanner(concurrency=1, rate_per_sec=1000, backoff_base=1.0, backoff_max=4.0)
    p.set_pending("a", 3)
    p.failed("a", "RpcUnavailable", now=10.0)
    assert p.due({"a"}, now=10.5) == [] and p.due({"a"}, now=11.0) == ["a"]
    p.failed("a", "RpcUnavailable", now=11.0)
    assert p.due({"a"}, now=12.9) == [] and p.due({"a"}, now=13.0) == ["a"]
    for _ in range(5):
        p.failed("a", "x", now=20.0)
    assert p.due({"a"}, now=23.9) == [] and p.due({"a"}, now=24.0) == ["a"]  # capped at 4 s
    p.failed("a", "x", now=30.0)
    p.wake("a")
    assert p.due({"a"}, now=30.0) == ["a"]


def test_delivery_progress_and_new_hints() -> None:
    p = HandoffPlanner(concurrency=1, rate_per_sec=1000)
    p.hinted("a")
    p.hinted("a", 2)
    assert p.progress("a").pending == 3
    p.delivered("a", 2, now=5.0)
    assert (p.progress("a").pending, p.progress("a").delivered, p.progress("a").last_delivery) == (1, 2, 5.0)


def test_rate_limit_spreads_batches_over_time() -> None:
    p = HandoffPlanner(concurrency=1, rate_per_sec=100, batch_size=50)
    assert p.allowance(0.0) == 50  # burst of one batch
    assert p.allowance(0.0) == 50
    assert p.allowance(0.0) == 0
    assert p.allowance(0.1) == 10
    granted = sum(p.allowance(0.1 + i * 0.01) for i in range(1, 101))
    assert 95 <= granted <= 105  # ~100 per second


def test_hint_window() -> None:
    assert within_hint_window(None, 100.0, 10.0)
    assert within_hint_window(95.0, 100.0, 10.0)
    assert not within_hint_window(90.0, 100.0, 10.0)
