"""The operator console in a real headless Chromium (Debian's /usr/bin/chromium driven by Playwright), against
real node processes.

- An operator watches a node die and come back: all members up; `kill -9` of n3 and n3 marked down within
  seconds; sloppy-quorum writes and hints pending for n3; n3 restarted and its hints drained to zero (and the
  pile-up and the drain are in the node's history the chart draws).
- The key inspector on a key with two siblings shows both dots and says why.
- 64 partitions on 5 nodes stay legible: every partition's cell and replica pair is drawn, nothing overflows.

Screenshots of each step are saved under tests/artifacts/ui/ (git-ignored), or $DYNAMOSTORE_ARTIFACTS/ui/ when
that is set; the test prints the folder.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from ring.placement import initial_ring
from tests.harness import Cluster, wait_for

pytestmark = pytest.mark.cluster

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[2]
# What the browser sees change must show up within this long: the failure detector (800 ms), the page's poll
# (2 s) and a render, with room for a loaded 2-core machine.
SECONDS = 8.0
# (functions, not expressions: the console's Content-Security-Policy forbids evaluating strings in the page)
HINTS_SHOWN = "([target, n]) => document.querySelector(`[data-hints-target=\"${target}\"]`).textContent === n"


def _artifacts() -> Path:
    env = os.environ.get("DYNAMOSTORE_ARTIFACTS")
    base = Path(env) if env else ROOT / "tests" / "artifacts"
    out = base / "ui"
    out.mkdir(parents=True, exist_ok=True)
    print(f"\nconsole screenshots: {out}")
    return out


@asynccontextmanager
async def browser(tmp_path: Path) -> AsyncIterator[Any]:
    """A fresh Chromium profile and page; page errors fail the test."""
    playwright = pytest.importorskip("playwright.async_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)")
    errors: list[str] = []
    async with playwright.async_playwright() as p:
        ctx = await p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"],
            viewport={"width": 1400, "height": 900},
        )
        try:
            page = ctx.pages[0] if ctx.pages else await ctx.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            yield page
        finally:
            await ctx.close()
    assert not errors, f"errors in the page: {errors}"


async def _text(page: Any, selector: str) -> str:
    return str(await page.locator(selector).first.text_content()).strip()


async def test_an_operator_watches_a_node_die_hints_pile_up_and_drain_and_explains_siblings(
        make_cluster: Any, tmp_path: Path) -> None:
    # N=2 on 3 nodes, so a key of n2 and n3 has a fallback (n1) to hold its hints while n3 is down.
    c: Cluster = await make_cluster(3, settings={"cluster": {"n_val": 2}, "handoff": {"interval_ms": 100}})
    shots = _artifacts()
    ring = initial_ring(c.ids, 64)
    hinted_keys = [k for k in (f"user:{i}" for i in range(400))
                   if set(ring.preference_list(ring.partition_for_key(k.encode()), 2)[0]) == {"n2", "n3"}][:30]
    async with browser(tmp_path) as page:
        await page.goto(c.url("n1") + "/ui/")
        for nid in c.ids:
            await page.locator(f'#members tr[data-member="{nid}"][data-up="true"]').wait_for(timeout=10_000)
        assert await _text(page, '[data-card="up"] .value') == "3 / 3"
        await page.screenshot(path=str(shots / "1-all-up.png"), full_page=True)

        c.kill("n3", signal.SIGKILL)
        killed = time.monotonic()
        await page.locator('#members tr[data-member="n3"][data-up="false"]').wait_for(timeout=SECONDS * 1000)
        took = time.monotonic() - killed
        print(f"n3 shown down {took:.1f}s after kill -9")
        assert took < SECONDS
        assert await _text(page, '[data-card="up"] .value') == "2 / 3"
        await page.screenshot(path=str(shots / "2-n3-down.png"), full_page=True)

        for i, key in enumerate(hinted_keys):  # W=2 with n3 dead: n1 stands in for it (sloppy quorum)
            status, hd, body = await c.put("n1", key, f"v{i}".encode(), {"X-Write-Quorum": "2"})
            assert status == 204 and hd["X-Hinted"] == "1", (key, status, hd, body)
        pending = (await c.status("n1"))["handoff"]["pending"]["n3"]
        assert pending == len(hinted_keys)
        await page.wait_for_function(HINTS_SHOWN, arg=["n3", str(pending)], timeout=SECONDS * 1000)
        assert await _text(page, '[data-card="hints"] .value') == str(pending)
        await page.wait_for_function("() => document.querySelector('#chart-hints').textContent.includes('for n3')")
        await page.screenshot(path=str(shots / "3-hints-pending.png"), full_page=True)

        c.start("n3")
        await c.wait_healthy("n3")
        await page.locator('#members tr[data-member="n3"][data-up="true"]').wait_for(timeout=30_000)
        await page.wait_for_function(HINTS_SHOWN, arg=["n3", "0"], timeout=30_000)
        # the chart's data: the history shows the pile-up, then the drain to zero (its next sample, up to a
        # second after /status, which the table reads, said so)
        s = await c.http()
        series: list[int] = []

        async def drained_in_history() -> bool:
            async with s.get(c.url("n1") + "/status/history?since=0") as r:
                series[:] = [smp["hints_pending"].get("n3", 0) for smp in (await r.json())["samples"]]
            return bool(series) and series[-1] == 0 and max(series) > 0

        await wait_for(drained_in_history, 10, "the history to show n3's hints drained")
        assert max(series) == pending and series[0] == 0, series
        await page.wait_for_timeout(2500)  # one more poll, so the chart has drawn the drain
        await page.screenshot(path=str(shots / "4-hints-drained.png"), full_page=True)

        # Two writes through one coordinator without a context: two siblings, each with its own dot.
        for value in (b"alice", b"bob"):
            status, _, _ = await c.put("n1", "cart", value, {"X-Write-Quorum": "all"})
            assert status == 204
        await page.goto(c.url("n1") + "/ui/#inspect/cart")
        await page.locator("#inspect-copies").wait_for(timeout=10_000)
        merged = page.locator('dd .dot[data-dot]')
        dots = sorted(set(await merged.evaluate_all("els => els.map(e => e.dataset.dot)")))
        assert len(dots) == 2, dots
        explain = await _text(page, "#inspect-explain")
        assert "2 siblings" in explain and all(d in explain for d in dots), explain
        assert await page.locator('[data-agree="true"]').count() == 1
        cart_primaries = ring.preference_list(ring.partition_for_key(b"cart"), 2)[0]
        for nid in cart_primaries:  # written at W=all: each primary's own copy shows both dots
            row = page.locator(f'#inspect-copies tr[data-node="{nid}"][data-kind="data"]')
            shown = sorted(set(await row.locator(".dot[data-dot]").evaluate_all("els => els.map(e => e.dataset.dot)")))
            assert shown == dots, (nid, shown)
        await page.screenshot(path=str(shots / "5-inspector-siblings.png"), full_page=True)


async def test_64_partitions_on_5_nodes_stay_legible_and_status_stays_cheap(make_cluster: Any, tmp_path: Path) -> None:
    c: Cluster = await make_cluster(5, settings={"antientropy": {"exchange_interval_s": 2.0}})
    shots = _artifacts()
    doc = await c.status("n1")
    mine = sorted(int(p) for p in doc["antientropy"]["partitions"])
    assert doc["ring"]["partitions"] == 64 and len(doc["ring"]["replicas"]) == 64
    async with browser(tmp_path) as page:
        await page.goto(c.url("n1") + "/ui/#ring")
        await page.locator(".part").nth(63).wait_for(timeout=10_000)
        assert await page.locator(".part").count() == 64
        assert await page.locator(".part .chip").count() == 64 * 3
        assert await page.locator(".part.mine").count() == doc["ring"]["owned"].__len__()
        assert await page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
        first = await page.locator(".part").first.bounding_box()
        assert first is not None and first["width"] >= 60  # cells stay wide enough to read their replicas
        await page.screenshot(path=str(shots / "6-ring-64x5.png"), full_page=True)

        await page.goto(c.url("n1") + "/ui/#antientropy")
        await page.locator(".ae-part").nth(len(mine) - 1).wait_for(timeout=10_000)
        assert await page.locator(".ae-part").count() == len(mine)
        assert await page.locator(".ae-part .pair").count() == 2 * len(mine)  # N=3: two peers per partition
        await page.wait_for_function("() => document.querySelectorAll('.pair.fresh').length > 0", timeout=20_000)
        assert await page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
        await page.screenshot(path=str(shots / "7-antientropy-64x5.png"), full_page=True)

        await page.goto(c.url("n1") + "/ui/#membership")  # the committed members and the (empty) plan
        await page.locator('[data-plan="empty"]').wait_for(timeout=10_000)
        assert await page.locator("#mem-members tbody tr").count() == 5
        assert await page.locator("#plan-commit").is_disabled()
        await page.goto(c.url("n1") + "/ui/#traffic")  # every chart drawn
        for chart in ("chart-rps", "chart-lat", "chart-503", "chart-sib"):
            await page.locator(f"#{chart} canvas").wait_for(timeout=10_000)
        await page.screenshot(path=str(shots / "8-traffic.png"), full_page=True)

    # /status, what the page reads every 2 s, stays cheap on the node with 64 partitions and 5 nodes: measured
    # by the node's own CPU clock (a loaded machine stretches wall times, not CPU), background work included
    s = await c.http()
    calls = 50
    cpu0 = _cpu_seconds(c.procs["n1"].pid)
    for _ in range(calls):
        async with s.get(c.url("n1") + "/status") as r:
            body = await r.read()
    per_call = (_cpu_seconds(c.procs["n1"].pid) - cpu0) / calls
    print(f"/status on 5 nodes x 64 partitions: {len(body)} bytes, {per_call * 1000:.1f} ms of node CPU per call")
    assert json.loads(body)["node"] == "n1" and per_call < 0.02


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

