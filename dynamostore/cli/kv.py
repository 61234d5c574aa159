"""`dynamostore kv get|put|delete`: a command-line client of one key, on `dynamostore.client`.

The request goes to a primary of the key (the client reads the ring from the `--url` node) and fails over
to the next node of its preference list. A put first reads the key and writes with that read's context, as
Riak's clients do, so it replaces what is there (siblings included) instead of becoming one more sibling;
`--blind` skips the read, `--context` gives a context read earlier. A delete without `--context` is sent
without one: the node deletes what it reads at R and says how many values that was (404: nothing there).
"""

from __future__ import annotations

import argparse
import sys

from dynamostore.cli.http import Credentials
from dynamostore.client import BadRequest, Client, ClientError, Consistency, Info, NotFound, Object, QuorumError


def _options(args: argparse.Namespace) -> Consistency:
    opts: Consistency = {}
    if args.consistency:
        opts["level"] = args.consistency
    if getattr(args, "r", None):
        opts["r"] = args.r
    if getattr(args, "w", None):
        opts["w"] = args.w
    if args.strict:
        opts["sloppy"] = False
    return opts


def _print_info(info: Info, write: bool) -> None:
    if info.coordinator is not None:
        print(f"X-Coordinator: {info.coordinator}", file=sys.stderr)
    if info.replies is not None:
        print(f"{'X-Acks' if write else 'X-Replies'}: {info.replies}", file=sys.stderr)
    if info.hinted is not None:
        print(f"X-Hinted: {info.hinted}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    opts = _options(args)
    urls = [u.strip() for u in args.url.split(",") if u.strip()]
    try:
        creds = Credentials.from_args(args)  # --token-file and --ca, or the environment's
        tls = creds.ssl_context()
    except OSError as exc:
        print(f"dynamostore kv: {exc}", file=sys.stderr)
        return 2
    try:
        with Client(urls, token=creds.token, ssl=tls) as client:
            if args.op == "get":
                obj = client.get(args.key, **opts)
                if len(obj.siblings) == 1:
                    data = obj.siblings[0].value
                    sys.stdout.buffer.write(data + (b"" if data.endswith(b"\n") else b"\n"))
                else:
                    print(f"{len(obj.siblings)} siblings:")
                    for s in obj.siblings:
                        print(f"  [{s.content_type}] {s.value.decode(errors='replace')}")
                if args.verbose:
                    _print_info(obj.info, write=False)
                if obj.context:
                    print(f"X-Context: {obj.context}", file=sys.stderr)
                return 0
            context: Object | str | None = args.context or None
            if args.op == "put":
                if context is None and not args.blind:
                    context = client.get(args.key, missing_ok=True, **opts)
                body = sys.stdin.buffer.read() if args.value == "-" else args.value.encode()
                res = client.put(args.key, body, context=context, content_type=args.content_type, **opts)
                print("ok")
            else:
                res = client.delete(args.key, context=context, **opts)
                print("ok" if res.deleted is None else f"deleted {res.deleted} value{'s' * (res.deleted != 1)}")
            _print_info(res.info, write=True)
            return 0
    except NotFound as missing:
        print("not found", file=sys.stderr)
        if missing.context:
            print(f"X-Context: {missing.context}", file=sys.stderr)
        return 2
    except (BadRequest, QuorumError) as refused:
        status = refused.status if isinstance(refused, BadRequest) else 503
        print(f"error {status}: {refused.reason}", file=sys.stderr)
        return 1
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ValueError as bad:  # a malformed key or option, refused before anything was sent
        print(f"dynamostore kv: {bad}", file=sys.stderr)
        return 2
