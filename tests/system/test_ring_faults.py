"""Ring changes under faults (issue 14): seeded membership schedules on a real 4-node cluster (N=3) while
clients add to sets, blind-write, delete and read at strict quorums (tests/ringfaults.py). Each run asserts
lost == resurrected == stale_strict == 0 (tests/history.py `verify`; `Violation` otherwise).

Seeds: RING_FAULTS_SEED (default 1) replays a run (the schedule is printed); `python -m bench.ring_faults
--seed S --kind K` prints the counts of any kind without asserting.

`test_ring_changes_under_partitions` plays the `mixed-partition` kind inside a network namespace it makes
(root, ip and iptables; as tests/system/test_faults.py), each change with a member cut off from every other
running node for 1.5-3 s.

Before issue 14's fixes, leave, remove and join-leave failed here (stale strict reads, resurrected deletes);
they must now come out clean. The runs still marked xfail (not strict, raises=Violation) show violations the
fixes do not remove yet, now and then: any other failure of those runs still fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from tests.harness import Cluster
from tests.history import Violation
from tests.ringfaults import FOUNDERS, SETTINGS, run_kind

pytestmark = pytest.mark.cluster

SEED = int(os.environ.get("RING_FAULTS_SEED", "1"))


def _open(why: str) -> pytest.MarkDecorator:
    """A violation issue 14's fixes do not remove yet. Not strict: the clients' timing is not seeded, so some
    runs come out clean; any failure other than the checker's Violation (a crash, a ring that never
    settles) still fails the test."""
    return pytest.mark.xfail(strict=False, raises=Violation, reason=f"issue 14, still open: {why}")


@pytest.mark.parametrize("kind", [
    "join",
    "leave",        # failed before issue 14's fixes: stale strict reads (bug 1)
    "remove",       # the same (bug 1)
    "replace",      # the newcomer takes exactly the old member's slots: no preference list collapses
    "join-leave",   # failed before: reaped deletes came back on the former owner (bug 2)
    pytest.param("leader-kill", marks=_open("a join then a leave, each with the Raft leader killed -9: now and "
                                            "then one deleted key comes back")),
    pytest.param("mixed", marks=_open("changes mixed with kill and pause: now and then a stale strict read")),
])
async def test_ring_changes_lose_nothing_resurrect_nothing_and_read_fresh(make_cluster: Callable[..., Any],
                                                                         kind: str) -> None:
    c: Cluster = await make_cluster(FOUNDERS, SETTINGS)
    res = await run_kind(c, kind, SEED)
    res.report.assert_clean(f"{kind} seed={SEED}")


IN_NETNS = os.environ.get("RING_FAULTS_IN_NETNS") == "1"


@pytest.mark.skipif(not IN_NETNS, reason="runs inside the namespace made by test_ring_changes_under_partitions")
async def test_ring_partitions_inside_namespace(make_cluster: Callable[..., Any]) -> None:
    c: Cluster = await make_cluster(FOUNDERS, SETTINGS, own_addresses=True)
    res = await run_kind(c, "mixed-partition", SEED)
    res.report.assert_clean(f"mixed-partition seed={SEED}")


@_open("ring changes with a member cut off by a partition: stale strict reads")
def test_ring_changes_under_partitions() -> None:
    """Ring changes, each with a member cut off from the others by iptables for 1.5-3 s, inside a network
    namespace made for this test (one loopback address per node, as tests/system/test_faults.py does)."""
    if IN_NETNS:
        pytest.skip("already inside the namespace")
    missing = [tool for tool in ("ip", "iptables") if shutil.which(tool) is None]
    if missing or os.geteuid() != 0:
        pytest.skip(f"needs root and {', '.join(missing) or 'ip/iptables'} (.ci/run installs them)")
    ns = f"ds-ring-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True)
        inner = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
             f"{__file__}::test_ring_partitions_inside_namespace"],
            env={**os.environ, "RING_FAULTS_IN_NETNS": "1"}, capture_output=True, text=True, timeout=600,
        )
        print(inner.stdout[-4000:])
        if "Violation" in inner.stdout and inner.returncode != 0:
            raise Violation(inner.stdout[-2000:])
        assert inner.returncode == 0, inner.stdout[-4000:] + inner.stderr[-2000:]
        assert "1 passed" in inner.stdout
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
