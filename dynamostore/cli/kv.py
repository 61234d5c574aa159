"""`dynamostore kv get|put|delete`: a command-line client of one key."""

from __future__ import annotations

import argparse
import json
import sys

from dynamostore.cli.http import request as _request


def run(args: argparse.Namespace) -> int:
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
