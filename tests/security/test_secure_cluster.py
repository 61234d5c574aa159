"""A real 3-node cluster with TLS and tokens (`dynamostore cluster --tls`'s files): nothing is read or changed
without credentials, tokens made through one node work and are revoked on all of them, and neither a stranger
on the RPC port nor plaintext on either port gets anywhere."""

from __future__ import annotations

import asyncio
import json
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from dynamostore.cli.main import main
from dynamostore.net import wire as w
from dynamostore.net.rpc import RpcClient, RpcError
from dynamostore.security import certs, tls
from tests.harness import Cluster, wait_for

pytestmark = pytest.mark.cluster


async def call(c: Cluster, nid: str, method: str, path: str, token: str | None = None,
               body: Any = None) -> tuple[int, dict[str, Any]]:
    """One request with exactly the credentials given (not the harness session's admin token)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=c.ssl_context())) as s:
        kw: dict[str, Any] = {"json": body} if body is not None else {"data": b"v" if method == "PUT" else None}
        async with s.request(method, c.url(nid) + path, headers=headers, **kw) as r:
            raw = await r.read()
            try:
                doc = json.loads(raw) if raw else {}
            except ValueError:
                doc = {"raw": raw}
            return r.status, doc


async def accepted_everywhere(c: Cluster, token: str, yes: bool) -> bool:
    """Every node lets the token read (yes) or refuses it with 401 (not yes); any other answer, a 503 say,
    is neither and keeps the caller waiting."""
    for nid in c.ids:
        status, _ = await call(c, nid, "GET", "/kv/probe", token)
        if (status in (200, 404)) if yes else status == 401:
            continue
        return False
    return True


async def test_nothing_without_a_token_and_roles_are_enforced(make_cluster: Callable[..., Any]) -> None:
    c: Cluster = await make_cluster(3, tls=True)
    # the admin token of the cluster file works on every node; writes and reads go through TLS between nodes
    status, _, _ = await c.put("n1", "k", b"secret value", {"X-Write-Quorum": "all"})
    assert status == 204
    status, _, body = await c.get("n3", "k", {"X-Read-Quorum": "all"})
    assert status == 200 and body == b"secret value"
    for method, path in (("GET", "/kv/k"), ("PUT", "/kv/k"), ("DELETE", "/kv/k"), ("GET", "/status"),
                         ("GET", "/metrics"), ("GET", "/admin/members"), ("POST", "/admin/remove"),
                         ("GET", "/admin/tokens")):
        status, doc = await call(c, "n2", method, path)
        assert status == 401 and doc["error"] == "unauthorized" and doc["reason"], (method, path, doc)
    assert (await call(c, "n2", "GET", "/status/history"))[0] == 401
    assert (await call(c, "n2", "GET", "/debug/kv/k"))[0] == 401
    assert (await call(c, "n2", "GET", "/health"))[0] == 200
    assert (await call(c, "n2", "GET", "/ui"))[0] == 200  # the console's page: it asks for a token itself

    # a read token made through n1 is accepted by every node once they applied it
    status, made = await call(c, "n1", "POST", "/admin/tokens", c.admin_token, {"name": "reader", "roles": ["read"]})
    assert status == 201 and made["token"].startswith("dst_") and made["roles"] == ["read"]
    reader = made["token"]
    await wait_for(lambda: accepted_everywhere(c, reader, True), 10, "every node to accept the new token")
    status, _ = await call(c, "n3", "GET", "/kv/k", reader)
    assert status == 200
    assert (await call(c, "n3", "GET", "/debug/kv/k", reader))[0] == 200
    for method, path in (("PUT", "/kv/k"), ("DELETE", "/kv/k"), ("POST", "/admin/remove"), ("GET", "/admin/tokens")):
        status, doc = await call(c, "n3", method, path, reader, {"id": "n2"} if method == "POST" else None)
        assert status == 403 and doc["error"] == "forbidden", (method, path, doc)
    status, _, body = await c.get("n1", "k")
    assert body == b"secret value"  # nothing changed

    # the list shows it, never the token; revoking through another node refuses it everywhere
    status, listed = await call(c, "n2", "GET", "/admin/tokens", c.admin_token)
    assert {t["id"] for t in listed["tokens"]} == {"bootstrap", made["id"]}
    assert reader not in json.dumps(listed) and made["token"][-20:] not in json.dumps(listed)
    status, _ = await call(c, "n2", "POST", "/admin/tokens/revoke", c.admin_token, {"id": made["id"]})
    assert status == 200
    await wait_for(lambda: accepted_everywhere(c, reader, False), 10, "every node to refuse the revoked token")
    status, doc = await call(c, "n1", "GET", "/kv/k", reader)
    assert status == 401 and "revoked" in doc["reason"]
    status, doc = await call(c, "n1", "POST", "/admin/tokens/revoke", c.admin_token, {"id": made["id"]})
    assert status == 409 and "already revoked" in doc["reason"]


async def test_a_token_expires(make_cluster: Callable[..., Any]) -> None:
    c: Cluster = await make_cluster(3, tls=True)
    status, made = await call(c, "n1", "POST", "/admin/tokens", c.admin_token,
                              {"name": "short", "roles": ["read", "write"], "ttl_s": 3})
    assert status == 201 and made["expires_at"] == made["created_at"] + 3, made
    await wait_for(lambda: accepted_everywhere(c, made["token"], False), 15, "the token to expire on every node")
    status, doc = await call(c, "n2", "GET", "/kv/k", made["token"])
    assert status == 401 and "expired" in doc["reason"]


async def test_tokens_through_the_command_line(make_cluster: Callable[..., Any], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    c: Cluster = await make_cluster(3, tls=True)
    common = ["--url", c.url("n2"), "--ca", str(c.root / "certs" / "ca.crt"),
              "--token-file", str(c.root / "admin.token")]
    out = tmp_path / "writer.token"
    rc = await asyncio.to_thread(main, ["token", "create", "--role", "write", "--name", "ingest", "--out", str(out),
                                        *common])
    assert rc == 0
    writer = out.read_text().strip()
    await wait_for(lambda: c.healthy("n1"), 5, "n1")
    rc = await asyncio.to_thread(main, ["token", "list", *common])
    assert rc == 0 and "ingest" in capsys.readouterr().out
    rc = await asyncio.to_thread(main, ["token", "list", "--url", c.url("n2"), "--ca", str(c.root / "certs" / "ca.crt"),
                                        "--token-file", str(out)])
    assert rc == 1 and "403" in capsys.readouterr().err  # a write token cannot list tokens
    await wait_for(lambda: _put_ok(c, writer), 10, "the write token to work")
    rc = await asyncio.to_thread(main, ["status", *common])
    assert rc == 0


async def _put_ok(c: Cluster, token: str) -> bool:
    return (await call(c, "n3", "PUT", "/kv/from-writer", token))[0] == 204


async def test_strangers_on_the_rpc_port_and_plaintext_are_refused(make_cluster: Callable[..., Any],
                                                                   tmp_path: Path) -> None:
    c: Cluster = await make_cluster(3, tls=True)
    addr = ("127.0.0.1", c.rpc_port("n1"))
    # a peer with a certificate from another CA (same cluster name, same node id)
    certs.create_ca(tmp_path / "foreign", "dynamostore")
    certs.issue_node(tmp_path / "foreign", "n2", ["127.0.0.1"])
    cert, key = tmp_path / "foreign" / "n2.crt", tmp_path / "foreign" / "n2.key"
    ident = lambda pc: tls.node_identity(pc, "dynamostore")  # noqa: E731
    for ca in (tmp_path / "foreign" / "ca.crt", c.root / "certs" / "ca.crt"):
        stranger = RpcClient("n2", b"x" * 16, ssl=tls.peer_client_context(cert, key, ca), identify=ident,
                             connect_timeout=3)
        try:
            with pytest.raises(RpcError):
                await stranger.call(addr, "kv.get", [b"k", None], timeout=3)
        finally:
            await stranger.close()
    # knowing the cluster secret is not enough without a certificate
    secret = tomllib.loads((c.root / "cluster.toml").read_text())["cluster"]["secret"]
    plain = RpcClient("n2", secret.encode(), connect_timeout=3)
    try:
        with pytest.raises(RpcError):
            await plain.call(addr, "kv.get", [b"k", None], timeout=3)
    finally:
        await plain.close()
    # plaintext HTTP to the HTTPS port: no answer
    reader, writer = await asyncio.open_connection("127.0.0.1", c.http_port("n1"))
    writer.write(b"GET /kv/k HTTP/1.1\r\nHost: x\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), 15)
    assert b"HTTP/1.1 200" not in data and b"secret" not in data
    writer.close()
    # and the cluster is none the worse
    status, _, _ = await c.put("n2", "after", b"ok", {"X-Write-Quorum": "all"})
    assert status == 204
    doc = await c.status("n1")
    assert doc["rpc"]["tls"] and set(doc["rpc"]["inbound"]) == {"n2", "n3"}
    assert w.VERSION in doc["rpc"]["versions"]
