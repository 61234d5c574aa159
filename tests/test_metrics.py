"""The per-request series are kept as plain counts and rendered in the Prometheus text format at scrape time."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from dynamostore.metrics import NodeMetrics


def _samples(m: NodeMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(m.render().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_requests_are_counted_by_op_and_status_and_key_operations_timed() -> None:
    m = NodeMetrics("n1")
    m.requests.observe("GET", 200, 0.0004)
    m.requests.observe("GET", 200, 0.003)
    m.requests.observe("GET", 503, 7.0)
    m.requests.observe("health", 200, None)
    s = _samples(m)
    assert s[("dynamostore_requests_total", (("op", "GET"), ("status", "200")))] == 2
    assert s[("dynamostore_requests_total", (("op", "GET"), ("status", "503")))] == 1
    assert s[("dynamostore_requests_total", (("op", "health"), ("status", "200")))] == 1
    bucket = lambda le: s[("dynamostore_request_seconds_bucket", (("le", le), ("op", "GET")))]  # noqa: E731
    assert bucket("0.0005") == 1          # cumulative: observations <= le
    assert bucket("0.001") == 1 and bucket("0.005") == 2 and bucket("5.0") == 2
    assert bucket("+Inf") == 3
    assert s[("dynamostore_request_seconds_count", (("op", "GET"),))] == 3
    assert abs(s[("dynamostore_request_seconds_sum", (("op", "GET"),))] - 7.0034) < 1e-9
    assert not any(name.startswith("dynamostore_request_seconds") and ("op", "health") in labels
                   for name, labels in s)


def test_an_observation_on_a_bound_falls_in_that_bucket() -> None:
    m = NodeMetrics("n1")
    m.requests.observe("PUT", 204, 0.001)
    s = _samples(m)
    assert s[("dynamostore_request_seconds_bucket", (("le", "0.0005"), ("op", "PUT")))] == 0
    assert s[("dynamostore_request_seconds_bucket", (("le", "0.001"), ("op", "PUT")))] == 1


def test_replica_calls_are_counted_by_method_and_outcome() -> None:
    m = NodeMetrics("n1")
    for outcome in ("ok", "ok", "timeout"):
        m.calls.count("kv.put", outcome)
    s = _samples(m)
    assert s[("dynamostore_replica_calls_total", (("method", "kv.put"), ("outcome", "ok")))] == 2
    assert s[("dynamostore_replica_calls_total", (("method", "kv.put"), ("outcome", "timeout")))] == 1


def test_quantile_interpolates_inside_the_bucket_like_histogram_quantile() -> None:
    from dynamostore.metrics import LATENCY_BUCKETS, quantile

    counts = [0] * (len(LATENCY_BUCKETS) + 1)
    assert quantile(counts, 0.5) is None
    counts[LATENCY_BUCKETS.index(0.002)] = 10  # ten observations in (0.001, 0.002]
    assert quantile(counts, 0.5) == 0.001 + 0.001 * 0.5
    assert abs(quantile(counts, 0.99) - (0.001 + 0.001 * 0.99)) < 1e-12  # type: ignore[operator]
    counts[-1] = 90  # ninety in +Inf: the p99 is past every finite bound, reported as the largest one
    assert quantile(counts, 0.99) == LATENCY_BUCKETS[-1]
    assert quantile(counts, 0.05) == 0.001 + 0.001 * 0.5  # the 5th of 100 is the 5th of the first ten


def test_snapshot_is_a_copy_that_later_requests_do_not_change() -> None:
    m = NodeMetrics("n1")
    m.requests.observe("GET", 200, 0.001)
    counts, buckets = m.requests.snapshot()
    m.requests.observe("GET", 200, 0.001)
    assert counts[("GET", 200)] == 1 and sum(buckets["GET"]) == 1


def test_a_counter_kept_as_a_number_is_read_at_scrape_time() -> None:
    """How the coordinator's read repairs reach /metrics (the node adds them with add_scraped)."""
    from dynamostore.metrics import counter

    repairs = [0]
    m = NodeMetrics("n1")
    m.add_scraped(lambda: [counter("dynamostore_read_repairs", "Replicas repaired after a read", repairs[0])])
    assert _samples(m)[("dynamostore_read_repairs_total", ())] == 0
    repairs[0] = 3
    assert _samples(m)[("dynamostore_read_repairs_total", ())] == 3
