"""The HTTP listener against slow, silent, greedy and unauthenticated clients, and over TLS: a real socket,
the real HttpServer, the node's gate built from real tokens (api.routes.make_gate). Deadlines are short and
the tests wait on the server's answers or its closing the connection, never on blind sleeps."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from dynamostore.api.routes import make_gate
from dynamostore.api.server import HttpServer, Request, Response, json_response
from dynamostore.security import tls
from dynamostore.security import tokens as tk
from dynamostore.security.authz import Policy
from ring.tokens import ApiToken
from tests.api.test_http_server import at_eof, get, read_response
from tests.security.conftest import Pki

NOW = int(time.time())


class Handler:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, bytes]] = []

    async def __call__(self, req: Request) -> Response:
        self.seen.append((req.method, req.path, req.body))
        if req.path == "/big":
            return Response(b"x" * (16 << 20))
        return json_response({"ok": True})


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[tuple[HttpServer, Handler]]]]:
    servers: list[HttpServer] = []

    async def start(ssl_ctx: ssl.SSLContext | None = None, **kw: Any) -> tuple[HttpServer, Handler]:
        handler = Handler()
        s = HttpServer(handler, body_limit=1 << 20, **kw)
        await s.start("127.0.0.1", 0, ssl=ssl_ctx)
        servers.append(s)
        return s, handler

    yield start
    for s in servers:
        await s.stop()


async def connect(s: HttpServer, ctx: ssl.SSLContext | None = None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", s.port, ssl=ctx, server_hostname="localhost" if ctx else None)


async def wait_until(cond: Callable[[], bool], deadline: float = 15.0) -> None:
    end = time.monotonic() + deadline
    while not cond():
        assert time.monotonic() < end, "condition not reached before the deadline"
        await asyncio.sleep(0.01)


# --- slow and silent clients ---------------------------------------------------------------------------


async def test_two_hundred_half_open_connections_are_closed_at_the_header_timeout(serve: Any) -> None:
    """The issue's reproduction: 200 connections that send half a request (or nothing) no longer stay open."""
    s, handler = await serve(header_timeout=1.0)
    t0 = time.monotonic()
    conns = []
    for i in range(200):
        r, w = await connect(s)
        if i % 2:
            w.write(b"GET /kv/a HTTP/1.1\r\nHost: x\r\nX-Half: ")  # half a head, never finished
        conns.append((r, w))
    for i, (r, w) in enumerate(conns):
        if i % 2:  # a partial head is answered 408 with a reason
            status, _, body = await asyncio.wait_for(read_response(r), 10)
            assert status == 408 and "head" in json.loads(body)["reason"]
        assert await at_eof(r, timeout=10)
        w.close()
    assert time.monotonic() - t0 < 20  # not the 75 s of an idle keep-alive connection, nor forever
    await wait_until(lambda: not s.connections)
    assert s.timed_out == 200 and handler.seen == []


