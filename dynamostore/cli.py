"""The `dynamostore` command: cluster, node, kv get|put|delete, status."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from dynamostore.config import ConfigError

DEFAULT_URL = os.environ.get("DYNAMOSTORE_URL", "http://127.0.0.1:8001")


def _run_node(config: Path, node_id: str) -> int:
    from dynamostore.config import load_node_config
    from dynamostore.node import Node

    cfg = load_node_config(config, node_id)
    logging.basicConfig(
        level=cfg.file.log_level,
        format=f"%(asctime)s {node_id} %(levelname)s %(name)s: %(message)s",
    )
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux/macOS
        pass

    async def main() -> None:
        node = Node(cfg)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await node.start()
        await stop.wait()
        await node.stop()

    try:
        asyncio.run(main())
    except OSError as exc:
        print(f"dynamostore node {node_id}: {exc}", file=sys.stderr)
        return 1
    return 0


def _request(method: str, url: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def _kv(args: argparse.Namespace) -> int:
    from urllib.parse import quote

    url = f"{args.url.rstrip('/')}/kv/{quote(args.key, safe='')}"
    headers: dict[str, str] = {}
    if args.context:
        headers["X-Context"] = args.context
    if args.consistency:
        headers["X-Consistency-Level"] = args.consistency
    if getattr(args, "r", None):
        headers["X-Read-Quorum"] = args.r
    if getattr(args, "w", None):
        headers["X-Write-Quorum"] = args.w
    if args.strict:
        headers["X-Sloppy-Quorum"] = "false"
    body: bytes | None = None
    if args.op == "get":
        headers["Accept"] = "application/json"
        status, h, data = _request("GET", url, None, headers)
    elif args.op == "put":
        body = sys.stdin.buffer.read() if args.value == "-" else args.value.encode()
        headers["Content-Type"] = args.content_type
        status, h, data = _request("PUT", url, body, headers)
    else:
        status, h, data = _request("DELETE", url, None, headers)
    ctx = h.get("X-Context")
    info = {k: h[k] for k in ("X-Coordinator", "X-Acks", "X-Replies", "X-Hinted") if k in h}
    if status == 200:
        sys.stdout.buffer.write(data + (b"" if data.endswith(b"\n") else b"\n"))
    elif status == 300:
        doc = json.loads(data)
        print(f"{len(doc['siblings'])} siblings:")
        import base64

        for s in doc["siblings"]:
            print(f"  [{s['content_type']}] {base64.b64decode(s['value']).decode(errors='replace')}")
    elif status == 204:
        print("ok")
    elif status == 404:
        print("not found", file=sys.stderr)
    else:
        try:
            reason = json.loads(data).get("reason", data.decode(errors="replace"))
        except ValueError:
            reason = data.decode(errors="replace")
        print(f"error {status}: {reason}", file=sys.stderr)
        return 1
    if args.verbose or args.op != "get":
        for k, val in info.items():
            print(f"{k}: {val}", file=sys.stderr)
    if ctx:
        print(f"X-Context: {ctx}", file=sys.stderr)
    return 0 if status in (200, 204, 300) else 2


def _status(args: argparse.Namespace) -> int:
    try:
        with urllib.request.urlopen(f"{args.url.rstrip('/')}/status", timeout=5) as r:
            doc: dict[str, Any] = json.loads(r.read())
    except OSError as exc:
        print(f"cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    ring = doc["ring"]
    console.print(f"[bold]{doc['node']}[/bold]  ring epoch {ring['epoch']}, Q={ring['partitions']}, N={ring['n_val']}")
    t = Table("member", "http", "status", "up (this node's view)", "hints pending")
    pending = doc.get("handoff", {}).get("pending", {})
    for m in doc["members"]:
        live = m["liveness"]
        t.add_row(m["id"], m["http"], m["status"], "yes" if live.get("up") else "[red]no[/red]",
                  str(pending.get(m["id"], 0)))
    console.print(t)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dynamostore", description="A Dynamo-style leaderless key-value store.")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cluster", help="run a local cluster of N node processes in the foreground")
    c.add_argument("--nodes", type=int, default=3)
    c.add_argument("--data-dir", type=Path, required=True)
    c.add_argument("--base-port", type=int, default=8001)
    c.add_argument("--settings", type=Path, help="TOML settings applied to every node")
    n = sub.add_parser("node", help="run one node of a cluster")
    n.add_argument("--config", type=Path, required=True, help="the cluster file (DIR/cluster.toml)")
    n.add_argument("--id", required=True, help="this node's id, e.g. n1")
    kv = sub.add_parser("kv", help="client: get, put or delete a key")
    kv.add_argument("op", choices=["get", "put", "delete"])
    kv.add_argument("key")
    kv.add_argument("value", nargs="?", help="the value for put ('-' reads stdin)")
    kv.add_argument("--url", default=DEFAULT_URL)
    kv.add_argument("--context", help="X-Context from a previous read")
    kv.add_argument("--consistency", help="ONE, TWO, THREE, QUORUM or ALL")
    kv.add_argument("-r", help="read quorum")
    kv.add_argument("-w", help="write quorum")
    kv.add_argument("--strict", action="store_true", help="count primary replicas only (no sloppy quorum)")
    kv.add_argument("--content-type", default="text/plain")
    kv.add_argument("-v", "--verbose", action="store_true")
    s = sub.add_parser("status", help="operator view of a node")
    s.add_argument("--url", default=DEFAULT_URL)
    s.add_argument("--json", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.cmd == "cluster":
            from dynamostore.localcluster import run_cluster

            return run_cluster(args.nodes, args.data_dir, args.base_port, args.settings)
        if args.cmd == "node":
            return _run_node(args.config, args.id)
        if args.cmd == "kv":
            if args.op == "put" and args.value is None:
                print("dynamostore kv put: a value is required ('-' reads stdin)", file=sys.stderr)
                return 2
            return _kv(args)
        if args.cmd == "status":
            return _status(args)
    except ConfigError as exc:
        print(f"dynamostore: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 2
