"""The whole R/W trade-off study: cluster set-up, latency sweep, t-visibility, availability, report.

`run_suite(config)` is what `python -m bench.rw` runs (and what the end-to-end test calls with a tiny
configuration). It returns the JSON document it also writes to OUTPUT/results.json.
"""

from __future__ import annotations

import asyncio
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from bench.rw import availability, report, visibility
from bench.rw.cluster import LocalCluster, Target
from bench.rw.runner import Client, Quorum, preload, run_workload
from bench.rw.workload import WORKLOADS, Workload

RW_SWEEP: tuple[tuple[int, int], ...] = ((1, 1), (1, 2), (2, 1), (2, 2), (1, 3), (3, 1), (3, 3))


@dataclass(frozen=True)
class BenchConfig:
    output: Path
    seed: int = 1
    quick: bool = False
    urls: tuple[str, ...] = ()
    nodes: int = 3
    workloads: tuple[str, ...] = ("A", "B", "C", "F")
    rw: tuple[tuple[int, int], ...] = RW_SWEEP
    keys: int = 10_000
    value_size: int = 100
    distribution: str = "zipfian"
    duration_s: float = 10.0
    concurrency: int = 32
    timeout_ms: int = 2000
    vis_offsets_ms: tuple[int, ...] = (0, 5, 10, 25, 50, 75, 100, 125, 150, 175, 200, 250, 300, 400)
    vis_samples: int = 40
    delay_ms: float = 150.0
    avail_phase_s: float = 5.0
    availability: bool = True
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def quick_mode(cls, output: Path, **kw: Any) -> BenchConfig:
        base = cls(output=output, quick=True, workloads=("A", "F"), keys=1000, duration_s=2.0, concurrency=16,
                   vis_offsets_ms=(0, 10, 25, 50, 100, 150, 200, 300), vis_samples=12, avail_phase_s=2.0)
        return replace(base, **kw)

    def estimate_s(self) -> float:
        """A rough duration, printed before a full run starts (measured on 2 cores; see bench/rw_tradeoff.md)."""
        start = 0.0 if self.urls else 6.0
        sweep = len(self.workloads) * len(self.rw) * (self.duration_s + 0.3) + self.keys / 600
        mean_wait = sum(self.vis_offsets_ms) / len(self.vis_offsets_ms) + self.delay_ms / 2 + 20
        vis = len(self.rw) * self.vis_samples * len(self.vis_offsets_ms) * mean_wait / 1000 / self.concurrency
        avail = (3 * self.avail_phase_s + 8) if self.availability and not self.urls else 0
        return start + sweep + vis + avail + 3


async def _sweep(client: Client, cfg: BenchConfig, progress: Progress, task: Any) -> list[dict[str, Any]]:
    rows = []
    for wl in cfg.workloads:
        # A fresh generator per (workload, R/W): every cell of the sweep replays the same sequence.
        for r, w in cfg.rw:
            q = Quorum(r, w)
            progress.update(task, description=f"workload {wl} {q.label}")
            gen = Workload(WORKLOADS[wl], cfg.keys, cfg.seed, cfg.distribution)
            res = await run_workload(client, gen, q, duration_s=cfg.duration_s, concurrency=cfg.concurrency,
                                     seed=cfg.seed, value_size=cfg.value_size,
                                     on_tick=lambda dt: progress.advance(task, dt))
            rows.append(res.to_json())
    return rows


async def _visibility(client: Client, target: Target, cfg: BenchConfig, progress: Progress,
                      task: Any) -> dict[str, Any]:
    slow = target.ids[-1]
    idx = {nid: i for i, nid in enumerate(target.ids)}
    writers = tuple(idx[n] for n in target.ids if n != slow) or (0,)
    readers = tuple(range(len(target.ids)))
    if len(target.ids) < 2:
        return {"skipped": "needs at least two coordinators (give several --url)"}
    delayed = False
    if target.can_delay:
        delayed = await target.set_delay(slow, cfg.delay_ms)
    note = (f"replication to {slow} delayed {cfg.delay_ms:g} ms" if delayed
            else "no delay injected (/debug/delay unavailable: testing_faults is off)")
    plan = visibility.VisibilityPlan(cfg.vis_offsets_ms, cfg.vis_samples, writers, readers,
                                     concurrency=cfg.concurrency, tag=f"{cfg.seed}-{time.time_ns()}",
                                     names=tuple(target.ids))

    def done(q: Quorum) -> None:
        progress.advance(task, 1)
        progress.update(task, description=f"t-visibility {q.label}")

    try:
        rows = await visibility.measure_all(client, [Quorum(r, w) for r, w in cfg.rw], plan, target.n_val,
                                            on_done=done)
    finally:
        if delayed:
            await target.set_delay(slow, 0)
    return {"slow_node": slow if delayed else None, "delay_ms": cfg.delay_ms if delayed else 0, "note": note,
            "offsets_ms": list(cfg.vis_offsets_ms), "samples_per_offset": cfg.vis_samples,
            "writers": [target.ids[i] for i in writers], "readers": target.ids, "rows": rows}


