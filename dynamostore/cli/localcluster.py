"""`dynamostore cluster`: run N node processes of a local cluster in the foreground.

Writes DIR/cluster.toml (reused on the next start so the secret and data stay valid), starts
`dynamostore node --config DIR/cluster.toml --id nK` for k = 1..N with logs in DIR/nK.log, waits until each
answers /health/ready (ready for reads, writes and admin changes, not merely up), and stops them all cleanly
(SIGTERM, then SIGKILL after a grace period) on Ctrl-C or SIGTERM. A node that dies is reported, not restarted.

With `--tls` the cluster is secure as one on several machines would be: a CA and node certificates in
DIR/certs (made once, kept on restart), HTTPS and mutual TLS between nodes, and client tokens required, the
first admin token in DIR/admin.token (its hash in the cluster file's `[security]`).
"""

from __future__ import annotations

import os
import random
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import tomli_w

from dynamostore.config import ConfigError, load_cluster_file, parse_settings, read_toml

RPC_PORT_OFFSET = 1000  # node k's internal RPC port is its HTTP port + 1000


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_base_port(nodes: int, spare: int = 0) -> int:
    """A base port P with P..P+nodes+spare-1 and their RPC ports all free right now (tests, benchmarks).

    Chosen below the kernel's ephemeral range (Linux: from 32768): a port in it can be taken between this
    check and the node's bind by the local end of any outgoing connection on the machine."""
    rng = random.Random(os.getpid() ^ time.monotonic_ns())  # not part of any seeded workload
    total = nodes + spare
    low, high = 20000, _ephemeral_low() - RPC_PORT_OFFSET - total
    for _ in range(200):
        base = rng.randrange(low, max(low + 1, high))
        ports = [base + k for k in range(total)] + [base + RPC_PORT_OFFSET + k for k in range(total)]
        if all(_port_free(p) for p in ports):
            return base
    raise RuntimeError("no free port range found")


def cluster_document(nodes: int, base_port: int, settings: dict[str, Any], secret: str,
                     hosts: list[str] | None = None) -> dict[str, Any]:
    members: list[dict[str, Any]] = [
        {"id": f"n{k}", "http_port": base_port + k - 1, "rpc_port": base_port + k - 1 + RPC_PORT_OFFSET}
        for k in range(1, nodes + 1)
    ]
    for m, host in zip(members, hosts or []):  # one address per node (tests cut the network between them)
        m["http_host"] = m["rpc_host"] = host
    doc: dict[str, Any] = dict(settings)
    cluster = dict(doc.pop("cluster", {}))
    cluster.update({"secret": secret, "data_dir": ".", "members": members})
    cluster.setdefault("n_val", min(3, nodes))
    doc["cluster"] = cluster
    q = doc.setdefault("quorum", {})
    n = cluster["n_val"]
    q.setdefault("r", min(2, n))
    q.setdefault("w", min(2, n))
    return doc


def write_cluster_file(data_dir: Path, nodes: int, base_port: int, settings_file: Path | None,
                       hosts: list[str] | None = None, tls: bool = False) -> Path:
    if nodes < 1:
        raise ConfigError("--nodes must be at least 1")
    if not 1 <= base_port <= 65535 - nodes - RPC_PORT_OFFSET:
        raise ConfigError(f"--base-port must leave room for {nodes} HTTP ports and their RPC ports (+{RPC_PORT_OFFSET})")
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "cluster.toml"
    settings: dict[str, Any] = {}
    if settings_file is not None:
        settings = read_toml(settings_file)
        cluster_part = settings.get("cluster", {})
        parse_settings({k: val for k, val in settings.items() if k != "cluster"}, str(settings_file))
        if not isinstance(cluster_part, dict):
            raise ConfigError(f"{settings_file}: [cluster] must be a table")
    secret = secrets.token_hex(24)
    if path.exists():  # a restart keeps the secret and the ring shape the data was written with
        old = read_toml(path).get("cluster", {})
        secret = str(old.get("secret") or secret)
        old_q = old.get("partitions")
        if old_q is not None and settings.get("cluster", {}).get("partitions", old_q) != old_q:
            raise ConfigError(f"{path}: the partition count is fixed for the life of a cluster ({old_q})")
        if old_q is not None:
            settings.setdefault("cluster", {})["partitions"] = old_q
    doc = cluster_document(nodes, base_port, settings, secret, hosts)
    if tls:
        _secure(data_dir, doc, read_toml(path).get("security", {}) if path.exists() else {})
    tmp = path.with_suffix(".tmp")
    tmp.write_text(tomli_w.dumps(doc))
    os.replace(tmp, path)
    load_cluster_file(path)  # validate what we wrote, with field names in any error
    return path


