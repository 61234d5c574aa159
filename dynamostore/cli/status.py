"""`dynamostore status`: an operator's view of one node (members, liveness, hints)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from dynamostore.cli.http import Credentials, CredentialsError, Refused, get_json


def run(args: argparse.Namespace) -> int:
    try:
        doc: dict[str, Any] = get_json(f"{args.url.rstrip('/')}/status", Credentials.from_args(args))
    except (Refused, CredentialsError) as exc:
        print(f"dynamostore status: {exc}", file=sys.stderr)
        return 1
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
    tr = doc.get("transfers", {})
    if tr.get("moves"):
        console.print(f"[bold]{tr['pending']} partition moves pending[/bold] (pending owners serve no reads yet)")
        mt = Table("slot", "from", "to", "pending owners", "streams (key partition: from -> to)")
        for m in tr["moves"]:
            streams = ", ".join(f"{k}: {a} -> {b}" for k, a, b in m["streams"]) or "-"
            mt.add_row(str(m["partition"]), m["source"], m["target"], ", ".join(m["pending_owners"]), streams)
        console.print(mt)
    return 0
