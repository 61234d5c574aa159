"""Three "hosts": each node in a network namespace of its own, with its own address on a bridge, started from
one cluster file with `dynamostore node` in its namespace, TLS and tokens on, as the README's section
"Deploying on several machines" says. The same ports on every host, as on real machines.

    root namespace (this test, the client) 10.a.b.1 ─┐
                                                      bridge (a namespace of its own: no host firewall applies)
    ns n1: 10.a.b.11   ns n2: 10.a.b.12   ns n3: 10.a.b.13

It checks reads and writes across the hosts, kill -9 of one and its restart (hints delivered, nothing lost);
that a node reachable only on its host address works (nothing listens on its loopback); that a node refuses
to start on a host address without TLS and tokens; and that a client without a token and a peer without a
certificate of the cluster are refused. Needs root and iproute2 (CI runs as root); skipped otherwise.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import tomli_w

from dynamostore.cli.main import main
from dynamostore.net.rpc import RpcClient, RpcError
from dynamostore.security import certs, tls
from tests.harness import wait_for

pytestmark = pytest.mark.cluster

HTTP, RPC = 8001, 9001
CLUSTER = "multihost"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def _free_subnet() -> str:
    """10.a.b. overlapping none of this host's routes (the default route aside)."""
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout.split("\n")
    taken = []
    for line in routes:
        dest = line.split(" ", 1)[0]
        if dest and dest != "default":
            taken.append(ipaddress.ip_network(dest if "/" in dest else f"{dest}/32", strict=False))
    rng = random.Random()
    for _ in range(200):
        net = ipaddress.ip_network(f"10.{rng.randrange(200, 250)}.{rng.randrange(1, 254)}.0/24")
        if not any(net.overlaps(t) for t in taken):
            return str(net.network_address)[:-1]
    raise RuntimeError("no free 10.x.y.0/24 subnet")


