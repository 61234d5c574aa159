"""Acknowledged / lost / resurrected / stale-strict counts per ring-change schedule kind.

    .venv/bin/python -m bench.ring_faults --seed 1 --kind leave [--kind remove ...]   (or --kind all)

Each kind runs on a fresh 4-node cluster of real processes, exactly as tests/system/test_ring_faults.py
does (tests/ringfaults.py), but prints the counts instead of asserting. The seed replays the schedule.
`mixed-partition` is not offered: it needs the network namespace that the test makes for it.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
from pathlib import Path

from tests.harness import Cluster
from tests.ringfaults import FOUNDERS, NEEDS_NETNS, SCHEDULES, SETTINGS, RunResult, run_kind

KINDS = sorted(set(SCHEDULES) - NEEDS_NETNS)  # partitions need the test's network namespace


async def one(kind: str, seed: int) -> RunResult:
    root = Path(tempfile.mkdtemp(prefix=f"ds-ring-{kind}-"))
    c = Cluster(root, FOUNDERS, SETTINGS)
    try:
        await c.start_all()
        return await run_kind(c, kind, seed)
    finally:
        await c.close()
        shutil.rmtree(root, ignore_errors=True)


async def main(args: argparse.Namespace) -> None:
    kinds = KINDS if "all" in args.kind else args.kind
    results = []
    for kind in kinds:
        for seed in args.seed:
            results.append(await one(kind, seed))
    print("\nkind        seed  acknowledged  lost  resurrected  stale_strict")
    for r in results:
        rep = r.report
        print(f"{r.kind:<11} {r.seed:>4}  {rep.acknowledged:>12}  {len(rep.lost):>4}  {len(rep.resurrected):>11}  "
              f"{len(rep.stale_strict):>12}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, action="append", help="repeatable (default 1)")
    ap.add_argument("--kind", action="append", choices=KINDS + ["all"], help="repeatable (default all)")
    a = ap.parse_args()
    a.seed = a.seed or [1]
    a.kind = a.kind or ["all"]
    asyncio.run(main(a))
