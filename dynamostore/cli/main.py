"""The `dynamostore` command: argument parsing and dispatch to one module per command group."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from dynamostore.cli.security import add_client_options
from dynamostore.cli.security import add_parsers as add_security_parsers
from dynamostore.config import ConfigError

DEFAULT_URL = os.environ.get("DYNAMOSTORE_URL", "http://127.0.0.1:8001")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dynamostore", description="A Dynamo-style leaderless key-value store.")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cluster", help="run a local cluster of N node processes in the foreground")
    c.add_argument("--nodes", type=int, default=3)
    c.add_argument("--data-dir", type=Path, required=True)
    c.add_argument("--base-port", type=int, default=8001)
    c.add_argument("--settings", type=Path, help="TOML settings applied to every node")
    c.add_argument("--tls", action="store_true",
                   help="HTTPS, mutual TLS between nodes and client tokens: certificates in DIR/certs, the admin "
                        "token in DIR/admin.token")
    n = sub.add_parser("node", help="run one node of a cluster")
    n.add_argument("--config", type=Path, required=True, help="the cluster file (DIR/cluster.toml)")
    n.add_argument("--id", required=True, help="this node's id, e.g. n1")
    n.add_argument("--http-port", type=int, help="for a new node joining a running cluster: its HTTP port")
    n.add_argument("--rpc-port", type=int, help="for a new node joining a running cluster: its RPC port")
    n.add_argument("--host", default="127.0.0.1", help="for a new node: the address it listens on")
    n.add_argument("--insecure", action="store_true",
                   help="allow listening on a non-loopback address without TLS and client tokens")
    a = sub.add_parser("admin", help="membership: join, leave, remove, replace, plan, commit, clear, members")
    a.add_argument("op", choices=["members", "join", "leave", "remove", "replace", "plan", "commit", "clear"])
    a.add_argument("node", nargs="?", help="leave/remove: the node id; replace: the old node id")
    a.add_argument("--url", default=DEFAULT_URL, help="any member of the cluster")
    a.add_argument("--new", help="join/replace: the URL of the new node (it tells its id and addresses)")
    add_client_options(a)
    kv = sub.add_parser("kv", help="client: get, put or delete a key")
    kv.add_argument("op", choices=["get", "put", "delete"])
    kv.add_argument("key")
    kv.add_argument("value", nargs="?", help="the value for put ('-' reads stdin)")
    kv.add_argument("--url", default=DEFAULT_URL,
                    help="a node to learn the ring from (comma-separated for several); requests go to the key's primaries")
    kv.add_argument("--context", help="X-Context from a previous read (default for put: read it first; for "
                                      "delete: the node deletes what it reads)")
    kv.add_argument("--blind", action="store_true",
                    help="put without reading first: the write is concurrent with what is stored")
    kv.add_argument("--consistency", help="ONE, TWO, THREE, QUORUM or ALL")
    kv.add_argument("-r", help="read quorum")
    kv.add_argument("-w", help="write quorum")
    kv.add_argument("--strict", action="store_true", help="count primary replicas only (no sloppy quorum)")
    kv.add_argument("--content-type", default="text/plain")
    kv.add_argument("-v", "--verbose", action="store_true")
    add_client_options(kv)
    s = sub.add_parser("status", help="operator view of a node")
    s.add_argument("--url", default=DEFAULT_URL)
    s.add_argument("--json", action="store_true")
    add_client_options(s)
    add_security_parsers(sub, DEFAULT_URL)
    from dynamostore.native import add_parser as add_native_parser

    add_native_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.cmd == "cluster":
            from dynamostore.cli.localcluster import run_cluster

            return run_cluster(args.nodes, args.data_dir, args.base_port, args.settings, tls=args.tls)
        if args.cmd in ("certs", "token"):
            from dynamostore.cli import security

            return security.run(args)
        if args.cmd == "node":
            from dynamostore.cli.node import run_node

            return run_node(args)
        if args.cmd == "kv":
            if args.op == "put" and args.value is None:
                print("dynamostore kv put: a value is required ('-' reads stdin)", file=sys.stderr)
                return 2
            from dynamostore.cli import kv

            return kv.run(args)
        if args.cmd == "status":
            from dynamostore.cli import status

            return status.run(args)
        if args.cmd == "admin":
            from dynamostore.cli import admin

            return admin.run(args)
        if args.cmd == "native":
            from dynamostore.native import run as run_native

            return run_native(args)
    except ConfigError as exc:
        print(f"dynamostore: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 2