class Hosts:
    """Namespaces, veth pairs and the bridge; removed in `close`, whatever happened."""

    def __init__(self, n: int) -> None:
        uid = uuid.uuid4().hex[:6]
        self.net = _free_subnet()
        self.bridge_ns = f"dsmh-{uid}-br"
        self.ns = {f"n{k}": f"dsmh-{uid}-n{k}" for k in range(1, n + 1)}
        self.addr = {f"n{k}": f"{self.net}{10 + k}" for k in range(1, n + 1)}
        self.root_if = f"dsmh{uid}"
        self.made: list[str] = []

    def up(self) -> None:
        br = self.bridge_ns
        ip("netns", "add", br)
        self.made.append(br)
        ip("-n", br, "link", "set", "lo", "up")
        ip("-n", br, "link", "add", "br0", "type", "bridge")
        ip("-n", br, "link", "set", "br0", "up")
        for k, (nid, ns) in enumerate(self.ns.items(), 1):
            ip("netns", "add", ns)
            self.made.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
            ip("link", "add", "name", f"v{k}", "netns", br, "type", "veth", "peer", "name", "eth0", "netns", ns)
            ip("-n", br, "link", "set", f"v{k}", "master", "br0", "up")
            ip("-n", ns, "addr", "add", f"{self.addr[nid]}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
        # the test's own way in: a veth from the root namespace into the bridge
        ip("link", "add", "name", self.root_if, "type", "veth", "peer", "name", "vc", "netns", br)
        ip("-n", br, "link", "set", "vc", "master", "br0", "up")
        ip("addr", "add", f"{self.net}1/24", "dev", self.root_if)
        ip("link", "set", self.root_if, "up")

    def close(self) -> None:
        subprocess.run(["ip", "link", "del", self.root_if], capture_output=True)
        for ns in reversed(self.made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    missing = [t for t in ("ip",) if shutil.which(t) is None]
    if missing or os.geteuid() != 0:
        pytest.skip("needs root and iproute2 for network namespaces (CI runs as root; .ci/run installs iproute2)")
    h = Hosts(3)
    try:
        h.up()
        yield h
    finally:
        h.close()


class Nodes:
    def __init__(self, hosts: Hosts, config: Path) -> None:
        self.hosts = hosts
        self.config = config
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, nid: str) -> None:
        log = open(self.config.parent / f"{nid}.log", "ab")
        # `ip netns exec` execs the command in the namespace: the pid is the node's own
        self.procs[nid] = subprocess.Popen(
            ["ip", "netns", "exec", self.hosts.ns[nid], sys.executable, "-m", "dynamostore", "node",
             "--config", str(self.config), "--id", nid], stdout=log, stderr=subprocess.STDOUT)

    def kill(self, nid: str, sig: int = signal.SIGKILL) -> None:
        p = self.procs[nid]
        p.send_signal(sig)
        p.wait(timeout=30)

    def stop_all(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def write_cluster(root: Path, hosts: Hosts) -> tuple[Path, str]:
    """The README's steps: a cluster file naming each host, `dynamostore certs cluster`,
    `dynamostore token bootstrap`, and the [security] table."""
    doc: dict[str, Any] = {
        "cluster": {"name": CLUSTER, "secret": uuid.uuid4().hex, "data_dir": "data", "members": [
            {"id": nid, "http_host": a, "http_port": HTTP, "rpc_host": a, "rpc_port": RPC}
            for nid, a in hosts.addr.items()]},
        "quorum": {"r": 2, "w": 2},
        "handoff": {"interval_ms": 100},
        "detector": {"down_after_ms": 600},
    }
    path = root / "cluster.toml"
    path.write_text(tomli_w.dumps(doc))
    assert main(["certs", "cluster", "--config", str(path)]) == 0
    assert main(["token", "bootstrap", "--out", str(root / "admin.token")]) == 0
    token = (root / "admin.token").read_text().strip()
    sha = hashlib.sha256(token.encode()).hexdigest()
    doc["security"] = {"tls": True, "auth": True, "bootstrap_token_sha256": sha}
    path.write_text(tomli_w.dumps(doc))
    return path, token


async def test_three_hosts_with_tls_and_tokens(hosts: Hosts, tmp_path: Path) -> None:
    config, token = write_cluster(tmp_path, hosts)
    ca = tmp_path / "certs" / "ca.crt"
    nodes = Nodes(hosts, config)

    # without TLS and tokens a node refuses its host address, and says what to do
    plain = tmp_path / "plain.toml"
    plain.write_text(re.sub(r"\[security\][^\[]*", "", config.read_text()))
    out = subprocess.run(["ip", "netns", "exec", hosts.ns["n1"], sys.executable, "-m", "dynamostore", "node",
                          "--config", str(plain), "--id", "n1"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "without TLS and client tokens" in out.stderr, out.stderr

    url = {nid: f"https://{a}:{HTTP}" for nid, a in hosts.addr.items()}
    ctx = tls.client_context(ca)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx),
                                    headers={"Authorization": f"Bearer {token}"},
                                    timeout=aiohttp.ClientTimeout(total=10))
    try:
        for nid in hosts.ns:
            nodes.start(nid)

        async def healthy(nid: str) -> bool:
            assert nodes.procs[nid].poll() is None, (tmp_path / f"{nid}.log").read_text()[-3000:]
            try:
                async with session.get(url[nid] + "/health") as r:
                    return r.status == 200
            except (aiohttp.ClientError, asyncio.TimeoutError):
                return False

        async def sees(observer: str, peer: str, up: bool) -> bool:
            async with session.get(url[observer] + "/status") as r:
                doc = await r.json()
            return any(m["id"] == peer and m["liveness"]["up"] == up for m in doc["members"])

        for nid in hosts.ns:
            await wait_for(lambda nid=nid: healthy(nid), 60, f"{nid} to answer on its host address")
        for a in hosts.ns:
            for b in hosts.ns:
                if a != b:
                    await wait_for(lambda a=a, b=b: sees(a, b, True), 20, f"{a} to see {b} up")

        # reads and writes across hosts
        async with session.put(url["n1"] + "/kv/across", data=b"v1", headers={"X-Write-Quorum": "all"}) as r:
            assert r.status == 204
        async with session.get(url["n3"] + "/kv/across", headers={"X-Read-Quorum": "all"}) as r:
            assert r.status == 200 and await r.read() == b"v1"
        async with session.get(url["n2"] + "/status") as r:
            doc = await r.json()
            assert doc["rpc"]["tls"] and set(doc["rpc"]["inbound"]) == {"n1", "n3"}

        # a node is reachable on its host address only: nothing listens on its loopback
        probe = subprocess.run(
            ["ip", "netns", "exec", hosts.ns["n1"], sys.executable, "-c",
             f"import socket; socket.create_connection(('127.0.0.1', {HTTP}), timeout=2)"],
            capture_output=True, text=True, timeout=30)
        assert probe.returncode != 0 and "refused" in probe.stderr.lower()

        # a client without a token is refused; so is plaintext HTTP to the HTTPS port
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as anon:
            for method, path in (("GET", "/kv/across"), ("PUT", "/kv/across"), ("POST", "/admin/remove")):
                async with anon.request(method, url["n2"] + path, data=b"x") as r:
                    assert r.status == 401 and (await r.json())["error"] == "unauthorized"
        reader, writer = await asyncio.open_connection(hosts.addr["n2"], HTTP)
        writer.write(b"GET /kv/across HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"v1" not in await asyncio.wait_for(reader.read(), 20)
        writer.close()

        # a peer without a certificate of this cluster is refused on the RPC port
        foreign = tmp_path / "foreign"
        certs.create_ca(foreign, CLUSTER)
        certs.issue_node(foreign, "n2", [hosts.addr["n2"]])
        ident = lambda pc: tls.node_identity(pc, CLUSTER)  # noqa: E731
        for client in (
            RpcClient("n2", b"x" * 16, connect_timeout=3, identify=ident,
                      ssl=tls.peer_client_context(foreign / "n2.crt", foreign / "n2.key", ca)),
            RpcClient("n2", b"x" * 16, connect_timeout=3, identify=ident,
                      ssl=tls.peer_client_context(foreign / "n2.crt", foreign / "n2.key", foreign / "ca.crt")),
            RpcClient("n2", b"x" * 16, connect_timeout=3),  # plaintext
        ):
            try:
                with pytest.raises(RpcError):
                    await client.call((hosts.addr["n1"], RPC), "kv.get", [b"across", None], timeout=5)
            finally:
                await client.close()

        # kill -9 one host's node: writes go on (W=2), then it comes back with its data and its hints
        nodes.kill("n2")
        await wait_for(lambda: sees("n1", "n2", False), 20, "n1 to see n2 down")
        written = {}
        for i in range(30):
            async with session.put(url[("n1", "n3")[i % 2]] + f"/kv/k{i}", data=f"v{i}".encode()) as r:
                assert r.status == 204, await r.text()
                written[f"k{i}"] = f"v{i}".encode()
        nodes.start("n2")
        await wait_for(lambda: healthy("n2"), 60, "n2 to restart")
        await wait_for(lambda: sees("n1", "n2", True), 20, "n1 to see n2 up again")

        async def hints_delivered() -> bool:
            for nid in ("n1", "n3"):
                async with session.get(url[nid] + "/status") as r:
                    doc = await r.json()
                if any(doc.get("handoff", {}).get("pending", {}).values()):
                    return False
            return True

        await wait_for(hints_delivered, 60, "hints for n2 to be delivered")
        for key, value in written.items():  # every acknowledged write, from the primaries alone
            async with session.get(url["n2"] + f"/kv/{key}",
                                   headers={"X-Read-Quorum": "all", "X-Sloppy-Quorum": "false"}) as r:
                assert r.status == 200 and await r.read() == value, key
    finally:
        await session.close()
        nodes.stop_all()
