"""A lean HTTP/1.1 server for the node's client API: httptools (llhttp) parses, this module does the rest.

One `_Connection` (an `asyncio.Protocol`) per socket owns the connection state: requests are read whole
(body capped per route) before the handler runs, handled one at a time and answered in order (pipelining),
with keep-alive, `Expect: 100-continue`, HEAD, an idle timeout, write backpressure and a graceful stop.
Responses always carry Content-Length and are written as one bytes object (status line and headers built
with a single join/encode): no multidicts, no URL objects, nothing per request that the handler doesn't use.

Protocol errors answer JSON like the API does ({"error", "reason"}): 400 for a malformed request, 431 for a
header section over `head_limit`, 413 (from the `too_large` hook) for a body over the route's limit; each
closes the connection after a short lingering half-close, so the client reads the answer instead of a reset.

Nothing a client does makes the server wait or hold memory without bound: a request head must arrive within
`header_timeout` (a connection that sends nothing at all is closed then too), a body within `body_timeout`
of its head (408 either way), an idle keep-alive connection closes after `keepalive_timeout`, and so does a
client that stops reading its answers; a listener holds at most `max_connections` (more are answered 503 and
closed). One sweep per tick checks every connection: no timer per request. `gate(request)`, when set, runs
as soon as a head is complete, before any body is read or invited: a refusal it returns (401, 403) is the
answer, and a request whose body would follow closes the connection after it. `start(ssl=...)` serves HTTPS.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import ssl as _ssl
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, NoReturn
from urllib.parse import unquote_plus

import httptools

log = logging.getLogger(__name__)

HEAD_LIMIT = 64 * 1024  # request line + header section
MAX_PIPELINED = 16  # complete requests queued behind the running one before reading pauses
LINGER_S = 2.0  # after an error answer: half-close, drain what the client still sends, then close
JSON_TYPE = "application/json; charset=utf-8"


class InvalidJSON(ValueError):
    """The request body is not JSON (a ValueError, so `except ValueError` around `json()` still works)."""


# --- request and response ---------------------------------------------------------------------------------


class Request:
    """One complete request. `headers` has lower-cased names (first value wins, as aiohttp's `get` did);
    `path` is percent-decoded like aiohttp's `request.path`, `raw_path` as sent."""

    __slots__ = (
        "_query",
        "body",
        "content_length",
        "headers",
        "http10",
        "keep_alive",
        "method",
        "path",
        "query_string",
        "raw_path",
        "denied",
    )

    def __init__(self, method: str, raw_path: str, query_string: str, headers: dict[str, str],
                 keep_alive: bool, content_length: int | None, http10: bool = False) -> None:
        self.method = method
        self.raw_path = raw_path
        self.path = raw_path if "%" not in raw_path else unquote_path(raw_path)
        self.query_string = query_string
        self.headers = headers
        self.keep_alive = keep_alive
        self.http10 = http10  # only tracked for a keep-alive HTTP/1.0 request (it needs the header back)
        self.content_length = content_length
        self.body = b""
        self._query: dict[str, str] | None = None
        self.denied: Response | None = None  # the gate's refusal: answered instead of running the handler

    @property
    def query(self) -> Mapping[str, str]:
        """Decoded query parameters ('+' is a space; the first of repeated names wins, as before)."""
        if self._query is None:
            self._query = parse_query(self.query_string)
        return self._query

    async def read(self) -> bytes:
        return self.body

    async def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
            raise InvalidJSON(f"the body is not valid JSON: {exc}") from exc


class Response:
    """Status, headers (as the handler set them) and a complete body. A body without a Content-Type gets
    application/octet-stream, like aiohttp's `Response(body=...)`."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, body: bytes = b"", status: int = 200, headers: dict[str, str] | None = None,
                 content_type: str | None = None) -> None:
        self.status = status
        self.body = body
        if headers is None:
            headers = {}
        if content_type is not None:
            headers["Content-Type"] = content_type
        elif body and "Content-Type" not in headers:
            headers["Content-Type"] = "application/octet-stream"
        self.headers = headers


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None,
                  dumps: Callable[[Any], str] = json.dumps) -> Response:
    return Response(dumps(data).encode(), status, dict(headers) if headers else {}, JSON_TYPE)


def error_body(status: int, err: str, reason: str) -> Response:
    return json_response({"error": err, "reason": reason}, status=status)


# --- URL decoding (the same strings aiohttp/yarl's `request.path` and `request.query` gave) ---------------

_ESCAPES = re.compile(r"(?:%[0-9A-Fa-f]{2})+")


def _decode_escapes(m: re.Match[str]) -> str:
    run = m.group()
    data = bytes.fromhex(run.replace("%", ""))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    # yarl keeps escapes that are not valid UTF-8 as they were written (case included): map each
    # undecodable byte (a lone surrogate under surrogateescape) back to its three characters.
    out: list[str] = []
    i = 0
    for ch in data.decode("utf-8", "surrogateescape"):
        if 0xDC80 <= ord(ch) <= 0xDCFF:
            out.append(run[3 * i:3 * i + 3])
            i += 1
        else:
            out.append(ch)
            i += len(ch.encode("utf-8"))
    return "".join(out)


def unquote_path(raw: str) -> str:
    """Percent-decode a path: valid UTF-8 escapes decode (%2F too), anything else stays as written."""
    return _ESCAPES.sub(_decode_escapes, raw) if "%" in raw else raw


def parse_query(qs: str) -> dict[str, str]:
    out: dict[str, str] = {}
    if not qs:
        return out
    plain = "%" not in qs
    for pair in qs.split("&"):
        if not pair:
            continue
        name, _, value = pair.partition("=")
        if plain:
            name, value = name.replace("+", " "), value.replace("+", " ")
        else:
            name, value = unquote_plus(name, errors="replace"), unquote_plus(value, errors="replace")
        out.setdefault(name, value)
    return out


# --- response encoding -------------------------------------------------------------------------------------

_METHODS = {m.encode(): m for m in ("GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS", "PATCH")}
_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n" for s in HTTPStatus}
_NO_BODY = frozenset({204, 304})
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def _date_line() -> str:
    return f"Date: {formatdate(usegmt=True)}\r\nServer: dynamostore\r\n"


# Date and Server, refreshed every second by running servers (formatting a date per response costs more
# than the rest of the head).
_date_server = _date_line()


def encode_response(resp: Response, keep_alive: bool, http10: bool, head: bool) -> bytes:
    """Status line, headers and body as one bytes object (the body is left out for HEAD, 204 and 304)."""
    status = resp.status
    hdrs = resp.headers
    fields = "\r\n".join(map(": ".join, hdrs.items()))
    if "\n" in fields and fields.count("\n") >= len(hdrs):  # a value would end the header early
        raise ValueError(f"a response header contains a line break: {hdrs!r}")
    if fields:
        fields += "\r\n"
    body = resp.body
    if status in _NO_BODY:
        body = b""
        length = ""
    else:
        length = f"Content-Length: {len(body)}\r\n"
    conn = "" if keep_alive and not http10 else "Connection: keep-alive\r\n" if keep_alive else "Connection: close\r\n"
    line = _STATUS_LINES.get(status) or f"HTTP/1.1 {status} Unknown\r\n"
    data = f"{line}{fields}{length}{_date_server}{conn}\r\n".encode("utf-8", "surrogateescape")
    return data + body if body and not head else data


# --- the server ---------------------------------------------------------------------------------------------

Handler = Callable[[Request], Awaitable[Response]]
TooLarge = Callable[[Request, int | None, int], Response]
Gate = Callable[[Request], Response | None]


def _default_too_large(req: Request, size: int | None, limit: int) -> Response:
    got = f"{size} bytes" if size is not None else "larger"
    return error_body(413, "too_large", f"the body is {got}, over the limit of {limit} bytes")


def _constant(n: int) -> Callable[[str, str], int]:
    return lambda method, path: n


class HttpServer:
    """Serves `handler` on host:port. `body_limit(method, path)` caps each request's body (an int caps all);
    `too_large(request, size or None, limit)` renders the 413 (the request has method, path and headers);
    `gate(request)` may refuse a request from its head alone (see the module's docstring)."""

    def __init__(self, handler: Handler, *, body_limit: int | Callable[[str, str], int] = 1 << 20,
                 too_large: TooLarge | None = None, keepalive_timeout: float = 75.0,
                 shutdown_timeout: float = 3.0, head_limit: int = HEAD_LIMIT, header_timeout: float = 10.0,
                 body_timeout: float = 30.0, max_connections: int = 1024, gate: Gate | None = None) -> None:
        self.handler = handler
        self.body_limit = _constant(body_limit) if isinstance(body_limit, int) else body_limit
        self.too_large = too_large or _default_too_large
        self.keepalive_timeout = keepalive_timeout
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.max_connections = max_connections
        self.gate = gate
        self.refused = 0  # connections answered 503 over max_connections
        self.timed_out = 0  # connections closed by a header, body or keep-alive timeout
        self.shutdown_timeout = shutdown_timeout
        self.head_limit = head_limit
        self.connections: set[_Connection] = set()
        self.stopping = False
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._all_closed: asyncio.Event | None = None

    @property
    def port(self) -> int:
        server: Any = self._server  # uvloop's sockets is a list, not the tuple typeshed declares
        assert server is not None and server.sockets
        return int(server.sockets[0].getsockname()[1])

    async def start(self, host: str, port: int, reuse_address: bool = True, ssl: _ssl.SSLContext | None = None) -> None:
        loop = asyncio.get_running_loop()
        # a TLS handshake gets the time a request head gets
        self._server = await loop.create_server(lambda: _Connection(self), host, port, reuse_address=reuse_address,
                                                backlog=1024, ssl=ssl,
                                                ssl_handshake_timeout=self.header_timeout if ssl else None)
        global _date_server
        _date_server = _date_line()
        self._sweeper = loop.create_task(self._sweep())

    async def stop(self) -> None:
        """Stop listening, close idle connections, let running requests finish (up to `shutdown_timeout`),
        then cut what is left."""
        if self._server is None:
            return
        self.stopping = True
        self._server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conn in list(self.connections):
            conn.shutdown()
        if self.connections:
            self._all_closed = asyncio.Event()
            try:
                await asyncio.wait_for(self._all_closed.wait(), self.shutdown_timeout)
            except TimeoutError:
                log.warning("%d HTTP connections still busy after %.1fs: closing them", len(self.connections),
                            self.shutdown_timeout)
        for conn in list(self.connections):
            conn.abort()
        await self._server.wait_closed()
        self._server = None

    def forget(self, conn: _Connection) -> None:
        self.connections.discard(conn)
        if not self.connections and self._all_closed is not None:
            self._all_closed.set()

    async def _sweep(self) -> None:
        """Refresh the Date header every second; enforce the header, body and keep-alive timeouts (one timer
        for all connections, not a timer handle armed and cancelled per request)."""
        global _date_server
        loop = asyncio.get_running_loop()
        tick = min(1.0, self.keepalive_timeout / 4, self.header_timeout / 4, self.body_timeout / 4)
        while True:
            await asyncio.sleep(tick)
            _date_server = _date_line()
            now = loop.time()
            for conn in list(self.connections):
                conn.check_timeouts(now)


class _Abort(Exception):
    """Raised inside a parser callback to stop parsing after queueing an error answer."""


class _Connection(asyncio.Protocol):
    """One client connection. httptools calls the on_* methods from inside `feed_data`."""

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.head_limit = server.head_limit
        # the message being parsed (reset when one completes, so no on_message_begin call per request)
        self.url = b""
        self.headers: dict[str, str] = {}
        self.head_size = 0  # exact bytes of URL and headers seen
        self.in_head = True  # between messages or inside a head (not inside a body)
        self.head_fed = 0  # bytes fed while in a head: bounds what httptools buffers before a callback
        self.req: Request | None = None
        self.chunks: list[bytes] = []
        self.body_size = 0
        self.limit = -1  # the body limit of the message, looked up when it has a body
        self.continue_due = False
        # the queue: complete requests, or a final error answer, handled one at a time in order
        self.queue: deque[Request | Response] = deque()
        self.task: asyncio.Task[None] | None = None
        # no more input is read (an error answer queued, an upgrade, the client's EOF, a stop): answer
        # what is queued, then close
        self.discarding = False
        self.write_paused = False
        self.read_paused = False
        self.last_active = self.opened = self.loop.time()
        self.head_since = self.body_since = self.paused_since = 0.0  # when this head / body / write pause began
        self.fresh = True  # no request completed yet
        self.linger: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol ---------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.server.stopping:
            transport.close()
            return
        if len(self.server.connections) >= self.server.max_connections:
            # answered before anything is read, then closed: a flood of connections costs no buffers
            self.server.refused += 1
            self.discarding = True
            self._write(encode_response(error_body(503, "overloaded", "too many connections to this node; retry "
                                                   "later or elsewhere"), False, False, False))
            self._close(linger=True)
            return
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.queue.clear()
        if self.linger is not None:
            self.linger.cancel()
        if self.task is None:  # a running handler finishes (its answer is dropped) and forgets us then
            self.server.forget(self)

    def data_received(self, data: bytes) -> None:
        if self.discarding:
            return
        self.last_active = self.loop.time()
        if self.in_head:
            if not self.head_fed:
                self.head_since = self.last_active
            self.head_fed += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # Upgrades are not supported: answer what was complete, then close.
            self.discarding = True
            self._pause_reading()
            if self.task is None and not self.queue:
                self._close()
            return
        except httptools.HttpParserError as exc:
            if not self.discarding:  # an _Abort already queued its own answer
                self._fail(error_body(400, "bad_request", f"malformed HTTP request: {exc}"))
            return
        if self.in_head and self.head_fed > self.head_limit:  # a head that never ends
            self._fail(error_body(431, "headers_too_large", f"the request head is over {self.head_limit} bytes"))

    def eof_received(self) -> bool:
        # The client sent all it will: answer what is complete, then close.
        self.discarding = True
        return self.task is not None or bool(self.queue)  # False: the transport closes itself

    def pause_writing(self) -> None:
        self.write_paused = True
        self.paused_since = self.loop.time()
        self._pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if len(self.queue) < MAX_PIPELINED:
            self._resume_reading()

    # --- httptools callbacks ----------------------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        self.url += url  # its size counts at on_headers_complete (data_received bounds a long one)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_size += len(name) + len(value) + 4
        if self.head_size > self.head_limit:
            self._abort(431, "headers_too_large", f"the request head is over {self.head_limit} bytes")
        key = name.decode("latin-1").lower()
        if key not in self.headers:
            self.headers[key] = value.decode("utf-8", "surrogateescape")

    def on_headers_complete(self) -> None:
        self.in_head = False
        url = self.url
        if len(url) + self.head_size > self.head_limit:
            self._abort(431, "headers_too_large", f"the request head is over {self.head_limit} bytes")
        if url[:1] == b"/" and b"?" not in url and b"#" not in url:
            path, query = url, b""
        else:
            path, query = self._split_target(url)
        headers = self.headers
        p = self.parser
        http10 = expect = False
        if "host" not in headers or "connection" in headers or "expect" in headers:  # the version matters
            version = p.get_http_version()
            if version == "1.1" and "host" not in headers:
                self._abort(400, "bad_request", "an HTTP/1.1 request needs a Host header")
            http10 = version == "1.0"
            expect = not http10 and headers.get("expect", "").lower() == "100-continue"
        cl = headers.get("content-length")
        length = None if cl is None else int(cl)  # llhttp has validated it
        method = p.get_method()
        req = self.req = Request(_METHODS.get(method) or method.decode(), path.decode(), query.decode(), headers,
                                 p.should_keep_alive(), length, http10)
        self.body_since = self.last_active
        gate = self.server.gate
        if gate is not None and (denied := gate(req)) is not None:
            if length or "transfer-encoding" in headers:  # a body would follow: answer without reading it
                self._fail(denied)
                raise _Abort
            req.denied = denied
        if length is not None:
            limit = self.limit = self.server.body_limit(req.method, req.path)
            if length > limit:  # answered at once, without reading (or inviting) the body
                self._fail(self.server.too_large(req, length, limit))
                raise _Abort
        if expect:
            if self.task is None and not self.queue:
                self._write(_CONTINUE)
            else:
                self.continue_due = True  # after the answers to the requests ahead of it

    def _split_target(self, url: bytes) -> tuple[bytes, bytes]:
        if url[:1] == b"/":
            path, _, query = url.partition(b"?")
            return path.partition(b"#")[0], query.partition(b"#")[0]
        try:  # absolute-form (a proxy-style request) or '*'
            parsed = httptools.parse_url(url)
        except httptools.HttpParserInvalidURLError:
            self._abort(400, "bad_request", "the request target is not a valid URL")
        return parsed.path or b"/", parsed.query or b""

    def on_body(self, body: bytes) -> None:
        req = self.req
        assert req is not None
        if self.limit < 0:  # chunked: no Content-Length to check up front
            self.limit = self.server.body_limit(req.method, req.path)
        self.body_size += len(body)
        if self.body_size > self.limit:
            self._fail(self.server.too_large(req, None, self.limit))
            raise _Abort
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        req = self.req
        assert req is not None
        if self.chunks:
            chunks = self.chunks
            req.body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            self.chunks = []
            self.body_size = 0
        self.limit = -1
        self.continue_due = False
        self.fresh = False
        self.req = None
        self.url = b""
        self.headers = {}
        self.head_size = self.head_fed = 0
        self.in_head = True
        if self.task is None and not self.queue:
            self.task = self.loop.create_task(self._run(req))
        else:
            self.queue.append(req)
            if len(self.queue) >= MAX_PIPELINED:
                self._pause_reading()

    # --- handling, in order -----------------------------------------------------------------------------

    async def _run(self, req: Request) -> None:
        try:
            resp = req.denied or await self.server.handler(req)
        except asyncio.CancelledError:
            self.task = None
            self.server.forget(self)
            raise
        except Exception:  # noqa: BLE001 - a bug answers 500 and the connection keeps serving
            log.exception("unhandled error for %s %s", req.method, req.path)
            resp = error_body(500, "internal", "internal error; see the node's log")
        self.task = None
        transport = self.transport
        if transport is None:  # the client went away meanwhile
            self.server.forget(self)
            return
        keep_alive = req.keep_alive and not self.server.stopping
        try:
            data = encode_response(resp, keep_alive, req.http10, req.method == "HEAD")
        except Exception:  # noqa: BLE001 - a handler bug (a bad header value, not a Response)
            log.exception("unencodable response for %s %s", req.method, req.path)
            resp = error_body(500, "internal", "internal error; see the node's log")
            data = encode_response(resp, keep_alive, req.http10, req.method == "HEAD")
        transport.write(data)
        if not keep_alive:
            self.discarding = True
            self.queue.clear()
            self._close()
        elif self.queue or self.discarding or self.continue_due:
            self._next()
        else:
            self.last_active = self.loop.time()

    def _next(self) -> None:
        """Start the next queued request, or write a queued final error answer and close."""
        if self.transport is None:
            return
        if self.queue and not self.server.stopping:
            item = self.queue.popleft()
            if isinstance(item, Response):
                self._write(encode_response(item, False, False, False))
                self._close(linger=True)
                return
            self.task = self.loop.create_task(self._run(item))
            if self.read_paused and not self.write_paused and len(self.queue) < MAX_PIPELINED:
                self._resume_reading()
            return
        if self.discarding:
            self._close()
            return
        self.last_active = self.loop.time()
        if self.continue_due:
            self.continue_due = False
            self.body_since = self.last_active  # the body's time starts when it is invited
            self._write(_CONTINUE)

    # --- helpers ----------------------------------------------------------------------------------------

    def _abort(self, status: int, err: str, reason: str) -> NoReturn:
        self._fail(error_body(status, err, reason))
        raise _Abort

    def _fail(self, resp: Response) -> None:
        """Answer `resp` after the requests ahead of it, then close: nothing more is read."""
        self.discarding = True
        self.req = None
        self.queue.append(resp)
        if self.task is None:
            self._next()

    def _write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def _pause_reading(self) -> None:
        if not self.read_paused and self.transport is not None:
            self.read_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self.read_paused and self.transport is not None:
            self.read_paused = False
            self.transport.resume_reading()

    def _close(self, linger: bool = False) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        if linger and t.can_write_eof():
            # Half-close and drain: closing with unread input makes the kernel send a reset that can
            # destroy the answer before the client reads it.
            self.discarding = True
            self._resume_reading()
            t.write_eof()
            self.linger = self.loop.call_later(LINGER_S, t.close)
        else:
            t.close()

    # --- called by the server ---------------------------------------------------------------------------

    def check_timeouts(self, now: float) -> None:
        """Close what waited too long: a head or body still arriving (408), an idle keep-alive connection or
        one that never sent anything (closed), a client that does not read its answers (cut)."""
        srv = self.server
        if self.transport is None or self.linger is not None:
            return
        if self.write_paused and now - self.paused_since > srv.keepalive_timeout:
            srv.timed_out += 1  # its answers sit in our buffers: a close would wait for them forever
            self.abort()
            return
        if self.task is not None or self.queue or self.discarding:  # busy answering, or closing anyway
            return
        if not self.in_head:
            if now - self.body_since > srv.body_timeout:
                srv.timed_out += 1
                self._fail(error_body(408, "timeout", f"the request body did not arrive within {srv.body_timeout:g} s"))
        elif self.head_fed:
            if now - self.head_since > srv.header_timeout:
                srv.timed_out += 1
                self._fail(error_body(408, "timeout", f"the request head did not arrive within {srv.header_timeout:g} s"))
        elif now - self.last_active > (srv.header_timeout if self.fresh else srv.keepalive_timeout):
            srv.timed_out += 1
            self.transport.close()

    def shutdown(self) -> None:
        """Graceful stop: an idle connection closes now, a busy one after the answer being computed."""
        self.discarding = True
        if self.task is None:
            self.queue.clear()
            if self.transport is not None:
                self.transport.close()
            elif self.linger is None:
                self.server.forget(self)

    def abort(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.transport is not None:
            self.transport.abort()
        self.server.forget(self)
