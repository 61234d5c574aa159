"""dynamostore.http_server against a real socket: keep-alive, pipelining, 100-continue, HEAD, limits, errors,
the idle timeout, write backpressure and the graceful stop. No node: a small handler stands in for the API.

Path decoding is checked against yarl (what aiohttp's `request.path` gave before), so keys keep their bytes.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import yarl
from hypothesis import given, settings
from hypothesis import strategies as st

from dynamostore.api.server import (
    HttpServer,
    InvalidJSON,
    Request,
    Response,
    encode_response,
    json_response,
    parse_query,
    unquote_path,
)

Reply = tuple[int, dict[str, str], bytes]


async def read_response(reader: asyncio.StreamReader, head: bool = False) -> Reply:
    """One response: status, headers (lower-cased names), body by Content-Length."""
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode().split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = b"" if head else await reader.readexactly(length)
    return status, headers, body


async def at_eof(reader: asyncio.StreamReader, timeout: float = 5.0) -> bool:
    """True when the server closes the connection (EOF or reset) before the deadline."""
    try:
        async with asyncio.timeout(timeout):
            while await reader.read(65536):
                pass
        return True
    except (ConnectionResetError, BrokenPipeError):
        return True


class Echo:
    """A handler that says what it saw, with a few special paths; keeps the order requests arrived in."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.gate = asyncio.Event()

    async def __call__(self, req: Request) -> Response:
        self.seen.append(req.path)
        if req.path == "/wait":
            await self.gate.wait()
        elif req.path == "/slow":
            await asyncio.sleep(0.05)
        elif req.path == "/boom":
            raise RuntimeError("handler bug")
        elif req.path == "/nocontent":
            return Response(status=204, headers={"X-Context": "ctx", "X-Acks": "2"})
        elif req.path == "/big":
            return Response(b"x" * (8 << 20), headers={"Content-Type": "text/plain"})
        elif req.path == "/badheader":
            return Response(b"x", headers={"X-Evil": "a\r\nSet-Cookie: x"})
        elif req.path == "/json":
            return json_response(await req.json())
        return json_response({"method": req.method, "path": req.path, "query": dict(req.query),
                              "body": req.body.decode("utf-8", "replace"), "x": req.headers.get("x-thing"),
                              "length": req.content_length})


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[tuple[HttpServer, Echo]]]]:
    servers: list[HttpServer] = []

    async def start(**kw: Any) -> tuple[HttpServer, Echo]:
        handler = Echo()
        s = HttpServer(handler, body_limit=kw.pop("body_limit", 1000), **kw)
        await s.start("127.0.0.1", 0)
        servers.append(s)
        return s, handler

    yield start
    for s in servers:
        await s.stop()


async def connect(s: HttpServer) -> Conn:
    return await asyncio.open_connection("127.0.0.1", s.port)


