"""Prometheus metrics of one node, in a registry of its own (no process-global state)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

disable_created_metrics()  # the *_created series only add noise to every scrape

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class _Callback(Collector):
    """Gauges read at scrape time from the node's live state."""

    def __init__(self, read: Callable[[], Iterable[Metric]]) -> None:
        self.read = read

    def collect(self) -> Iterable[Metric]:
        return self.read()


class NodeMetrics:
    def __init__(self, node_id: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "dynamostore_requests_total", "Client requests by operation and HTTP status",
            ["op", "status"], registry=self.registry,
        )
        self.latency = Histogram(
            "dynamostore_request_seconds", "Client request latency by operation",
            ["op"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.replica_calls = Counter(
            "dynamostore_replica_calls_total", "Internal RPC calls by method and outcome",
            ["method", "outcome"], registry=self.registry,
        )
        self.read_repairs = Counter(
            "dynamostore_read_repairs_total", "Replicas repaired after a read", registry=self.registry
        )
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

    def add_gauges(self, read: Callable[[], Iterable[Metric]]) -> None:
        self.registry.register(_Callback(read))

    def render(self) -> bytes:
        return generate_latest(self.registry)


def gauge(name: str, doc: str, value: float, labels: dict[str, str] | None = None) -> GaugeMetricFamily:
    if not labels:
        return GaugeMetricFamily(name, doc, value=value)
    g = GaugeMetricFamily(name, doc, labels=list(labels))
    g.add_metric(list(labels.values()), value)
    return g
