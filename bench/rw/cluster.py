"""The cluster a benchmark drives: one it starts itself (node processes it can kill -9 and restart), or a
running one given by URLs (no kills; delay injection only if those nodes allow it).

Own clusters are spawned like `dynamostore cluster` does (DIR/cluster.toml, `dynamostore node` per member,
logs in DIR/nK.log) but with the process handles kept here, so the bench can kill and restart single nodes.
Every process started here is stopped by `close()` (SIGTERM, then SIGKILL after a grace period).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import tomli_w

from dynamostore.cli.localcluster import free_base_port, write_cluster_file


class BenchClusterError(RuntimeError):
    pass


class Target:
    """What the bench talks to: node ids with their HTTP URLs, and which faults it may inject."""

    def __init__(self, ids: list[str], urls: list[str], *, can_kill: bool, n_val: int) -> None:
        self.ids = ids
        self.urls = urls
        self.can_kill = can_kill
        self.can_delay = False  # set once every node accepted a zero delay
        self.n_val = n_val
        self._session: aiohttp.ClientSession | None = None

    def url(self, nid: str) -> str:
        return self.urls[self.ids.index(nid)]

    async def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        return self._session

    async def status(self, nid: str) -> dict[str, Any]:
        s = await self.session()
        async with s.get(self.url(nid) + "/status") as r:
            if r.status != 200:
                raise BenchClusterError(f"{nid}: /status answered {r.status}")
            doc: dict[str, Any] = await r.json()
            return doc

    async def healthy(self, nid: str) -> bool:
        s = await self.session()
        try:
            async with s.get(self.url(nid) + "/health", timeout=aiohttp.ClientTimeout(total=1)) as r:
                return r.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return False

    async def sees_all_up(self, nid: str, among: list[str]) -> bool:
        try:
            doc = await self.status(nid)
        except (aiohttp.ClientError, asyncio.TimeoutError, BenchClusterError):
            return False
        up = {m["id"] for m in doc["members"] if m["liveness"].get("up")}
        return set(among) <= up

    async def wait_converged(self, among: list[str], timeout: float = 20) -> None:
        """Wait (with a deadline) until every node in `among` sees every other one up."""
        deadline = time.monotonic() + timeout
        for nid in among:
            while not await self.sees_all_up(nid, among):
                if time.monotonic() > deadline:
                    raise BenchClusterError(f"{nid} does not see {among} up after {timeout:g}s")
                await asyncio.sleep(0.05)

    async def set_delay(self, slow: str, ms: float) -> bool:
        """Delay every other node's internal messages to `slow` by `ms` (0 clears). False if refused."""
        s = await self.session()
        ok = True
        for nid in self.ids:
            if nid == slow:
                continue
            try:
                async with s.post(self.url(nid) + "/debug/delay", json={"peer": slow, "ms": ms}) as r:
                    ok = ok and r.status == 200
            except (aiohttp.ClientError, asyncio.TimeoutError):
                ok = False
        return ok

    async def probe_faults(self) -> None:
        """Find out whether /debug/delay works on every node (testing_faults = true)."""
        self.can_delay = len(self.ids) >= 2 and await self.set_delay(self.ids[-1], 0)

    async def kill(self, nid: str) -> None:
        raise BenchClusterError("this cluster was not started by the bench: it cannot kill nodes")

    async def restart(self, nid: str) -> None:
        raise BenchClusterError("this cluster was not started by the bench: it cannot restart nodes")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @classmethod
    async def from_urls(cls, urls: list[str]) -> Target:
        """A running cluster: node ids from each URL's /health; N from the first node's /status."""
        t = cls([], [u.rstrip("/") for u in urls], can_kill=False, n_val=3)
        s = await t.session()
        for u in t.urls:
            try:
                async with s.get(u + "/health") as r:
                    t.ids.append(str((await r.json())["node"]))
            except (aiohttp.ClientError, asyncio.TimeoutError, KeyError, ValueError) as exc:
                await t.close()
                raise BenchClusterError(f"cannot reach {u}/health: {exc}") from exc
        t.n_val = int((await t.status(t.ids[0]))["ring"]["n_val"])
        await t.probe_faults()
        return t


class LocalCluster(Target):
    """A local cluster of `nodes` processes in `root`, started with `testing_faults = true`."""

    def __init__(self, root: Path, nodes: int, settings: dict[str, Any] | None = None) -> None:
        self.root = root
        base = free_base_port(nodes)
        ids = [f"n{k}" for k in range(1, nodes + 1)]
        super().__init__(ids, [f"http://127.0.0.1:{base + k}" for k in range(nodes)], can_kill=True,
                         n_val=min(3, nodes))
        root.mkdir(parents=True, exist_ok=True)
        doc: dict[str, Any] = {"testing_faults": True, "log_level": "WARNING"}
        doc.update(settings or {})
        settings_file = root / "settings.toml"
        settings_file.write_text(tomli_w.dumps(doc))
        self.config = write_cluster_file(root, nodes, base, settings_file)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def _spawn(self, nid: str) -> None:
        with open(self.root / f"{nid}.log", "ab") as log:
            # Own session: a Ctrl-C at the terminal reaches the bench, which then stops the nodes in order.
            self.procs[nid] = subprocess.Popen(
                [sys.executable, "-m", "dynamostore", "node", "--config", str(self.config), "--id", nid],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )

    async def wait_healthy(self, nid: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not await self.healthy(nid):
            p = self.procs[nid]
            if p.poll() is not None:
                raise BenchClusterError(f"{nid} exited with code {p.returncode}: see {self.root / (nid + '.log')}")
            if time.monotonic() > deadline:
                raise BenchClusterError(f"{nid} not healthy after {timeout:g}s: see {self.root / (nid + '.log')}")
            await asyncio.sleep(0.05)

    async def start(self) -> None:
        for nid in self.ids:
            self._spawn(nid)
        for nid in self.ids:
            await self.wait_healthy(nid)
        await self.wait_converged(self.ids)
        await self.probe_faults()

    async def kill(self, nid: str) -> None:
        """kill -9, as a crash: no clean shutdown, the data stays on disk."""
        p = self.procs[nid]
        p.send_signal(signal.SIGKILL)
        await asyncio.to_thread(p.wait, 30)

    async def restart(self, nid: str) -> None:
        """Start a killed node again from its data (what `dynamostore node --config ... --id nK` does)."""
        if self.procs[nid].poll() is None:
            return
        self._spawn(nid)
        await self.wait_healthy(nid)

    def stop_processes(self) -> None:
        """Synchronous, so it also runs from a signal-interrupted path: SIGTERM all, SIGKILL stragglers."""
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        grace = time.monotonic() + 10
        for p in self.procs.values():
            try:
                p.wait(timeout=max(0.1, grace - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    async def close(self) -> None:
        await asyncio.to_thread(self.stop_processes)
        await super().close()