async def _run(cfg: BenchConfig, console: Console, holder: list[Target]) -> dict[str, Any]:
    started = time.perf_counter()
    tmp: tempfile.TemporaryDirectory[str] | None = None
    if cfg.urls:
        target = await Target.from_urls(list(cfg.urls))
    else:
        tmp = tempfile.TemporaryDirectory(prefix="dynamostore-bench-")
        target = LocalCluster(Path(tmp.name), cfg.nodes)
    holder.append(target)
    try:
        if isinstance(target, LocalCluster):
            console.print(f"starting a local {cfg.nodes}-node cluster (N={target.n_val}) in {target.root}")
            await target.start()
        doc = await _phases(cfg, console, target)
    finally:
        await target.close()
        if tmp is not None:
            tmp.cleanup()
    doc["meta"]["elapsed_s"] = round(time.perf_counter() - started, 1)
    return doc


async def _phases(cfg: BenchConfig, console: Console, target: Target) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "meta": {
            "seed": cfg.seed, "quick": cfg.quick, "cluster": "own local cluster" if not cfg.urls else list(cfg.urls),
            "nodes": target.ids, "n_val": target.n_val, "workloads": list(cfg.workloads), "keys": cfg.keys,
            "value_size": cfg.value_size, "distribution": cfg.distribution, "duration_s": cfg.duration_s,
            "concurrency": cfg.concurrency, "timeout_ms": cfg.timeout_ms, "cpus": os.cpu_count(),
            "python": platform.python_version(), "fault_injection": {"delay": target.can_delay,
                                                                     "kill": target.can_kill},
        },
    }
    sweep_units = len(cfg.workloads) * len(cfg.rw) * cfg.duration_s
    columns = (TextColumn("{task.description:<28}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
               TimeElapsedColumn())
    async with Client(target.urls, timeout_ms=cfg.timeout_ms, connections=cfg.concurrency * 2) as client:
        with Progress(*columns, console=console, disable=not cfg.progress, transient=False) as progress:
            t_sweep = progress.add_task("preloading keys", total=sweep_units)
            t_vis = progress.add_task("t-visibility", total=len(cfg.rw))
            t_av = progress.add_task("availability", total=4)
            failed = await preload(client, cfg.keys, n_val=target.n_val, seed=cfg.seed, value_size=cfg.value_size,
                                   concurrency=cfg.concurrency)
            doc["meta"]["preload_failures"] = failed
            doc["throughput"] = await _sweep(client, cfg, progress, t_sweep)
            progress.update(t_sweep, completed=sweep_units, description="latency sweep done")
            doc["visibility"] = await _visibility(client, target, cfg, progress, t_vis)
            if not cfg.availability:
                doc["availability"] = {"skipped": "disabled (--no-availability)"}
            elif not target.can_kill:
                doc["availability"] = {"skipped": "the bench did not start this cluster, so it cannot kill nodes"}
            elif len(target.ids) < 3:
                doc["availability"] = {"skipped": "needs at least 3 nodes"}
            else:
                combos = [Quorum(r, w, sloppy) for r, w in cfg.rw for sloppy in (True, False)]

                def phase(ph: str) -> None:
                    progress.update(t_av, description=f"availability: {ph}")
                    progress.advance(t_av, 1)

                doc["availability"] = await availability.measure(
                    client, target, combos, victims=[target.ids[-1], target.ids[-2]], phase_s=cfg.avail_phase_s,
                    keys=cfg.keys, seed=cfg.seed, value_size=cfg.value_size, concurrency=cfg.concurrency,
                    on_phase=phase)
                if len(target.ids) <= target.n_val:
                    doc["availability"]["note"] = (
                        f"{len(target.ids)} nodes with N={target.n_val}: every node is a primary, so there is no "
                        "fallback and sloppy = strict here (run with --nodes 5 to see hinted handoff help)")
                progress.update(t_av, completed=4, description="availability done")
    return doc


def run_suite(cfg: BenchConfig, console: Console | None = None) -> dict[str, Any]:
    """Run every phase, write results.json and the plots to cfg.output, print the tables; return the doc."""
    console = console or Console()
    cfg.output.mkdir(parents=True, exist_ok=True)
    holder: list[Target] = []
    try:
        doc = asyncio.run(_run(cfg, console, holder))
    finally:
        # asyncio.run cancels _run on Ctrl-C, whose finally stops the nodes; this covers anything that escaped.
        for t in holder:
            if isinstance(t, LocalCluster):
                t.stop_processes()
    doc = report.clean_nans(doc)
    doc["meta"]["config"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    plots = report.write_plots(doc, cfg.output)
    doc["plots"] = [p.name for p in plots]
    path = report.write_json(doc, cfg.output)
    report.print_report(console, doc)
    console.print(f"\nresults: {path}")
    for p in plots:
        console.print(f"plot:    {p}")
    console.print(f"took {doc['meta']['elapsed_s']:.1f} s")
    return doc
