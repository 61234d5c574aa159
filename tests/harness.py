"""Real multi-process clusters for tests: start `dynamostore node` processes, kill -9 them, restart them.

Everything waits on conditions with deadlines (`wait_for`), never on blind sleeps. Reused by the node-kill,
anti-entropy, membership and fault tests.
"""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import tomli_w

from tests.history import History, Report, values_of
from dynamostore.cli.localcluster import RPC_PORT_OFFSET, free_base_port, write_cluster_file


STRICT_ALL = {"X-Read-Quorum": "all", "X-Sloppy-Quorum": "false", "Accept": "application/json"}


async def wait_for(
    cond: Callable[[], Awaitable[bool]], timeout: float, what: str, interval: float = 0.05
) -> None:
    """Poll an async condition until it holds; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if await cond():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


class Cluster:
    """N node processes sharing DIR/cluster.toml, like `dynamostore cluster`, but controllable per node."""

    def __init__(self, root: Path, nodes: int, settings: dict[str, Any] | None = None,
                 own_addresses: bool = False, tls: bool = False) -> None:
        """`own_addresses`: node k listens (and connects from) 127.0.0.(k+1) instead of 127.0.0.1, so that
        packet filters can cut the network between nodes (tests/nemesis.py partitions). `tls`: as
        `dynamostore cluster --tls` (HTTPS, mutual TLS, tokens); the session sends the admin token."""
        self.root = root
        self.nodes = nodes
        self.tls = tls
        self.hosts = {f"n{k}": (f"127.0.0.{k + 1}" if own_addresses else "127.0.0.1") for k in range(1, nodes + 4)}
        self.base_port = free_base_port(nodes, spare=3)
        settings_file = None
        if settings:
            settings_file = root / "settings.toml"
            root.mkdir(parents=True, exist_ok=True)
            settings_file.write_text(tomli_w.dumps(settings))
        hosts = [self.hosts[f"n{k}"] for k in range(1, nodes + 1)] if own_addresses else None
        self.config = write_cluster_file(root, nodes, self.base_port, settings_file, hosts, tls=tls)
        self.admin_token = (root / "admin.token").read_text().strip() if tls else None
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.session: aiohttp.ClientSession | None = None

    @property
    def ids(self) -> list[str]:
        return [f"n{k}" for k in range(1, self.nodes + 1)]

    def http_port(self, nid: str) -> int:
        return self.base_port + int(nid[1:]) - 1

    def url(self, nid: str) -> str:
        return f"{'https' if self.tls else 'http'}://{self.hosts[nid]}:{self.http_port(nid)}"

    def ssl_context(self) -> ssl.SSLContext | bool:
        """Trusts the cluster's CA (True: aiohttp's default, for a plain-HTTP cluster)."""
        if not self.tls:
            return True
        from dynamostore.security.tls import client_context

        return client_context(self.root / "certs" / "ca.crt")

    def rpc_port(self, nid: str) -> int:
        return self.base_port + int(nid[1:]) - 1 + RPC_PORT_OFFSET

    def start(self, nid: str, env: dict[str, str] | None = None) -> None:
        """Start (or restart) node nK, with `env` added to its environment. Nodes past the founding N are new
        nodes that will join: they get their ports on the command line, following the same numbering."""
        log = open(self.root / f"{nid}.log", "ab")
        cmd = [sys.executable, "-m", "dynamostore", "node", "--config", str(self.config), "--id", nid]
        if int(nid[1:]) > self.nodes:
            cmd += ["--http-port", str(self.http_port(nid)), "--rpc-port", str(self.rpc_port(nid))]
            if self.hosts[nid] != "127.0.0.1":  # own_addresses: a newcomer listens on its own address too
                cmd += ["--host", self.hosts[nid]]
        self.procs[nid] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                           env={**os.environ, **env} if env else None)

    def kill(self, nid: str, sig: int = signal.SIGKILL) -> None:
        p = self.procs[nid]
        p.send_signal(sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            p.wait(timeout=30)

    def alive(self, nid: str) -> bool:
        p = self.procs.get(nid)
        return p is not None and p.poll() is None

    async def http(self) -> aiohttp.ClientSession:
        if self.session is None:
            headers = {"Authorization": f"Bearer {self.admin_token}"} if self.admin_token else None
            self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30), headers=headers,
                                                 connector=aiohttp.TCPConnector(ssl=self.ssl_context()))
        return self.session

    async def healthy(self, nid: str) -> bool:
        s = await self.http()
        try:
            async with s.get(self.url(nid) + "/health", timeout=aiohttp.ClientTimeout(total=1)) as r:
                return r.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return False

    async def wait_healthy(self, nid: str, timeout: float = 30) -> None:
        def check() -> Awaitable[bool]:
            if not self.alive(nid):
                raise AssertionError(f"{nid} exited: see {self.root / (nid + '.log')}")
            return self.healthy(nid)

        await wait_for(check, timeout, f"{nid} to answer /health")

    async def ready(self, nid: str) -> tuple[bool, str]:
        """GET /health/ready: (ready, why not)."""
        s = await self.http()
        try:
            async with s.get(self.url(nid) + "/health/ready", timeout=aiohttp.ClientTimeout(total=1)) as r:
                doc = await r.json()
                return r.status == 200, str(doc.get("reason", ""))
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
            return False, repr(exc)

    async def wait_ready(self, nid: str, timeout: float = 30) -> None:
        """Until the node can serve reads, writes and admin changes (not merely answer /health): its Raft log
        applied the founding entry and knows a leader, its store is open, it has a ring and is a member."""
        why = ""

        async def check() -> bool:
            nonlocal why
            if not self.alive(nid):
                raise AssertionError(f"{nid} exited: see {self.root / (nid + '.log')}")
            ok, why = await self.ready(nid)
            return ok

        try:
            await wait_for(check, timeout, f"{nid} to answer /health/ready")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last reason: {why}") from None

    async def status(self, nid: str) -> dict[str, Any]:
        s = await self.http()
        async with s.get(self.url(nid) + "/status") as r:
            assert r.status == 200
            doc: dict[str, Any] = await r.json()
            return doc

    async def sees(self, observer: str, peer: str, up: bool) -> bool:
        doc = await self.status(observer)
        return any(m["id"] == peer and m["liveness"]["up"] == up for m in doc["members"])

    async def start_all(self) -> None:
        for nid in self.ids:
            self.start(nid)
        for nid in self.ids:  # ready, not just up: an admin change right away must not meet "not bootstrapped"
            await self.wait_ready(nid)
        # every node sees every other node up before the test begins
        for a in self.ids:
            for b in self.ids:
                if a != b:
                    await wait_for(lambda a=a, b=b: self.sees(a, b, True), 10, f"{a} to see {b} up")

    async def admin(self, nid: str, op: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        s = await self.http()
        method = "GET" if body is None else "POST"
        async with s.request(method, f"{self.url(nid)}/admin/{op}", json=body) as r:
            return r.status, await r.json()

    def member_doc(self, nid: str) -> dict[str, Any]:
        doc: dict[str, Any] = {"id": nid, "http_port": self.http_port(nid), "rpc_port": self.rpc_port(nid)}
        if self.hosts[nid] != "127.0.0.1":
            doc |= {"http_host": self.hosts[nid], "rpc_host": self.hosts[nid]}
        return doc

    async def close(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if self.session is not None:
            await self.session.close()

    # --- client helpers -------------------------------------------------------------------------------

    async def put(self, nid: str, key: str, value: bytes, headers: dict[str, str] | None = None,
                  **params: str) -> tuple[int, dict[str, str], bytes]:
        s = await self.http()
        async with s.put(f"{self.url(nid)}/kv/{key}", data=value, headers=headers or {}, params=params) as r:
            return r.status, dict(r.headers), await r.read()

    async def get(self, nid: str, key: str, headers: dict[str, str] | None = None,
                  **params: str) -> tuple[int, dict[str, str], bytes]:
        s = await self.http()
        async with s.get(f"{self.url(nid)}/kv/{key}", headers=headers or {}, params=params) as r:
            return r.status, dict(r.headers), await r.read()

    async def final_check(self, h: History, via: str) -> Report:
        """Read every key of a history from its primaries alone (R=ALL, strict) and check that no
        acknowledged write was lost."""
        final: dict[str, set[bytes]] = {}
        for key in sorted(h.keys()):
            status, hd, body = await self.get(via, key, STRICT_ALL)
            final[key] = values_of(status, hd, body)
        report = h.check(final)
        print(f"\nhistory: {report.summary()}")
        assert report.lost == [], report.summary()
        return report

    async def delete(self, nid: str, key: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        s = await self.http()
        async with s.delete(f"{self.url(nid)}/kv/{key}", headers=headers or {}) as r:
            return r.status, dict(r.headers), await r.read()