def get(path: str, extra: str = "", method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n".encode()


async def request(s: HttpServer, data: bytes, head: bool = False) -> Reply:
    r, w = await connect(s)
    w.write(data)
    try:
        return await read_response(r, head)
    finally:
        w.close()


# --- decoding, like aiohttp's request.path / request.query ------------------------------------------------


@pytest.mark.parametrize("raw,key", [
    ("/kv/a%20b", b"a b"),
    ("/kv/%F0%9F%98%80", "\U0001F600".encode()),
    ("/kv/a%2Fb", b"a/b"),
    ("/kv/%FF", b"%FF"),  # not UTF-8: kept as written, as aiohttp did
    ("/kv/%ff%fe", b"%ff%fe"),
    ("/kv/a%ED%A0%80", b"a%ED%A0%80"),  # an encoded surrogate is not UTF-8 either
    ("/kv/%E2%82", b"%E2%82"),  # truncated sequence
    ("/kv/%25", b"%"),
    ("/kv/%zz%", b"%zz%"),
    ("/kv/a+b", b"a+b"),
])
async def test_key_bytes_decode_as_aiohttp_did(serve: Any, raw: str, key: bytes) -> None:
    s, _ = await serve()
    status, _, body = await request(s, get(raw))
    assert status == 200
    assert json.loads(body)["path"][4:].encode("utf-8", "surrogateescape") == key
    assert yarl.URL.build(path=raw, encoded=True).path[4:].encode("utf-8", "surrogateescape") == key


ESCAPED = st.lists(
    st.one_of(
        st.sampled_from(["a", "/", "+", "%", "~", ".", ";", "%zz", "é"]),
        st.integers(0, 255).map(lambda b: f"%{b:02X}"),
        st.integers(0, 255).map(lambda b: f"%{b:02x}"),
        st.characters(min_codepoint=0x80, max_codepoint=0x10FFFF, exclude_categories=["Cs"]).map(
            lambda c: "".join(f"%{b:02X}" for b in c.encode())),
    ),
    max_size=12,
).map(lambda parts: "/kv/" + "".join(parts))


@settings(max_examples=300, deadline=None)
@given(ESCAPED)
def test_unquote_path_matches_yarl(raw: str) -> None:
    assert unquote_path(raw) == yarl.URL.build(path=raw, encoded=True).path


def test_query_first_value_wins_and_plus_is_space() -> None:
    assert parse_query("r=1&r=2&w&x=a+b&y=%20%41") == {"r": "1", "w": "", "x": "a b", "y": " A"}
    assert parse_query("") == {}


async def test_json_raises_a_value_error_on_bad_json(serve: Any) -> None:
    s, _ = await serve()
    req = Request("POST", "/x", "", {}, True, 3)
    req.body = b"{no"
    with pytest.raises(InvalidJSON, match="not valid JSON"):
        await req.json()
    assert isinstance(InvalidJSON("x"), ValueError)
    status, _, body = await request(s, get("/json", "Content-Length: 9\r\n", "POST") + b'{"a": [1]}'[:9])
    assert status == 500  # the Echo handler does not map it: the server answers 500 JSON
    assert json.loads(body)["error"] == "internal"


# --- responses -------------------------------------------------------------------------------------------


async def test_response_headers_content_length_and_handler_headers(serve: Any) -> None:
    s, _ = await serve()
    status, h, body = await request(s, get("/kv/k?r=2", "X-Thing: one\r\nx-thing: two\r\n"))
    assert status == 200 and h["server"] == "dynamostore" and "date" in h
    assert h["content-type"] == "application/json; charset=utf-8" and int(h["content-length"]) == len(body)
    doc = json.loads(body)
    assert doc["query"] == {"r": "2"} and doc["x"] == "one"  # case-insensitive, first value wins
    status, h, body = await request(s, get("/nocontent"))
    assert status == 204 and h["x-context"] == "ctx" and h["x-acks"] == "2"
    assert "content-length" not in h and body == b""


def test_encode_response_refuses_header_injection() -> None:
    with pytest.raises(ValueError, match="line break"):
        encode_response(Response(b"x", headers={"X-Evil": "a\r\nB: c"}), True, False, False)
    data = encode_response(Response(b"abc"), False, False, False)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n") and data.endswith(b"\r\n\r\nabc")
    assert b"Content-Type: application/octet-stream\r\n" in data and b"Connection: close\r\n" in data


async def test_handler_exception_and_bad_header_answer_500_and_the_connection_keeps_serving(serve: Any) -> None:
    s, _ = await serve()
    r, w = await connect(s)
    for path in ("/boom", "/badheader"):
        w.write(get(path))
        status, _, body = await read_response(r)
        assert status == 500 and json.loads(body) == {"error": "internal",
                                                      "reason": "internal error; see the node's log"}
    w.write(get("/after"))
    assert (await read_response(r))[0] == 200
    w.close()


async def test_head_has_the_get_content_length_and_no_body(serve: Any) -> None:
    s, _ = await serve()
    r, w = await connect(s)
    w.write(get("/k", method="HEAD") + get("/k"))  # pipelined: the GET answer follows the HEAD headers
    status, h, _ = await read_response(r, head=True)
    status2, _, body2 = await read_response(r)
    assert status == status2 == 200
    assert json.loads(body2)["method"] == "GET"
    # the HEAD answer announced the length of its own GET-like body ("HEAD" is as long as "GET" + 1)
    assert int(h["content-length"]) == len(body2) + 1
    w.close()


# --- connection management -------------------------------------------------------------------------------


async def test_keep_alive_and_connection_close(serve: Any) -> None:
    s, _ = await serve()
    r, w = await connect(s)
    for i in range(3):
        w.write(get(f"/k{i}"))
        status, h, _ = await read_response(r)
        assert status == 200 and "connection" not in h
    w.write(get("/last", "Connection: close\r\n"))
    status, h, _ = await read_response(r)
    assert status == 200 and h["connection"] == "close"
    assert await at_eof(r)
    w.close()


async def test_http10_closes_unless_keep_alive_is_asked(serve: Any) -> None:
    s, _ = await serve()
    r, w = await connect(s)
    w.write(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    status, h, _ = await read_response(r)
    assert status == 200 and h["connection"] == "keep-alive"
    w.write(b"GET /b HTTP/1.0\r\n\r\n")
    status, h, _ = await read_response(r)
    assert status == 200 and h["connection"] == "close"
    assert await at_eof(r)
    w.close()


async def test_pipelined_requests_are_answered_in_order(serve: Any) -> None:
    s, handler = await serve()
    r, w = await connect(s)
    paths = ["/slow", "/fast", "/nocontent", "/slow", "/last"]
    w.write(b"".join(get(p) for p in paths) + b"PUT /put HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nbody")
    got = []
    for p in paths:
        status, _, body = await read_response(r)
        got.append(p if status == 204 else json.loads(body)["path"])
    status, _, body = await read_response(r)
    assert got == paths and json.loads(body)["body"] == "body"
    assert handler.seen == [*paths, "/put"]
    w.close()


async def test_expect_100_continue_is_answered_before_the_body_is_sent(serve: Any) -> None:
    s, _ = await serve()
    r, w = await connect(s)
    w.write(b"PUT /kv/k HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    async with asyncio.timeout(5):
        assert await r.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
    w.write(b"hello")
    status, _, body = await read_response(r)
    assert status == 200 and json.loads(body)["body"] == "hello"
    w.close()


async def test_over_limit_content_length_answers_413_without_the_body_and_closes(serve: Any) -> None:
    s, handler = await serve(body_limit=100)
    r, w = await connect(s)
    # Expect: 100-continue makes a client wait: the 413 must come without any body being sent.
    w.write(b"PUT /kv/k HTTP/1.1\r\nHost: t\r\nContent-Length: 101\r\nExpect: 100-continue\r\n\r\n")
    status, h, body = await read_response(r)
    assert status == 413 and h["connection"] == "close"
    assert json.loads(body)["error"] == "too_large" and "101 bytes" in json.loads(body)["reason"]
    assert await at_eof(r)
    assert handler.seen == []
    w.close()


async def test_over_limit_body_sent_anyway_still_reads_413(serve: Any) -> None:
    s, _ = await serve(body_limit=1000)
    r, w = await connect(s)
    w.write(b"PUT /kv/k HTTP/1.1\r\nHost: t\r\nContent-Length: 3000000\r\n\r\n" + b"x" * 3_000_000)
    status, _, _ = await read_response(r)  # the lingering close drains the body instead of resetting
    assert status == 413
    w.close()


async def test_over_limit_chunked_body_answers_413_and_closes(serve: Any) -> None:
    s, handler = await serve(body_limit=100)
    r, w = await connect(s)
    chunk = b"40\r\n" + b"x" * 64 + b"\r\n"
    w.write(b"PUT /kv/k HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk + chunk)
    status, h, _ = await read_response(r)
    assert status == 413 and h["connection"] == "close"
    assert await at_eof(r)
    assert handler.seen == []
    # a chunked body within the limit is read whole
    r, w2 = await connect(s)
    w2.write(b"PUT /kv/k HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk + b"0\r\n\r\n")
    status, _, body = await read_response(r)
    assert status == 200 and json.loads(body)["body"] == "x" * 64 and json.loads(body)["length"] is None
    w.close()
    w2.close()


@pytest.mark.parametrize("data,status", [
    (b"NOT HTTP AT ALL\r\n\r\n", 400),
    (b"GET /a HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 without Host
    (b"GET /a HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
    (b"GET /kv/\xc3\xa9 HTTP/1.1\r\nHost: t\r\n\r\n", 400),  # raw non-ASCII in the target, as aiohttp refused
    (b"GET /a HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", 431),
    (b"GET /a HTTP/1.1\r\nHost: t\r\n" + b"X-Many: aaaaaaaaaaaaaaaaaaaaaaaa\r\n" * 3000 + b"\r\n", 431),
])
async def test_malformed_or_oversized_heads_answer_json_and_close(serve: Any, data: bytes, status: int) -> None:
    s, handler = await serve()
    r, w = await connect(s)
    w.write(get("/first") + data)  # the earlier good request is still answered first
    assert (await read_response(r))[0] == 200
    got, h, body = await read_response(r)
    assert got == status and h["connection"] == "close"
    doc = json.loads(body)
    assert doc["error"] and doc["reason"]
    assert await at_eof(r)
    assert handler.seen == ["/first"]
    w.close()


async def test_idle_keep_alive_connections_are_closed_after_the_timeout(serve: Any) -> None:
    s, _ = await serve(keepalive_timeout=0.3)
    r, w = await connect(s)
    w.write(get("/a"))
    assert (await read_response(r))[0] == 200
    t0 = time.monotonic()
    assert await at_eof(r, timeout=5)
    assert time.monotonic() - t0 >= 0.3
    w.close()


async def test_reading_pauses_while_the_client_does_not_read_its_answers(serve: Any) -> None:
    s, _ = await serve()
    r, w = await connect(s)
    w.write(get("/big"))
    deadline = time.monotonic() + 5
    while not any(c.write_paused and c.read_paused for c in s.connections):
        assert time.monotonic() < deadline, "the server never paused reading"
        await asyncio.sleep(0.01)
    status, _, body = await read_response(r)  # reading the answer lets the server write and read again
    assert status == 200 and len(body) == 8 << 20
    w.write(get("/after"))
    assert (await read_response(r))[0] == 200
    conn = next(iter(s.connections))
    assert not conn.write_paused and not conn.read_paused
    w.close()


async def test_graceful_stop_finishes_in_flight_requests_and_closes_idle_ones(serve: Any) -> None:
    s, handler = await serve()
    idle_r, idle_w = await connect(s)
    idle_w.write(get("/a"))
    assert (await read_response(idle_r))[0] == 200
    busy_r, busy_w = await connect(s)
    busy_w.write(get("/wait"))
    while "/wait" not in handler.seen:
        await asyncio.sleep(0.01)
    port = s.port
    stopping = asyncio.create_task(s.stop())
    assert await at_eof(idle_r)  # the idle connection is closed at once
    with pytest.raises(OSError):  # and nobody new gets in
        await asyncio.open_connection("127.0.0.1", port)
    assert not stopping.done()
    handler.gate.set()  # the in-flight request completes and is answered, with Connection: close
    status, h, _ = await read_response(busy_r)
    assert status == 200 and h["connection"] == "close"
    assert await at_eof(busy_r)
    async with asyncio.timeout(5):
        await stopping
    idle_w.close()
    busy_w.close()


async def test_stop_cuts_a_request_that_outlives_the_shutdown_timeout(serve: Any) -> None:
    s, handler = await serve(shutdown_timeout=0.2)
    r, w = await connect(s)
    w.write(get("/wait"))  # never released
    while "/wait" not in handler.seen:
        await asyncio.sleep(0.01)
    t0 = time.monotonic()
    await s.stop()
    assert time.monotonic() - t0 < 2
    assert await at_eof(r)
    assert not s.connections
    w.close()
