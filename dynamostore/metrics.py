"""Prometheus metrics of one node, in a registry of its own (no process-global state).

The per-request series (requests, their latency, replica calls) are plain ints and floats updated on the event
loop and handed to prometheus_client at scrape time: a prometheus_client child costs a lock and, for a
histogram, a bucket search in interpreted code on every request. So are counters kept by their owners (`counter`:
the coordinator's read repairs), read at scrape time like the gauges. Everything else uses its metric types.
"""

from __future__ import annotations

import itertools
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

disable_created_metrics()  # the *_created series only add noise to every scrape

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class _Callback(Collector):
    """Gauges (and counters kept as plain numbers) read at scrape time from the node's live state."""

    def __init__(self, read: Callable[[], Iterable[Metric]]) -> None:
        self.read = read

    def collect(self) -> Iterable[Metric]:
        return self.read()


class RequestStats(Collector):
    """Client requests by (op, status) and their latency by op; `observe` is called on the event loop only."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, int], int] = {}
        self.buckets: dict[str, list[int]] = {}  # op -> count per bucket (not cumulative), the last one +Inf
        self.sums: dict[str, float] = {}

    def observe(self, op: str, status: int, seconds: float | None) -> None:
        """One request answered; `seconds` None: not a latency worth a histogram (not a key operation)."""
        key = (op, status)
        self.counts[key] = self.counts.get(key, 0) + 1
        if seconds is None:
            return
        counts = self.buckets.get(op)
        if counts is None:
            counts = self.buckets[op] = [0] * (len(LATENCY_BUCKETS) + 1)
            self.sums[op] = 0.0
        counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1  # the first bound >= seconds: `le` semantics
        self.sums[op] += seconds

    def snapshot(self) -> tuple[dict[tuple[str, int], int], dict[str, list[int]]]:
        """Copies of the counters (by (op, status)) and of the latency buckets (by op), read at sample time:
        the console's time series are differences between two snapshots, so requests pay nothing for them."""
        return dict(self.counts), {op: list(counts) for op, counts in self.buckets.items()}

    def collect(self) -> Iterable[Metric]:
        requests = CounterMetricFamily("dynamostore_requests", "Client requests by operation and HTTP status",
                                       labels=["op", "status"])
        for (op, status), n in sorted(self.counts.items()):
            requests.add_metric([op, str(status)], n)
        latency = HistogramMetricFamily("dynamostore_request_seconds", "Client request latency by operation",
                                        labels=["op"])
        for op, counts in sorted(self.buckets.items()):
            cumulative = list(itertools.accumulate(counts))
            bounds = [floatToGoString(b) for b in LATENCY_BUCKETS] + ["+Inf"]
            latency.add_metric([op], list(zip(bounds, cumulative)), sum_value=self.sums[op])
        return [requests, latency]


class CallStats(Collector):
    """Internal RPC calls by (method, outcome); `count` is called on the event loop only."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}

    def count(self, method: str, outcome: str) -> None:
        key = (method, outcome)
        self.counts[key] = self.counts.get(key, 0) + 1

    def collect(self) -> Iterable[Metric]:
        calls = CounterMetricFamily("dynamostore_replica_calls", "Internal RPC calls by method and outcome",
                                    labels=["method", "outcome"])
        for (method, outcome), n in sorted(self.counts.items()):
            calls.add_metric([method, outcome], n)
        return [calls]


class NodeMetrics:
    def __init__(self, node_id: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = RequestStats()
        self.calls = CallStats()
        self.registry.register(self.requests)
        self.registry.register(self.calls)
        self.hints_delivered = Counter(
            "dynamostore_hints_delivered_total", "Hinted writes handed off to their primary",
            ["target"], registry=self.registry,
        )
        self.ae_keys_repaired = Counter(
            "dynamostore_antientropy_keys_repaired_total", "Keys repaired by anti-entropy exchanges",
            registry=self.registry,
        )
        self.ae_exchanges = Counter(
            "dynamostore_antientropy_exchanges_total", "Anti-entropy exchanges by outcome",
            ["outcome"], registry=self.registry,
        )
        self.ae_bytes = Counter(
            "dynamostore_antientropy_bytes_total", "Bytes sent and received by anti-entropy tree walks",
            ["direction"], registry=self.registry,
        )

    def add_scraped(self, read: Callable[[], Iterable[Metric]]) -> None:
        self.registry.register(_Callback(read))

    def render(self) -> bytes:
        return generate_latest(self.registry)


def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    """A counter its owner keeps as a plain number (the coordinator's read repairs: counted on the request path,
    where a prometheus_client child would cost a lock), read at scrape time; `name` without `_total`."""
    return CounterMetricFamily(name, doc, value=value)


def gauge(name: str, doc: str, value: float, labels: dict[str, str] | None = None) -> GaugeMetricFamily:
    if not labels:
        return GaugeMetricFamily(name, doc, value=value)
    g = GaugeMetricFamily(name, doc, labels=list(labels))
    g.add_metric(list(labels.values()), value)
    return g


def quantile(counts: Sequence[int], q: float, bounds: Sequence[float] = LATENCY_BUCKETS) -> float | None:
    """The q-quantile (0 < q <= 1) of observations counted per bucket (not cumulative; the last bucket is
    +Inf), interpolated linearly inside its bucket as Prometheus' histogram_quantile does; None when there
    is none. A quantile in the +Inf bucket is reported as the largest finite bound."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    below = 0
    for i, n in enumerate(counts):
        if n and below + n >= rank:
            if i >= len(bounds):
                return bounds[-1]
            low = bounds[i - 1] if i > 0 else 0.0
            return low + (bounds[i] - low) * (rank - below) / n
        below += n
    return bounds[-1]