async def test_a_body_that_does_not_arrive_in_time_is_answered_408(serve: Any) -> None:
    s, handler = await serve(body_timeout=0.3)
    r, w = await connect(s)
    w.write(b"PUT /kv/a HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
    status, _, body = await asyncio.wait_for(read_response(r), 5)
    assert status == 408 and "body" in json.loads(body)["reason"]
    assert await at_eof(r)
    assert handler.seen == []
    w.close()


async def test_a_slowloris_trickling_its_head_is_cut_at_the_header_timeout(serve: Any) -> None:
    s, handler = await serve(header_timeout=0.5)
    r, w = await connect(s)
    w.write(b"GET /kv/a HTTP/1.1\r\nHost: x\r\nX-Slow: ")

    async def trickle() -> None:  # a header byte every 50 ms: each arrives, the head never ends
        while True:
            w.write(b"a")
            await asyncio.sleep(0.05)

    dripping = asyncio.create_task(trickle())
    t0 = time.monotonic()
    try:
        status, _, _ = await asyncio.wait_for(read_response(r), 5)
    finally:
        dripping.cancel()
    assert status == 408 and time.monotonic() - t0 < 10 and handler.seen == []
    w.close()


async def test_the_deadline_that_applies_depends_on_what_the_connection_waits_for(serve: Any) -> None:
    """Driven with chosen clock readings (check_timeouts(now)); the sweeper's own deadlines are far away."""
    s, handler = await serve(header_timeout=30, keepalive_timeout=60, body_timeout=45)
    r, w = await connect(s)
    await wait_until(lambda: len(s.connections) == 1)
    conn = next(iter(s.connections))
    conn.check_timeouts(conn.opened + 29)
    assert not conn.discarding and conn.transport is not None  # a new connection has the header timeout
    w.write(get("/kv/a"))
    assert (await read_response(r))[0] == 200
    idle = conn.last_active
    conn.check_timeouts(idle + 59)  # idle between requests: the keep-alive timeout, not the header timeout
    w.write(b"PUT /kv/b HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
    await wait_until(lambda: not conn.in_head)
    conn.check_timeouts(conn.body_since + 44)  # a body on its way: the body timeout
    w.write(b"defghij")
    assert (await read_response(r))[0] == 200
    conn.check_timeouts(conn.last_active + 61)
    assert await at_eof(r, timeout=5)  # idle past the keep-alive timeout: closed
    assert [p for _, p, _ in handler.seen] == ["/kv/a", "/kv/b"] and s.timed_out == 1
    w.close()


async def test_a_client_that_does_not_read_its_answers_is_cut(serve: Any) -> None:
    s, _ = await serve(keepalive_timeout=0.5)
    r, w = await connect(s)
    w.write(get("/big"))  # 16 MiB it never reads: the answer waits in the server's buffers
    await wait_until(lambda: any(c.write_paused for c in s.connections))
    await wait_until(lambda: not s.connections, deadline=10)
    assert s.timed_out == 1
    w.close()


async def test_connections_over_the_cap_are_answered_503(serve: Any) -> None:
    s, handler = await serve(max_connections=2)
    held = [await connect(s) for _ in range(2)]
    await wait_until(lambda: len(s.connections) == 2)
    r, w = await connect(s)
    status, h, body = await asyncio.wait_for(read_response(r), 5)
    assert status == 503 and json.loads(body)["error"] == "overloaded" and h["connection"] == "close"
    assert await at_eof(r)
    w.close()
    hr, hw = held[0]
    hw.write(get("/kv/a"))  # the ones inside the cap keep working
    assert (await read_response(hr))[0] == 200
    assert s.refused == 1 and len(s.connections) == 2
    for _, hw in held:
        hw.close()


# --- the gate: tokens and roles, decided from the head -----------------------------------------------


def tokens_table() -> tuple[dict[str, ApiToken], dict[str, str]]:
    table: dict[str, ApiToken] = {}
    plain: dict[str, str] = {}
    for tid, roles, expires in (("reader", ["read"], None), ("writer", ["write"], None),
                                ("admin1", ["admin"], None), ("old", ["admin"], NOW - 10)):
        token, rec = tk.make_token(tid, tid.encode() * 8, name=tid, roles=roles, created_at=NOW - 100,
                                   expires_at=expires)
        table[tid], plain[tid] = rec, token
    token, rec = tk.make_token("gone", b"g" * 32, name="gone", roles=["admin"], created_at=NOW - 100)
    table["gone"] = ApiToken(rec.id, rec.name, rec.roles, rec.sha256, rec.created_at, None, NOW - 5)
    plain["gone"] = token
    return table, plain


@pytest.fixture
async def gated(serve: Any) -> tuple[HttpServer, Handler, dict[str, str], list[int]]:
    table, plain = tokens_table()
    recorded: list[int] = []
    gate = make_gate(Policy(), lambda: table, lambda req, status, t: recorded.append(status))
    s, handler = await serve(gate=gate)
    return s, handler, plain, recorded


def auth(token: str) -> str:
    return f"Authorization: Bearer {token}\r\n"


@pytest.mark.parametrize("who, method, path, status, reason", [
    (None, "GET", "/kv/a", 401, "needs a token"),
    ("reader", "PUT", "/kv/a", 403, "needs write"),
    ("writer", "GET", "/kv/a", 403, "needs read"),
    ("writer", "PUT", "/kv/a?returnbody=true", 403, "needs read, write"),
    ("reader", "POST", "/admin/remove", 403, "needs admin"),
    ("writer", "GET", "/admin/tokens", 403, "needs admin"),
    ("old", "GET", "/kv/a", 401, "expired"),
    ("gone", "GET", "/kv/a", 401, "revoked"),
    ("bogus", "GET", "/kv/a", 401, "unknown or invalid"),
])
async def test_refusals_are_401_or_403_with_a_json_reason(gated: Any, who: str | None, method: str, path: str,
                                                           status: int, reason: str) -> None:
    s, handler, plain, recorded = gated
    r, w = await connect(s)
    header = auth(plain.get(who, "dst_bogus_" + "A" * 43)) if who else ""
    w.write(get(path, header, method))
    got, h, body = await read_response(r)
    doc = json.loads(body)
    assert got == status and reason in doc["reason"], doc
    assert doc["error"] == ("unauthorized" if status == 401 else "forbidden")
    assert (status == 401) == ("www-authenticate" in h)
    assert handler.seen == [] and recorded == [status]
    w.write(get("/health"))  # a refusal without a body keeps the connection
    assert (await read_response(r))[0] == 200
    w.close()


async def test_allowed_requests_and_open_endpoints_pass(gated: Any) -> None:
    s, handler, plain, _ = gated
    r, w = await connect(s)
    for who, method, path in (("reader", "GET", "/kv/a"), ("writer", "PUT", "/kv/a"), ("admin1", "GET", "/kv/a"),
                              ("admin1", "POST", "/admin/remove"), ("reader", "GET", "/status"),
                              (None, "GET", "/health"), (None, "GET", "/openapi.json")):
        w.write(get(path, auth(plain[who]) if who else "", method))
        assert (await read_response(r))[0] == 200, (who, method, path)
    assert len(handler.seen) == 7
    w.close()


async def test_an_unauthenticated_body_is_never_read(gated: Any) -> None:
    """A refused request with a body is answered from its head (no 100-continue, no body read) and closed."""
    s, handler, _, _ = gated
    r, w = await connect(s)
    w.write(b"PUT /kv/a HTTP/1.1\r\nHost: x\r\nContent-Length: 900000\r\nExpect: 100-continue\r\n\r\n")
    status, h, _ = await read_response(r)
    assert status == 401 and h["connection"] == "close"
    assert await at_eof(r)
    assert handler.seen == []
    w.close()


# --- TLS ------------------------------------------------------------------------------------------------


async def test_https_and_plaintext_to_the_tls_port(serve: Any, pki: Pki) -> None:
    cert, key = pki.cert("n1")
    s, handler = await serve(ssl_ctx=tls.https_server_context(cert, key))
    r, w = await connect(s, tls.client_context(pki.ca))  # verifies the chain and the name (localhost)
    w.write(get("/kv/a"))
    assert (await read_response(r))[0] == 200
    w.close()
    r, w = await connect(s)  # plaintext HTTP to the TLS port: no answer, the connection is closed
    w.write(get("/kv/b"))
    assert await at_eof(r) and r.at_eof()
    w.close()
    assert [p for _, p, _ in handler.seen] == ["/kv/a"]


async def test_a_client_that_never_finishes_the_tls_handshake_is_dropped(serve: Any, pki: Pki) -> None:
    cert, key = pki.cert("n1")
    s, _ = await serve(ssl_ctx=tls.https_server_context(cert, key), header_timeout=0.3)
    r, w = await connect(s)  # TCP only: no ClientHello
    t0 = time.monotonic()
    assert await at_eof(r, timeout=20)
    assert time.monotonic() - t0 < 15  # the header timeout bounds the handshake (asyncio's default is 60 s)
    w.close()
