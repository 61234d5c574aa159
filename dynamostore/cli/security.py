"""`dynamostore certs` (the cluster's CA and node certificates) and `dynamostore token` (client API tokens).

    dynamostore certs cluster --config cluster.toml        CA (if none yet) + a certificate for every member
    dynamostore certs ca --dir certs [--name CLUSTER]     a new CA
    dynamostore certs node --dir certs --id n4 --host 10.0.0.4 [--host n4.example]   one more node
    dynamostore certs show certs/n1.crt
    dynamostore token bootstrap --out admin.token         the first admin token; prints the cluster file line
    dynamostore token create --role read --role write [--name NAME] [--ttl 30d]
    dynamostore token list | revoke ID
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from dynamostore.cli.http import Credentials, CredentialsError, request
from dynamostore.config import load_cluster_file
from dynamostore.security import certs
from dynamostore.security import tokens as tk


def add_client_options(p: argparse.ArgumentParser) -> None:
    """--ca and --token-file for the commands that talk to a node (they also read DYNAMOSTORE_CA,
    DYNAMOSTORE_TOKEN_FILE and DYNAMOSTORE_TOKEN)."""
    p.add_argument("--ca", help="the cluster CA certificate, to verify an https:// node (env DYNAMOSTORE_CA)")
    p.add_argument("--token-file", help="a file holding the API token to send (env DYNAMOSTORE_TOKEN_FILE, "
                                        "or the token itself in DYNAMOSTORE_TOKEN)")


def add_parsers(sub: argparse._SubParsersAction, default_url: str) -> None:  # type: ignore[type-arg]
    c = sub.add_parser("certs", help="the cluster CA and node certificates (TLS)")
    csub = c.add_subparsers(dest="certs_op", required=True)
    cl = csub.add_parser("cluster", help="a CA (unless there is one) and a certificate for every member of a cluster file")
    cl.add_argument("--config", type=Path, required=True, help="the cluster file")
    cl.add_argument("--dir", type=Path, help="where to write them (default: the cluster file's [security] certs_dir)")
    cl.add_argument("--host", action="append", default=[], help="one more name or address for every node's certificate")
    ca = csub.add_parser("ca", help="a new certificate authority")
    ca.add_argument("--dir", type=Path, required=True)
    ca.add_argument("--name", default="dynamostore", help="the cluster's name ([cluster] name)")
    ca.add_argument("--days", type=int, default=certs.CA_DAYS)
    ca.add_argument("--force", action="store_true", help="replace an existing CA (its certificates stop working)")
    nd = csub.add_parser("node", help="a certificate for one node, signed by the CA in --dir")
    nd.add_argument("--dir", type=Path, required=True)
    nd.add_argument("--id", required=True, help="the node id")
    nd.add_argument("--host", action="append", required=True, help="an address or name the node is reached at")
    nd.add_argument("--days", type=int, default=certs.NODE_DAYS)
    sh = csub.add_parser("show", help="subject, names and validity of a certificate")
    sh.add_argument("file", type=Path)
    t = sub.add_parser("token", help="client API tokens: bootstrap, create, list, revoke")
    tsub = t.add_subparsers(dest="token_op", required=True)
    b = tsub.add_parser("bootstrap", help="make the first admin token (for the cluster file) without a running node")
    b.add_argument("--out", type=Path, required=True, help="the file to write the token to (mode 0600)")
    cr = tsub.add_parser("create", help="a new token (shown once)")
    cr.add_argument("--role", action="append", required=True, help="read, write or admin (repeat, or a,b)")
    cr.add_argument("--name", default="", help="what it is for")
    cr.add_argument("--ttl", help="expires after this long: 3600, 90m, 12h, 30d (default: never)")
    cr.add_argument("--out", type=Path, help="write the token to this file (mode 0600) instead of printing it")
    ls = tsub.add_parser("list", help="every token: id, name, roles, state (never the tokens themselves)")
    rv = tsub.add_parser("revoke", help="revoke a token: refused by every node from then on")
    rv.add_argument("id")
    for p in (cr, ls, rv):
        p.add_argument("--url", default=default_url, help="any node of the cluster")
        add_client_options(p)


def run(args: argparse.Namespace) -> int:
    try:
        if args.cmd == "certs":
            return _certs(args)
        return _token(args)
    except (certs.CertError, tk.TokenError) as exc:
        print(f"dynamostore {args.cmd}: {exc}", file=sys.stderr)
        return 2


# --- certs -------------------------------------------------------------------------------------------------


def _certs(args: argparse.Namespace) -> int:
    op = args.certs_op
    if op == "ca":
        issued = certs.create_ca(args.dir, args.name, days=args.days, force=args.force)
        print(f"CA for cluster {args.name!r}: {issued.cert} (key {issued.key}: keep it off the nodes)")
        return 0
    if op == "node":
        issued = certs.issue_node(args.dir, args.id, args.host, days=args.days)
        print(f"{args.id}: {issued.cert}, {issued.key}")
        return 0
    if op == "show":
        print(json.dumps(certs.describe(args.file), indent=2))
        return 0
    cf = load_cluster_file(args.config)
    out = args.dir or _certs_dir(args.config, cf.security.certs_dir)
    name = cf.cluster.name
    if not (out / "ca.crt").exists():
        certs.create_ca(out, name)
        print(f"new CA for cluster {name!r}: {out / 'ca.crt'} (key {out / 'ca.key'}: keep it off the nodes)")
    else:
        ca_cert, _ = certs.load_ca(out)
        if certs.cluster_of(ca_cert) != name:
            raise certs.CertError(f"the CA in {out} is for cluster {certs.cluster_of(ca_cert)!r}, "
                                  f"the cluster file names {name!r}")
    for m in cf.cluster.members:
        hosts = [m.http_host, m.rpc_host, *args.host]
        if any(h in ("127.0.0.1", "::1", "localhost") for h in hosts):
            hosts.append("localhost")
        issued = certs.issue_node(out, m.id, hosts)
        print(f"  {m.id}: {issued.cert} for {', '.join(dict.fromkeys(h for h in hosts if h not in ('0.0.0.0', '::')))}")
    print(f"copy ca.crt and each node's <id>.crt and <id>.key to its host ({out} next to the cluster file, "
          "or set [security] certs_dir)")
    return 0


def _certs_dir(config: Path, certs_dir: str) -> Path:
    p = Path(certs_dir)
    return p if p.is_absolute() else config.parent / p


# --- tokens ------------------------------------------------------------------------------------------------


def write_secret(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")


def new_bootstrap_token() -> tuple[str, str]:
    """A fresh bootstrap admin token and the SHA-256 (hex) the cluster file names it by."""
    token = tk.format_token(tk.BOOTSTRAP_ID, secrets.token_bytes(tk.SECRET_BYTES))
    return token, hashlib.sha256(token.encode()).hexdigest()


def parse_ttl(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*([smhd]?)\s*", text)
    if not m:
        raise tk.TokenError(f"--ttl {text!r}: a number of seconds, or with s, m, h or d (30d)")
    return int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def _token(args: argparse.Namespace) -> int:
    op = args.token_op
    if op == "bootstrap":
        if args.out.exists():
            raise tk.TokenError(f"{args.out} exists: it may hold the cluster's admin token; remove it first")
        token, sha = new_bootstrap_token()
        write_secret(args.out, token)
        print(f"admin token written to {args.out}; put its hash in the cluster file:\n\n[security]\n"
              f'bootstrap_token_sha256 = "{sha}"')
        return 0
    base = args.url.rstrip("/")
    creds = Credentials.from_args(args)
    if op == "create":
        doc: dict[str, object] = {"name": args.name, "roles": list(tk.parse_roles(args.role))}
        if args.ttl:
            doc["ttl_s"] = parse_ttl(args.ttl)
        status, body = _call("POST", f"{base}/admin/tokens", doc, creds)
        if status != 201:
            return _refused(status, body)
        if args.out:
            write_secret(args.out, str(body["token"]))
            print(f"token {body['id']} ({', '.join(body['roles'])}) written to {args.out}")
        else:
            print(body["token"])
            print(f"token {body['id']} ({', '.join(body['roles'])}): shown once, store it now", file=sys.stderr)
        return 0
    if op == "list":
        status, body = _call("GET", f"{base}/admin/tokens", None, creds)
        if status != 200:
            return _refused(status, body)
        print(f"{'id':<14}{'state':<9}{'roles':<20}{'expires':<22}name")
        for t in body["tokens"]:
            exp = t["expires_at"]
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(exp)) + "Z" if exp else "never"
            print(f"{t['id']:<14}{t['state']:<9}{','.join(t['roles']):<20}{when:<22}{t['name']}")
        return 0
    status, body = _call("POST", f"{base}/admin/tokens/revoke", {"id": args.id}, creds)
    if status != 200:
        return _refused(status, body)
    print(f"token {args.id} revoked")
    return 0


def _call(method: str, url: str, doc: dict[str, object] | None, creds: Credentials) -> tuple[int, dict[str, Any]]:
    data = json.dumps(doc).encode() if doc is not None else None
    try:
        status, _, raw = request(method, url, data, {"Content-Type": "application/json"}, creds=creds)
    except CredentialsError as exc:
        raise tk.TokenError(str(exc)) from exc
    except OSError as exc:
        raise tk.TokenError(f"cannot reach {url}: {exc}") from exc
    try:
        body = json.loads(raw)
    except ValueError:
        body = {"reason": raw.decode(errors="replace")}
    return status, body if isinstance(body, dict) else {"reason": body}


def _refused(status: int, body: dict[str, Any]) -> int:
    print(f"refused ({status}): {body.get('reason', body)}", file=sys.stderr)
    return 1
