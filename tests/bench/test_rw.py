"""The R/W benchmark (`python -m bench.rw`): the seeded workload generator (pure) and one tiny end-to-end run on real processes."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from bench.rw.cli import add_parser, config_from_args
from bench.rw.runner import percentiles
from bench.rw.workload import WORKLOADS, OpKind, Workload, Zipfian


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32), name=st.sampled_from(sorted(WORKLOADS)),
       dist=st.sampled_from(["zipfian", "zipfian-ordered", "uniform"]))
def test_same_seed_gives_the_same_operation_sequence(seed: int, name: str, dist: str) -> None:
    a = Workload(WORKLOADS[name], 500, seed, dist).take(300)
    b = Workload(WORKLOADS[name], 500, seed, dist).take(300)
    assert a == b
    assert all(0 <= op.key < 500 for op in a)


def test_different_seeds_give_different_sequences() -> None:
    a = Workload(WORKLOADS["A"], 1000, 1).take(200)
    b = Workload(WORKLOADS["A"], 1000, 2).take(200)
    assert a != b


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_mix_ratios_follow_the_ycsb_definition(name: str) -> None:
    spec = WORKLOADS[name]
    ops = Workload(spec, 1000, 7).take(20_000)
    counts = Counter(op.kind for op in ops)
    for kind, share in ((OpKind.READ, spec.read), (OpKind.UPDATE, spec.update), (OpKind.RMW, spec.rmw)):
        assert abs(counts[kind] / len(ops) - share) < 0.015, (kind, counts)


def test_zipfian_099_is_skewed_towards_the_first_ranks() -> None:
    n = 1000
    z = Zipfian(n, random.Random(3))
    draws = Counter(z.next() for _ in range(50_000))
    # Theoretical P(rank 0) = 1/zeta(n, 0.99): about 13% for n = 1000.
    assert abs(draws[0] / 50_000 - 1 / z.zetan) < 0.01
    assert draws[0] > draws[1] > draws[10] > draws[100]
    top_1pct = sum(draws[i] for i in range(n // 100))
    assert top_1pct / 50_000 > 0.35  # 1% of the keys take over a third of the accesses
    assert all(0 <= k < n for k in draws)


def test_scrambled_zipfian_keeps_the_skew_but_spreads_the_hot_keys() -> None:
    ops = Workload(WORKLOADS["C"], 1000, 5, "zipfian").take(30_000)
    counts = Counter(op.key for op in ops).most_common()
    assert counts[0][1] / 30_000 > 0.08
    hot = [k for k, _ in counts[:10]]
    assert hot != sorted(hot) or max(hot) > 100  # not simply keys 0..9


def test_uniform_is_flat() -> None:
    ops = Workload(WORKLOADS["C"], 100, 5, "uniform").take(50_000)
    counts = Counter(op.key for op in ops)
    assert len(counts) == 100
    assert max(counts.values()) / min(counts.values()) < 1.5


def test_percentiles_use_nearest_rank() -> None:
    p = percentiles([i / 1000 for i in range(1, 1001)])  # 1..1000 ms
    assert (p["p50"], p["p95"], p["p99"], p["p99.9"]) == (500.0, 950.0, 990.0, 999.0)


def test_cli_quick_flags_map_to_the_config(tmp_path: Path) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(["bench", "--quick", "--output", str(tmp_path), "--seed", "9", "--workloads", "a,c",
                              "--uniform"])
    cfg = config_from_args(args)
    assert cfg.quick and cfg.seed == 9 and cfg.workloads == ("A", "C") and cfg.distribution == "uniform"
    assert cfg.output == tmp_path and cfg.estimate_s() < 120


@pytest.mark.cluster
def test_tiny_bench_end_to_end(tmp_path: Path) -> None:
    """A real 3-node cluster, every phase in miniature: the JSON's shape, and its sanity."""
    pytest.importorskip("matplotlib", reason="the plots need the bench extra: pip install -e '.[bench]'")
    from bench.rw.suite import BenchConfig, run_suite

    cfg = BenchConfig.quick_mode(
        tmp_path / "out", workloads=("A",), keys=100, duration_s=0.4, concurrency=8, vis_samples=4,
        vis_offsets_ms=(0, 50, 250), delay_ms=100.0, avail_phase_s=0.6, progress=False,
    )
    doc = run_suite(cfg, Console(file=open(tmp_path / "console.txt", "w"), width=120))
    on_disk = json.loads((tmp_path / "out" / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(doc))
    assert {p.name for p in (tmp_path / "out").glob("*.png")} == set(doc["plots"]) == {
        "latency_vs_rw.png", "t_visibility.png", "availability.png"}

    assert doc["meta"]["fault_injection"] == {"delay": True, "kill": True}
    rows = doc["throughput"]
    assert [(r["r"], r["w"]) for r in rows] == list(cfg.rw)
    for r in rows:
        assert r["throughput_ops_s"] > 0
        assert set(r["ops"]) <= {"read", "update"} and r["ops"]["read"]["ok"] > 0
        lat = r["ops"]["read"]["latency_ms"]
        assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["p99.9"]

    vis = doc["visibility"]
    assert vis["delay_ms"] == 100.0 and vis["slow_node"] == "n3"
    assert [(r["r"], r["w"]) for r in vis["rows"]] == list(cfg.rw)
    for r in vis["rows"]:
        assert set(r["curve"]) == {"0", "50", "250"}
        assert all(b["samples"] > 0 for b in r["curve"].values())
        if r["r"] + r["w"] > 3:
            assert r["strong"] and r["stale_reads"] == 0, r  # the healthy-phase sanity check
    # R=W=1 with replication to n3 delayed 100 ms: a read from n3 right after the ack cannot have it.
    r11 = next(r for r in vis["rows"] if (r["r"], r["w"]) == (1, 1))
    assert r11["curve"]["0"]["p_fresh_by_reader"]["n3"] == 0.0

    av = doc["availability"]
    assert av["victims"] == ["n3", "n2"] and len(av["rows"]) == 2 * len(cfg.rw)
    for r in av["rows"]:
        assert r["healthy"]["read"]["success"] == 1.0 and r["healthy"]["write"]["success"] == 1.0
        if r["w"] == 3:  # a strict or sloppy W=3 has no third replica with one of three nodes dead
            assert r["one_down"]["write"]["success"] == 0.0
        if r["r"] == 1:
            assert r["two_down"]["read"]["success"] == 1.0


async def test_a_write_carries_only_its_own_workers_last_read() -> None:
    """The lost-update bug of the old shared context cache: a worker's write must never carry a context
    another worker read (or a write's answer), only what this worker read with the value."""
    import asyncio

    from bench.rw.runner import LastReads, Op, OpKind, Quorum, Reply, execute
    from dynamostore.client import Object, Sibling

    class Fake:
        def __init__(self) -> None:
            self.sent: list[tuple[str, str | None]] = []
            self.version = 0

        def coordinator(self, n: int) -> int:
            return 0

        def _state(self, key: str) -> Object:
            self.version += 1
            return Object(key, (Sibling(b"v"),), f"ctx{self.version}")

        async def get(self, node: int, key: str, q: Quorum) -> Reply:
            await asyncio.sleep(0)
            return Reply(True, 200, 0.001, self._state(key), (b"v",))

        async def put(self, node: int, key: str, value: bytes, q: Quorum, context: Object | None = None,
                      returnbody: bool = False) -> Reply:
            self.sent.append(("put", context.context if context is not None else None))
            return Reply(True, 200, 0.001, self._state(key) if returnbody else None)

    fake = Fake()
    q = Quorum(2, 2)
    a: LastReads = {}
    b: LastReads = {}
    await execute(fake, Op(OpKind.READ, 1), 0, q, 1, 10, a)  # type: ignore[arg-type]  # A reads: ctx1
    await execute(fake, Op(OpKind.UPDATE, 1), 1, q, 1, 10, b)  # type: ignore[arg-type]  # B never read: blind
    await execute(fake, Op(OpKind.UPDATE, 1), 2, q, 1, 10, a)  # type: ignore[arg-type]  # A: its read, ctx1
    await execute(fake, Op(OpKind.UPDATE, 1), 3, q, 1, 10, a)  # type: ignore[arg-type]  # A: its write's state
    assert fake.sent == [("put", None), ("put", "ctx1"), ("put", "ctx3")]
