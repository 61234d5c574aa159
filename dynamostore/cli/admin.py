"""`dynamostore admin`: staged membership changes (join, leave, remove, replace, plan, commit, clear)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from dynamostore.cli.http import Credentials
from dynamostore.cli.http import get_json as _get_json
from dynamostore.cli.http import request as _request


def run(args: argparse.Namespace) -> int:
    base = args.url.rstrip("/")
    try:
        creds = Credentials.from_args(args)
    except OSError as exc:
        print(f"dynamostore admin: {exc}", file=sys.stderr)
        return 2
    body: dict[str, Any] | None = None
    if args.op in ("join", "replace"):
        if not args.new:
            print(f"dynamostore admin {args.op}: --new URL of the new node is required", file=sys.stderr)
            return 2
        try:
            st = _get_json(args.new.rstrip("/") + "/status", creds)
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
    try:
        status, _, raw = _request(method, f"{base}/admin/{args.op}", data, {"Content-Type": "application/json"}, creds)
    except OSError as exc:
        print(f"dynamostore admin: cannot reach {base}: {exc}", file=sys.stderr)
        return 1
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
    state = doc.get("state", doc)
    print(json.dumps(state, indent=2))
    for m in state.get("moves", []) if isinstance(state, dict) else []:
        print(f"moving slot {m['partition']}: {m['source']} -> {m['target']}; pending owners "
              f"{', '.join(m['pending_owners']) or '-'}; {len(m['streams'])} streams", file=sys.stderr)
    return 0
