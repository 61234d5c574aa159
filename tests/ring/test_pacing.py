"""The shared token bucket (ring.pacing): the semantics handoff, transfers and anti-entropy repairs rely on.

These are the former tests of the transfer `Throttle` and of the anti-entropy scheduler's `TokenBucket`,
which this one bucket replaced; time is an argument."""

from __future__ import annotations

import pytest

from ring.pacing import TokenBucket


def test_grants_at_rate_from_a_full_bucket_with_time_as_argument() -> None:
    b = TokenBucket(rate=100.0, burst=50.0)
    assert b.take(80, now=0.0) == 50  # starts full: the initial burst
    assert b.take(80, now=0.0) == 0
    assert b.wait(10, now=0.0) == pytest.approx(0.1)
    assert b.take(80, now=0.2) == 20
    assert b.take(80, now=10.0) == 50  # refill is capped at the burst
    total = 0
    now = 10.0
    for _ in range(100):  # 1 s of 10 ms steps grants the rate: a whole token per step despite float error
        now += 0.01
        total += b.take(1000, now)
    assert total == 100


def test_refills_up_to_capacity_and_waits_for_at_most_one_burst() -> None:
    b = TokenBucket(rate=2.0, burst=10.0, now=0.0)
    assert b.take(10, 0.0) == 10
    assert b.take(1, 0.4) == 0
    assert b.take(1, 0.5) == 1
    assert b.available(1000.0) == 10.0
    assert b.wait(50, 1000.0) == 0.0  # capped at capacity: a large batch waits for one full bucket
    b.take(10, 1000.0)
    assert b.wait(50, 1000.0) == pytest.approx(5.0)


def test_a_driver_that_sleeps_the_wait_is_granted_what_it_waited_for() -> None:
    b = TokenBucket(rate=3.0, burst=1.0, now=0.0)
    now = 0.0
    for _ in range(1000):
        if b.take(1, now) == 0:
            now += b.wait(1, now)
            assert b.take(1, now) == 1


def test_time_running_backwards_adds_nothing() -> None:
    b = TokenBucket(rate=10.0, burst=10.0, now=5.0)
    assert b.take(10, 5.0) == 10
    assert b.take(1, 1.0) == 0 and b.available(5.0) == 0.0


def test_a_rate_of_zero_is_unlimited() -> None:
    b = TokenBucket(rate=0, burst=0)
    assert b.take(123, 0.0) == 123 and b.wait(5, 0.0) == 0.0 and b.unlimited
