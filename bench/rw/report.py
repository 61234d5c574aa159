"""Output of `python -m bench.rw`: rich tables on the terminal, results.json, and PNG plots (Agg backend)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

SHOWN_OFFSETS = 6  # visibility columns on the terminal (the JSON and the plot have them all)


def _ms(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _lat(ms: dict[str, Any]) -> str:
    return "/".join(_ms(ms.get(p)) for p in ("p50", "p95", "p99", "p99.9")) if ms else "-"


def latency_table(doc: dict[str, Any]) -> Table:
    t = Table(title="Throughput; latency in ms as p50/p95/p99/p99.9 (write: update in A/B, rmw in F)",
              title_justify="left",
              box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("wl", "R/W", "ops/s", "err", "read", "write"):
        t.add_column(col, justify="right", no_wrap=True)
    for row in doc["throughput"]:
        ops = row["ops"]
        wname = "rmw" if "rmw" in ops else "update"
        t.add_row(row["workload"], f"{row['r']}/{row['w']}", f"{row['throughput_ops_s']:.0f}", str(row["errors"]),
                  _lat(ops.get("read", {}).get("latency_ms", {})), _lat(ops.get(wname, {}).get("latency_ms", {})))
    return t


def visibility_table(doc: dict[str, Any]) -> Table:
    vis = doc["visibility"]
    offsets = [str(t) for t in vis["offsets_ms"]]
    if len(offsets) > SHOWN_OFFSETS:  # evenly spread, always with the first and the last
        step = (len(offsets) - 1) / (SHOWN_OFFSETS - 1)
        offsets = [offsets[round(i * step)] for i in range(SHOWN_OFFSETS)]
    t = Table(title=f"t-visibility: P(read at t ms after the ack sees the write); {vis['note']}", title_justify="left",
              box=box.SIMPLE_HEAD)
    t.add_column("R/W", justify="right")
    t.add_column("R+W>N")
    for o in offsets:
        t.add_column(f"t={o}", justify="right")
    t.add_column("stale reads", justify="right")
    for row in vis["rows"]:
        t.add_row(f"{row['r']}/{row['w']}", "yes" if row["strong"] else "no",
                  *(_pct(row["curve"][o]["p_fresh"]) for o in offsets), str(row["stale_reads"]))
    return t


def availability_table(doc: dict[str, Any]) -> Table:
    av = doc["availability"]
    t = Table(title=f"Availability: share of requests that succeeded (reads / writes); killed {', '.join(av['victims'])}",
              title_justify="left", box=box.SIMPLE_HEAD)
    for col in ("R/W", "quorum", "healthy", "1 node down", "2 nodes down"):
        t.add_column(col, justify="right")
    for row in av["rows"]:
        cells = [f"{_pct(row[ph]['read']['success'])} / {_pct(row[ph]['write']['success'])}"
                 for ph in ("healthy", "one_down", "two_down")]
        t.add_row(f"{row['r']}/{row['w']}", "sloppy" if row["sloppy"] else "strict", *cells)
    if av.get("note"):
        t.caption = av["note"]
    return t


def print_report(console: Console, doc: dict[str, Any]) -> None:
    if doc.get("throughput"):
        console.print(latency_table(doc))
    if doc.get("visibility", {}).get("rows"):
        console.print(visibility_table(doc))
    elif doc.get("visibility", {}).get("skipped"):
        console.print(f"t-visibility: skipped ({doc['visibility']['skipped']})")
    if doc.get("availability", {}).get("rows"):
        console.print(availability_table(doc))
    elif doc.get("availability", {}).get("skipped"):
        console.print(f"availability: skipped ({doc['availability']['skipped']})")


def write_json(doc: dict[str, Any], out: Path) -> Path:
    path = out / "results.json"
    path.write_text(json.dumps(doc, indent=2, allow_nan=False, default=_nan_to_none))
    return path


def _nan_to_none(o: Any) -> Any:  # pragma: no cover - json only calls it for unknown types
    return str(o)


def clean_nans(o: Any) -> Any:
    """NaN (no samples) becomes null, so results.json is strict JSON."""
    if isinstance(o, float) and math.isnan(o):
        return None
    if isinstance(o, dict):
        return {k: clean_nans(v) for k, v in o.items()}
    if isinstance(o, list):
        return [clean_nans(v) for v in o]
    return o


def write_plots(doc: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths: list[Path] = []
    rows = doc.get("throughput", [])
    if rows:
        workloads = sorted({r["workload"] for r in rows})
        fig, axes = plt.subplots(1, len(workloads), figsize=(5 * len(workloads), 4), squeeze=False)
        for ax, wl in zip(axes[0], workloads):
            sel = [r for r in rows if r["workload"] == wl]
            labels = [f"{r['r']},{r['w']}" for r in sel]
            xs = list(range(len(sel)))
            for op, style in (("read", "o-"), ("update", "s-"), ("rmw", "^-")):
                for pname, alpha in (("p50", 1.0), ("p99", 0.5)):
                    ys = [(r["ops"].get(op) or {}).get("latency_ms", {}).get(pname) for r in sel]
                    if any(y is not None for y in ys):
                        ax.plot(xs, [y if y is not None else float("nan") for y in ys], style, alpha=alpha,
                                label=f"{op} {pname}")
            ax.set_xticks(xs, labels)
            ax.set_xlabel("(R, W)")
            ax.set_ylabel("latency (ms)")
            ax2 = ax.twinx()
            ax2.bar(xs, [r["throughput_ops_s"] for r in sel], alpha=0.15, color="grey")
            ax2.set_ylabel("throughput (ops/s, bars)")
            ax.set_title(f"workload {wl}")
            ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(_save(fig, out / "latency_vs_rw.png", plt))
    vis = doc.get("visibility", {})
    if vis.get("rows"):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        offsets = vis["offsets_ms"]
        for row in vis["rows"]:
            ys = [row["curve"][str(t)]["p_fresh"] for t in offsets]
            ax.plot(offsets, [y if y is not None else float("nan") for y in ys], "o-" if row["strong"] else "x--",
                    label=f"R={row['r']} W={row['w']}" + (" (R+W>N)" if row["strong"] else ""))
        ax.set_xlabel("t: ms after the write was acknowledged")
        ax.set_ylabel("P(read returns the write or newer)")
        ax.set_ylim(-0.02, 1.05)
        ax.set_title(f"t-visibility ({vis['note']})", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(_save(fig, out / "t_visibility.png", plt))
    av = doc.get("availability", {})
    if av.get("rows"):
        phases = ("healthy", "one_down", "two_down")
        fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
        for ax, kind in zip(axes, ("read", "write")):
            sel = av["rows"]
            width = 0.8 / len(phases)
            for j, ph in enumerate(phases):
                ys = [r[ph][kind]["success"] for r in sel]
                ax.bar([i + j * width for i in range(len(sel))], [y if y is not None else 0 for y in ys], width,
                       label=ph.replace("_", " "))
            ax.set_xticks([i + width for i in range(len(sel))],
                          [f"{r['r']},{r['w']}\n{'sloppy' if r['sloppy'] else 'strict'}" for r in sel], fontsize=7)
            ax.set_title(f"{kind}s that succeeded")
            ax.set_ylim(0, 1.05)
            ax.legend(fontsize=7)
        axes[0].set_ylabel("share of requests")
        fig.tight_layout()
        paths.append(_save(fig, out / "availability.png", plt))
    return paths


def _save(fig: Any, path: Path, plt: Any) -> Path:
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
