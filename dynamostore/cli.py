"""The `dynamostore` command: cluster, node, kv get|put|delete, status."""

from __future__ import annotations

import argparse
import asyncio
import gc
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


def _run_node(args: argparse.Namespace) -> int:
    from dynamostore.config import load_node_config
    from dynamostore.node import Node

    node_id = args.id
    cfg = load_node_config(args.config, node_id, http_port=args.http_port, rpc_port=args.rpc_port, host=args.host)
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
        _settle_heap()
        await stop.wait()
        try:
            # http cleanup waits for requests in flight; bound the whole stop so SIGTERM always ends us
            await asyncio.wait_for(node.stop(), 12.0)
        except asyncio.TimeoutError:
            logging.getLogger("dynamostore.node").error("stop timed out in step %r; exiting anyway", node.stop_step)

    try:
        asyncio.run(main())
    except OSError as exc:
        print(f"dynamostore node {node_id}: {exc}", file=sys.stderr)
        return 1
    return 0


def _settle_heap() -> None:
    """After start-up: move everything allocated so far (config, ring, Merkle trees, caches) out of the cyclic
    garbage collector's reach, so its full collections stop re-traversing them (py-spy showed the collector at
    ~9% of a coordinator's CPU under load), and collect the young generation every 10,000 allocations
    instead of 700. Requests leave no reference cycles (tests/test_coordinator.py checks it), so a young
    collection finds only the objects of requests in flight: fewer of them cost less CPU and each stays short.
    Measured with bench/throughput.py: 5-10% less CPU per put and per get, p99 unchanged. (Raised thresholds
    were tried once before, while every request still left a cycle: then each collection had thousands of
    dead objects to trace, and the p99 of gets went from 15 to 64 ms; docs/performance.md.)"""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


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
    if args.op != "get" and not args.context and not args.blind:
        # Like Riak's clients: read first and write with that context, so the write replaces what is
        # there (siblings included) instead of becoming one more sibling. --blind skips the read.
        read_headers = {k: v for k, v in headers.items() if k != "X-Write-Quorum"}
        _, rh, _ = _request("GET", url, None, {**read_headers, "Accept": "application/json"})
        if rh.get("X-Context"):
            headers["X-Context"] = rh["X-Context"]
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
    t = Table("member", "http", "status", "up (this node's view)", "hints held here")
    pending = doc.get("handoff", {}).get("pending", {})
    for m in doc["members"]:
        live = m["liveness"]
        t.add_row(m["id"], m["http"], m["status"], "yes" if live.get("up") else "[red]no[/red]",
                  str(pending.get(m["id"], 0)))
    console.print(t)
    return 0


def _get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as r:
        doc: dict[str, Any] = json.loads(r.read())
        return doc


def _admin(args: argparse.Namespace) -> int:
    base = args.url.rstrip("/")
    body: dict[str, Any] | None = None
    if args.op in ("join", "replace"):
        if not args.new:
            print(f"dynamostore admin {args.op}: --new URL of the new node is required", file=sys.stderr)
            return 2
        try:
            st = _get_json(args.new.rstrip("/") + "/status")
        except OSError as exc:
            print(f"cannot reach the new node at {args.new}: {exc}", file=sys.stderr)
            return 1
        me = next(m for m in st["members"] if m["id"] == st["node"])
        http_host, http_port = me["http"].rsplit(":", 1)
        rpc_host, rpc_port = me["rpc"].rsplit(":", 1)
        member = {"id": st["node"], "http_host": http_host, "http_port": int(http_port),
                  "rpc_host": rpc_host, "rpc_port": int(rpc_port)}
        body = member if args.op == "join" else {"old": args.node, "new": member}
    elif args.op in ("leave", "remove"):
        if not args.node:
            print(f"dynamostore admin {args.op}: the node id is required", file=sys.stderr)
            return 2
        body = {"id": args.node}
    elif args.op in ("commit", "clear"):
        body = {}
    method = "GET" if body is None else "POST"
    data = None if body is None else json.dumps(body).encode()
    status, _, raw = _request(method, f"{base}/admin/{args.op}", data, {"Content-Type": "application/json"})
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = {"reason": raw.decode(errors="replace")}
    if status != 200:
        print(f"refused ({status}): {doc.get('reason', doc)}", file=sys.stderr)
        return 1
    if args.op == "plan":
        print(f"epoch {doc['epoch']}; staged: {', '.join(c['change'] + ' ' + str(c.get('member') or c.get('id')) for c in doc['changes']) or 'nothing'}")
        for src, targets in doc["moves"].items():
            for dst, parts in targets.items():
                print(f"  {src} -> {dst}: {len(parts)} partitions {parts}")
        for e in doc["errors"]:
            print(f"  cannot commit: {e}")
        return 0 if not doc["errors"] else 1
    print(json.dumps(doc.get("state", doc), indent=2))
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
    n.add_argument("--http-port", type=int, help="for a new node joining a running cluster: its HTTP port")
    n.add_argument("--rpc-port", type=int, help="for a new node joining a running cluster: its RPC port")
    n.add_argument("--host", default="127.0.0.1", help="for a new node: the address it listens on")
    a = sub.add_parser("admin", help="membership: join, leave, remove, replace, plan, commit, clear, members")
    a.add_argument("op", choices=["members", "join", "leave", "remove", "replace", "plan", "commit", "clear"])
    a.add_argument("node", nargs="?", help="leave/remove: the node id; replace: the old node id")
    a.add_argument("--url", default=DEFAULT_URL, help="any member of the cluster")
    a.add_argument("--new", help="join/replace: the URL of the new node (it tells its id and addresses)")
    kv = sub.add_parser("kv", help="client: get, put or delete a key")
    kv.add_argument("op", choices=["get", "put", "delete"])
    kv.add_argument("key")
    kv.add_argument("value", nargs="?", help="the value for put ('-' reads stdin)")
    kv.add_argument("--url", default=DEFAULT_URL)
    kv.add_argument("--context", help="X-Context from a previous read (default for put/delete: read it first)")
    kv.add_argument("--blind", action="store_true",
                    help="put/delete without reading first: the write is concurrent with what is stored")
    kv.add_argument("--consistency", help="ONE, TWO, THREE, QUORUM or ALL")
    kv.add_argument("-r", help="read quorum")
    kv.add_argument("-w", help="write quorum")
    kv.add_argument("--strict", action="store_true", help="count primary replicas only (no sloppy quorum)")
    kv.add_argument("--content-type", default="text/plain")
    kv.add_argument("-v", "--verbose", action="store_true")
    s = sub.add_parser("status", help="operator view of a node")
    s.add_argument("--url", default=DEFAULT_URL)
    s.add_argument("--json", action="store_true")
    from dynamostore.bench.cli import add_parser as add_bench_parser
    from dynamostore.native import add_parser as add_native_parser

    add_bench_parser(sub)
    add_native_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.cmd == "cluster":
            from dynamostore.localcluster import run_cluster

            return run_cluster(args.nodes, args.data_dir, args.base_port, args.settings)
        if args.cmd == "node":
            return _run_node(args)
        if args.cmd == "kv":
            if args.op == "put" and args.value is None:
                print("dynamostore kv put: a value is required ('-' reads stdin)", file=sys.stderr)
                return 2
            return _kv(args)
        if args.cmd == "status":
            return _status(args)
        if args.cmd == "admin":
            return _admin(args)
        if args.cmd == "bench":
            from dynamostore.bench.cli import run as run_bench

            return run_bench(args)
        if args.cmd == "native":
            from dynamostore.native import run as run_native

            return run_native(args)
    except ConfigError as exc:
        print(f"dynamostore: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 2
