"""The console's time series: differences of cumulative readings (pure), a numbered ring buffer, and the sampler
driven by a fake clock."""

from __future__ import annotations

import pytest

from dynamostore.metrics import LATENCY_BUCKETS
from dynamostore.services.history import History, HistoryService, Reading, sample


def _buckets(**at: int) -> list[int]:
    """Latency bucket counts with `at` observations in the bucket whose upper bound is the key (e.g. ms2=3)."""
    out = [0] * (len(LATENCY_BUCKETS) + 1)
    for name, n in at.items():
        out[LATENCY_BUCKETS.index(float(name[2:]) / 1000)] += n
    return out


def test_a_sample_is_the_rates_and_quantiles_of_what_happened_between_two_readings() -> None:
    before = Reading(t=100.0, mono=10.0, counts={("GET", 200): 50, ("PUT", 204): 20, ("PUT", 503): 1,
                                                 ("status", 200): 7},
                     buckets={"GET": _buckets(ms1=50), "PUT": _buckets(ms5=21)},
                     hints_pending={"n3": 4}, hints_delivered=2, siblings_written=1, ae_exchanges=3)
    after = Reading(t=102.0, mono=12.0, counts={("GET", 200): 250, ("PUT", 204): 40, ("PUT", 503): 5,
                                                ("DELETE", 204): 4, ("status", 200): 99},
                    buckets={"GET": _buckets(ms1=50, ms2=200), "PUT": _buckets(ms5=45), "DELETE": _buckets(ms10=4)},
                    hints_pending={"n3": 10, "n2": 0}, hints_delivered=5, siblings_written=3, siblings_merged=2,
                    ae_exchanges=7, ae_keys_differing=6, ae_keys_repaired=6)
    s = sample(before, after)
    assert s["dt"] == 2.0 and s["t"] == 102.0
    assert s["rps"] == {"read": 100.0, "write": 14.0}  # (200 reads, 20 + 4 + 4 writes) over 2 s; /status not counted
    assert s["unavailable_per_s"] == 2.0
    # the reads of the interval all fell in (1 ms, 2 ms]: the earlier ones in (0.5, 1] no longer count
    assert 1.0 < s["p50_ms"]["read"] <= 2.0 and 1.0 < s["p99_ms"]["read"] <= 2.0
    assert 5.0 < s["p99_ms"]["write"] <= 10.0  # 24 PUTs in (2, 5], 4 DELETEs in (5, 10]: the p99 is a delete
    assert s["hints_pending"] == {"n2": 0, "n3": 10}  # a level, not a difference
    assert s["hints_delivered"] == 3
    assert s["siblings"] == {"written": 2, "merged": 2}
    assert s["ae"] == {"exchanges": 4, "keys_differing": 6, "keys_repaired": 6}


def test_a_quiet_interval_has_no_latency() -> None:
    r = Reading(t=1.0, mono=1.0, counts={("GET", 200): 5}, buckets={"GET": _buckets(ms1=5)})
    s = sample(r, Reading(t=2.0, mono=2.0, counts=r.counts, buckets=r.buckets))
    assert s["rps"]["read"] == 0 and s["p50_ms"]["read"] is None and s["p99_ms"]["write"] is None


def test_readings_out_of_order_are_refused() -> None:
    with pytest.raises(ValueError):
        sample(Reading(t=2.0, mono=2.0), Reading(t=1.0, mono=2.0))


def test_the_history_keeps_the_newest_samples_and_answers_what_came_after_a_number() -> None:
    h = History(capacity=3)
    assert h.since(0) == []
    for i in range(5):
        h.add({"i": i})
    assert [s["seq"] for s in h.since(0)] == [3, 4, 5]  # older than kept: everything kept
    assert [s["i"] for s in h.since(3)] == [3, 4]
    assert h.since(5) == [] and h.since(99) == []


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.t += seconds


def test_the_sampler_keeps_one_sample_per_step_after_the_first_reading() -> None:
    clock = FakeClock()
    writes = [0]

    def read() -> Reading:
        return Reading(t=1000 + clock.t, mono=clock.t, counts={("PUT", 204): writes[0]})

    svc = HistoryService(read, clock, interval=1.0, capacity=10)
    svc.step()  # the base
    assert svc.document(0)["samples"] == []
    for k in range(1, 4):
        clock.t += 1.0
        writes[0] += 10 * k
        svc.step()
    doc = svc.document(0)
    assert doc["seq"] == 3 and [s["rps"]["write"] for s in doc["samples"]] == [10.0, 20.0, 30.0]
    assert [s["seq"] for s in svc.document(2)["samples"]] == [3]
    assert svc.status() == {"history": {"interval_s": 1.0, "samples": 3, "seq": 3}}
