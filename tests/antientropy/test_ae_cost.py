"""Exchange cost follows the number of differing keys, not the size of the data."""

from __future__ import annotations

import random

import pytest
from ae_support import Replica

from antientropy.exchange import ExchangeResult, run_exchange


def digest(i: int, gen: int = 0) -> bytes:
    return b"%08d%08d" % (gen, i)


@pytest.fixture(scope="module")
def bases() -> dict[int, Replica]:
    """One replica per data size, shared by the cases (cloned before being diverged)."""
    out = {}
    for n in (10_000, 100_000):
        r = Replica()
        for i in range(n):
            r.put(b"user:%d" % i, digest(i))
        out[n] = r
    return out


def diverge(base: Replica, n_keys: int, diffs: int, seed: int) -> tuple[Replica, set[bytes]]:
    """A copy of ``base`` with ``diffs`` keys changed: a third updated, a third deleted, a third new."""
    other = base.clone()
    rng = random.Random(seed)
    changed: set[bytes] = set()
    for j, i in enumerate(rng.sample(range(n_keys), diffs)):
        kind = j % 3
        if kind == 0:
            key = b"user:%d" % i
            other.put(key, digest(i, gen=1))
        elif kind == 1:
            key = b"user:%d" % i
            other.put(key, None)
        else:
            key = b"new:%d" % i
            other.put(key, digest(i))
        changed.add(key)
    return other, changed


def measure(bases: dict[int, Replica], n_keys: int, diffs: int) -> ExchangeResult:
    a = bases[n_keys]
    b, changed = diverge(a, n_keys, diffs, seed=diffs)
    result = run_exchange(a.tree, a.segment_items, b.tree, b.segment_items)
    assert result.differing_keys == changed
    return result


def total(r: ExchangeResult) -> int:
    return r.bytes_sent + r.bytes_received


def test_equal_trees_cost_one_round_whatever_the_size(bases: dict[int, Replica]) -> None:
    for n in (10_000, 100_000):
        r = measure(bases, n, 0)
        assert r.rounds == 1
        assert total(r) < 64


def test_cost_is_nearly_independent_of_data_size(bases: dict[int, Replica]) -> None:
    small, large = measure(bases, 10_000, 10), measure(bases, 100_000, 10)
    # 10x the data, same 10 differing keys: under 2x the bytes, at most one extra round (a sub-level).
    assert total(large) < 2 * total(small)
    assert large.rounds <= small.rounds + 1
    assert large.rounds <= 5


def test_cost_grows_with_the_number_of_differences(bases: dict[int, Replica]) -> None:
    few, many = measure(bases, 100_000, 10), measure(bases, 100_000, 1000)
    assert total(many) > 10 * total(few)
    # Per differing key the cost stays bounded (hashes of a few tree nodes and sub-buckets + a few items).
    assert total(many) / 1000 < 1000
    assert total(few) / 10 < 2000
    # Rounds depend on tree depth and sub-levels, not on how many keys differ.
    assert many.rounds <= few.rounds + 1
