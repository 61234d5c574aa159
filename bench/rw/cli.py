"""argparse wiring of the R/W benchmark (`python -m bench.rw`): `add_parser(sub)` registers it, `run(args)` runs it."""

from __future__ import annotations

import argparse
import signal
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.rw.workload import WORKLOADS

if TYPE_CHECKING:  # the suite (rich, aiohttp, matplotlib) is imported only when the bench runs
    from bench.rw.suite import BenchConfig


def add_parser(sub: Any) -> argparse.ArgumentParser:
    b: argparse.ArgumentParser = sub.add_parser(
        "bench", help="R/W trade-off benchmark: throughput, tail latency, t-visibility, availability under kills")
    b.add_argument("--quick", action="store_true", help="a subset of workloads and short runs (under 2 minutes)")
    b.add_argument("--output", type=Path, default=Path("bench-results"), help="folder for results.json and plots")
    b.add_argument("--seed", type=int, default=1, help="same seed, same key and operation sequence")
    b.add_argument("--url", action="append", default=[],
                   help="target a running cluster (repeat for each node); no kills then")
    b.add_argument("--nodes", type=int, default=3, help="size of the cluster the bench starts (N stays 3)")
    b.add_argument("--workloads", help="comma-separated YCSB workloads among A,B,C,F")
    b.add_argument("--keys", type=int, help="key count")
    b.add_argument("--value-size", type=int, help="value size in bytes")
    b.add_argument("--uniform", action="store_true", help="uniform key choice instead of zipfian (0.99)")
    b.add_argument("--duration", type=float, help="seconds per (workload, R, W) cell")
    b.add_argument("--concurrency", type=int, help="closed-loop client workers")
    b.add_argument("--delay-ms", type=float, help="injected replication delay to one node for t-visibility")
    b.add_argument("--samples", type=int, help="t-visibility probes per (R, W, t)")
    b.add_argument("--no-availability", action="store_true", help="skip the kill -9 phase")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    return b


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    from bench.rw.suite import BenchConfig

    cfg = BenchConfig.quick_mode(args.output) if args.quick else BenchConfig(output=args.output)
    over: dict[str, Any] = {"seed": args.seed, "urls": tuple(args.url), "nodes": args.nodes,
                            "availability": not args.no_availability, "progress": not args.no_progress}
    if args.workloads:
        names = tuple(w.strip().upper() for w in args.workloads.split(",") if w.strip())
        unknown = [w for w in names if w not in WORKLOADS]
        if unknown:
            raise SystemExit(f"bench.rw: unknown workload(s) {', '.join(unknown)} (choose among A,B,C,F)")
        over["workloads"] = names
    for attr, name in (("keys", "keys"), ("value_size", "value_size"), ("duration", "duration_s"),
                       ("concurrency", "concurrency"), ("delay_ms", "delay_ms"), ("samples", "vis_samples")):
        if getattr(args, attr) is not None:
            over[name] = getattr(args, attr)
    if args.uniform:
        over["distribution"] = "uniform"
    return replace(cfg, **over)


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM takes the Ctrl-C path: every node the bench started is stopped


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    from rich.console import Console

    from bench.rw.suite import run_suite

    console = Console()
    if not console.is_terminal:  # piped to a file: don't squeeze the tables into 80 columns
        console = Console(width=110)
    est = cfg.estimate_s()
    mode = "quick" if cfg.quick else "full"
    console.print(f"bench.rw ({mode} mode, seed {cfg.seed}): this will take about "
                  f"{est / 60:.1f} minutes ({est:.0f} s); results in {cfg.output}")
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        run_suite(cfg, console)
    except KeyboardInterrupt:
        console.print("bench.rw: interrupted; every node it started was stopped")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0