def _secure(data_dir: Path, doc: dict[str, Any], old: dict[str, Any]) -> None:
    """Certificates for every member (a CA first, once) and the bootstrap admin token; [security] on."""
    from dynamostore.cli.security import new_bootstrap_token, write_secret
    from dynamostore.security import certs

    certs_dir = data_dir / "certs"
    if not (certs_dir / "ca.crt").exists():
        certs.create_ca(certs_dir, str(doc["cluster"].get("name", "dynamostore")))
    for m in doc["cluster"]["members"]:
        if not (certs_dir / f"{m['id']}.crt").exists():
            host = m.get("http_host", "127.0.0.1")
            certs.issue_node(certs_dir, m["id"], [host, m.get("rpc_host", host), "localhost"])
    sha = old.get("bootstrap_token_sha256", "")
    token_file = data_dir / "admin.token"
    if not sha or not token_file.exists():
        token, sha = new_bootstrap_token()
        write_secret(token_file, token)
    sec = doc.setdefault("security", {})
    sec.update({"tls": True, "auth": True, "certs_dir": "certs", "bootstrap_token_sha256": sha})


def _health_context(data_dir: Path) -> ssl.SSLContext | None:
    ca = data_dir / "certs" / "ca.crt"
    if not ca.exists() or not read_toml(data_dir / "cluster.toml").get("security", {}).get("tls"):
        return None
    from dynamostore.security.tls import client_context

    return client_context(ca)


def _ready(port: int, ctx: ssl.SSLContext | None = None) -> bool:
    """The node answers /health/ready with 200: it can take reads, writes and admin changes (a 503 is an
    HTTPError, an OSError: not yet)."""
    scheme = "https" if ctx is not None else "http"
    try:
        with urllib.request.urlopen(f"{scheme}://127.0.0.1:{port}/health/ready", timeout=0.5, context=ctx) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def run_cluster(nodes: int, data_dir: Path, base_port: int, settings_file: Path | None, tls: bool = False) -> int:
    data_dir = data_dir.resolve()
    path = write_cluster_file(data_dir, nodes, base_port, settings_file, tls=tls)
    ctx = _health_context(data_dir)
    scheme = "https" if ctx is not None else "http"
    procs: dict[str, subprocess.Popen[bytes]] = {}
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    for k in range(1, nodes + 1):
        nid = f"n{k}"
        log = open(data_dir / f"{nid}.log", "ab")
        procs[nid] = subprocess.Popen(
            [sys.executable, "-m", "dynamostore", "node", "--config", str(path), "--id", nid],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    print(f"dynamostore: starting {nodes} nodes, config {path}", flush=True)
    deadline = time.monotonic() + 30
    pending = {f"n{k}": base_port + k - 1 for k in range(1, nodes + 1)}
    while pending and not stopping and time.monotonic() < deadline:
        for nid, port in list(pending.items()):
            if procs[nid].poll() is not None:
                print(f"  {nid} exited with code {procs[nid].returncode}; see {data_dir / (nid + '.log')}", flush=True)
                pending.pop(nid)
            elif _ready(port, ctx):
                print(f"  {nid}  {scheme}://127.0.0.1:{port}  (pid {procs[nid].pid}, log {data_dir / (nid + '.log')})",
                      flush=True)
                pending.pop(nid)
        time.sleep(0.1)
    if pending and not stopping:
        print(f"dynamostore: nodes not ready after 30 s: {', '.join(pending)} (GET /health/ready says why)",
              flush=True)
    if not stopping and ctx is not None:
        print(f"dynamostore: TLS and tokens on: CA {data_dir / 'certs' / 'ca.crt'}, admin token in "
              f"{data_dir / 'admin.token'}\n  curl --cacert {data_dir / 'certs' / 'ca.crt'} -H \"Authorization: Bearer "
              f"$(cat {data_dir / 'admin.token'})\" https://127.0.0.1:{base_port}/status", flush=True)
    if not stopping:
        print("dynamostore: cluster running; Ctrl-C stops every node", flush=True)
    reported: set[str] = set()
    while not stopping:
        for nid, p in procs.items():
            if p.poll() is not None and nid not in reported:
                reported.add(nid)
                print(f"dynamostore: {nid} (pid {p.pid}) exited with code {p.returncode}; not restarting it "
                      f"(start it again with: dynamostore node --config {path} --id {nid})", flush=True)
        time.sleep(0.2)
    print("dynamostore: stopping nodes", flush=True)
    for p in procs.values():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    grace = time.monotonic() + 15
    for p in procs.values():
        try:
            p.wait(timeout=max(0.1, grace - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    print("dynamostore: all nodes stopped", flush=True)
    return 0
