"""RPC server: accepts peer connections, authenticates them, runs the handler per request.

Before a peer has authenticated it gets little: a capped number of connections per listener (over the cap:
FATAL "busy" and close), frames of at most `PREAUTH_MAX_FRAME` bytes, and `handshake_timeout` seconds for
the TLS handshake and again for ours. With TLS (`ssl`), the peer's certificate must come from the cluster CA
(the context requires it) and name the node id the peer claims in its HELLO (`identify`).

One asyncio.Protocol per connection. Requests are decoded straight from `data_received` and handed
to the handler at once: a handler that answers synchronously is replied to in the same call, one that
returns a future is replied to from its done callback, and only a coroutine gets a task of its own
(slow handlers must not block the others). Responses written in the same loop iteration are corked
into a single `transport.write`. A peer that fails the handshake or
sends garbage gets a FATAL frame (when the socket still allows it) and is disconnected; the
listener keeps serving everyone else.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl as _ssl
from collections.abc import Callable, Coroutine
from typing import Any, cast

from dynamostore.net import wire as w
from dynamostore.net.cork import Cork
from dynamostore.net.wire import Handler, RpcRemoteError

log = logging.getLogger("dynamostore.rpc")

_HELLO, _AUTH, _READY, _CLOSED = range(4)


class RpcServer:
    """Listens on (host, port) and serves authenticated peers with `handler`.

    `ssl`: a server context requiring client certificates (security.tls.peer_server_context); then
    `identify(peercert)` must say which node id a certificate names (None: not a node of this cluster).
    `versions`: the protocol versions spoken (default: wire.supported_versions()).

    `stats` counts: connections (accepted, total), open (currently open), auth_failures,
    bad_frames (garbage, wrong shape, oversized, protocol violations), requests, busy (refused over
    `max_connections`), and v1, v2, ...: handshakes completed at each protocol version.
    """

    def __init__(
        self,
        node_id: str,
        secret: bytes,
        handler: Handler,
        *,
        host: str,
        port: int,
        max_frame: int = w.DEFAULT_MAX_FRAME,
        handshake_timeout: float = 5.0,
        ssl: _ssl.SSLContext | None = None,
        identify: Callable[[Any], str | None] | None = None,
        versions: tuple[int, int] | None = None,
        max_connections: int = 1024,
    ) -> None:
        if ssl is not None and identify is None:
            raise ValueError("a TLS RpcServer needs identify(): who a peer certificate names")
        self.node_id = node_id
        self.handler = handler
        self.host = host
        self.max_frame = max_frame
        self.handshake_timeout = handshake_timeout
        self.ssl = ssl
        self.identify = identify
        self.versions = versions or w.supported_versions()
        self.max_connections = max_connections
        self._secret = secret
        self._want_port = port
        self._server: asyncio.base_events.Server | None = None
        self._conns: set[_ServerConn] = set()
        self.stats: dict[str, int] = {
            "connections": 0,
            "open": 0,
            "auth_failures": 0,
            "bad_frames": 0,
            "requests": 0,
            "busy": 0,
        }

    def peers(self) -> dict[str, int]:
        """Authenticated inbound connections: peer node id -> protocol version spoken."""
        return {c.peer_id: c.version for c in self._conns if c.state == _READY}

    @property
    def port(self) -> int:
        """The actual bound port (useful with port=0); the requested port before start()."""
        server: Any = self._server  # uvloop's sockets is a list, not the tuple typeshed declares
        if server is None or not server.sockets:
            return self._want_port
        return int(server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("RpcServer already started")
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _ServerConn(self), self.host, self._want_port, reuse_address=True, ssl=self.ssl,
            ssl_handshake_timeout=self.handshake_timeout if self.ssl is not None else None,
        )
        # Restarting keeps the port we were given, even when it was chosen by the OS.
        self._want_port = self.port

    async def stop(self) -> None:
        """Stop listening, cancel running handlers, close every connection."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        tasks: list[asyncio.Task[None]] = []
        for conn in list(self._conns):
            tasks.extend(conn.tasks)
            conn.close()
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()

    # Called by connections.
    def _forget(self, conn: _ServerConn) -> None:
        if conn in self._conns:
            self._conns.discard(conn)
            self.stats["open"] -= 1


class _ServerConn(asyncio.Protocol):
    """One accepted connection: handshake state, request dispatch, corked writes."""

    def __init__(self, server: RpcServer) -> None:
        self.srv = server
        self.loop = asyncio.get_running_loop()
        self.state = _HELLO
        self.version = 0
        self.cert_id: str | None = None  # the node id the peer's certificate names (TLS only)
        self.decoder = w.FrameDecoder(min(server.max_frame, w.PREAUTH_MAX_FRAME))
        self.packer = w.new_packer()
        self.transport: asyncio.Transport | None = None
        self.peer_id = ""
        self.peer_addr: Any = None
        self.cnonce = b""
        self.snonce = b""
        self.cork = Cork(self.loop)
        self.tasks: set[asyncio.Task[None]] = set()
        self.hs_timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = self.cork.transport = cast(asyncio.Transport, transport)
        self.peer_addr = transport.get_extra_info("peername")
        if self.srv.stats["open"] >= self.srv.max_connections:
            self.srv.stats["busy"] += 1
            log.warning("rpc: refusing %s: %d connections open (max_connections)", self.peer_addr,
                        self.srv.stats["open"])
            self.state = _CLOSED
            self.transport.write(w.encode(self.packer, [w.FATAL, w.CODE_BUSY, "too many connections"]))
            transport.close()
            return
        if self.srv.identify is not None and self.srv.ssl is not None:
            self.cert_id = self.srv.identify(transport.get_extra_info("peercert"))
        self.srv._conns.add(self)
        self.srv.stats["connections"] += 1
        self.srv.stats["open"] += 1
        self.hs_timer = self.loop.call_later(self.srv.handshake_timeout, self._handshake_expired)

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = _CLOSED
        if self.hs_timer is not None:
            self.hs_timer.cancel()
        for t in self.tasks:
            t.cancel()
        self.srv._forget(self)

    def pause_writing(self) -> None:
        # The peer is not reading its answers: stop reading its requests (backpressure).
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and self.state != _CLOSED:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.state == _CLOSED:
            return
        msgs, err = self.decoder.feed(data)
        for msg in msgs:
            if self.state == _READY and msg[0] == w.REQ and len(msg) == 4:
                rid, method = msg[1], msg[2]
                if type(rid) is int and type(method) is str:
                    self.srv.stats["requests"] += 1
                    self._dispatch(rid, method, msg[3])
                    continue
            self._control(msg)
            if self.state == _CLOSED:
                return
        if err is not None:
            self._bad(err.code, err.message)

    # -- requests -----------------------------------------------------------------------

    def _dispatch(self, rid: int, method: str, payload: Any) -> None:
        try:
            res = self.srv.handler(method, payload, self.peer_id)
        except Exception as exc:
            self._reply_error(rid, method, exc)
            return
        if asyncio.isfuture(res):
            res.add_done_callback(lambda f: self._future_done(rid, method, f))
        elif asyncio.iscoroutine(res):
            task = self.loop.create_task(self._serve(rid, method, res))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        else:
            self._reply(rid, method, [w.OK, rid, res])

    def _future_done(self, rid: int, method: str, fut: asyncio.Future[Any]) -> None:
        if fut.cancelled():
            self._reply_error(rid, method, asyncio.CancelledError())
        elif (exc := fut.exception()) is not None:
            self._reply_error(rid, method, exc)
        else:
            self._reply(rid, method, [w.OK, rid, fut.result()])

    async def _serve(self, rid: int, method: str, coro: Coroutine[Any, Any, Any]) -> None:
        try:
            result = await coro
        except Exception as exc:
            self._reply_error(rid, method, exc)
            return
        self._reply(rid, method, [w.OK, rid, result])

    def _reply_error(self, rid: int, method: str, exc: BaseException) -> None:
        if isinstance(exc, RpcRemoteError):
            self._reply(rid, method, [w.ERR, rid, str(exc.code), str(exc.message)])
            return
        if not isinstance(exc, asyncio.CancelledError):
            log.error("rpc handler failed: method=%s peer=%s", method, self.peer_id, exc_info=exc)
        self._reply(rid, method, [w.ERR, rid, "internal", f"{type(exc).__name__}: {exc}"])

    def _reply(self, rid: int, method: str, msg: list[Any]) -> None:
        if self.state == _CLOSED:
            return
        try:
            data = w.encode(self.packer, msg)
        except Exception as exc:
            log.error("rpc result not serializable: method=%s: %s", method, exc)
            data = w.encode(self.packer, [w.ERR, rid, "internal", f"result not serializable: {exc}"])
        if len(data) - 4 > self.srv.max_frame:
            data = w.encode(
                self.packer,
                [w.ERR, rid, w.CODE_TOO_LARGE, f"result of {len(data) - 4} bytes exceeds max_frame"],
            )
        self.cork.write(data)

    # -- handshake and protocol errors -------------------------------------------------

    def _control(self, msg: list[Any]) -> None:
        kind = msg[0]
        if self.state == _HELLO and kind == w.HELLO and len(msg) == 5:
            _, magic, offered, cid, cnonce = msg
            version = w.choose_version(offered, self.srv.versions)
            lo, hi = self.srv.versions
            if magic != w.MAGIC or type(cid) is not str or type(cnonce) is not bytes:
                self._bad(w.CODE_BAD_FRAME, "malformed hello")
            elif version is None:
                self._bad(w.CODE_VERSION, f"unsupported protocol version {offered!r}, this node speaks "
                                          f"{lo}" + (f" to {hi}" if hi != lo else ""))
            elif self.srv.ssl is not None and self.cert_id != cid:
                self.srv.stats["auth_failures"] += 1
                named = f"names node {self.cert_id!r}" if self.cert_id else "is not a node certificate of this cluster"
                log.warning("rpc auth failed: peer %s claims node id %r, its certificate %s", self.peer_addr, cid, named)
                self._fatal(w.CODE_AUTH, f"the certificate {named}, not {cid!r}")
            else:
                self.peer_id, self.cnonce, self.version = cid, cnonce, version
                if self.srv.ssl is not None and version >= 2:
                    # mutual TLS with the cluster CA authenticated both ends: no secret needed on top
                    self._authenticated()
                    self._send_now([w.READY, self.srv.node_id, version])
                    return
                self.snonce = os.urandom(w.NONCE_BYTES)
                self.state = _AUTH
                self._send_now([w.CHALLENGE, self.srv.node_id, self.snonce] + ([version] if version >= 2 else []))
        elif self.state == _AUTH and kind == w.AUTH and len(msg) == 2:
            args = (self.srv._secret, self.cnonce, self.snonce, self.peer_id, self.srv.node_id)
            if not w.proof_ok(w.client_proof(*args), msg[1]):
                self.srv.stats["auth_failures"] += 1
                log.warning(
                    "rpc auth failed: peer %s claiming node id %r (wrong cluster secret?)",
                    self.peer_addr,
                    self.peer_id,
                )
                self._fatal(w.CODE_AUTH, "authentication failed: wrong cluster secret")
                return
            self._authenticated()
            self._send_now([w.WELCOME, w.server_proof(*args)])
        elif self.state in (_HELLO, _AUTH) and kind == w.REQ:
            self.srv.stats["auth_failures"] += 1
            log.warning("rpc request before authentication from %s", self.peer_addr)
            self._fatal(w.CODE_AUTH, "not authenticated")
        elif self.state == _READY and kind == w.REQ:
            self._bad(w.CODE_BAD_FRAME, "malformed request: want [REQ, int id, str method, payload]")
        else:
            self._bad(w.CODE_BAD_FRAME, f"unexpected message type {kind!r} in this state")

    def _authenticated(self) -> None:
        if self.hs_timer is not None:
            self.hs_timer.cancel()
            self.hs_timer = None
        self.state = _READY
        self.decoder.set_max_frame(self.srv.max_frame)
        key = f"v{self.version}"
        self.srv.stats[key] = self.srv.stats.get(key, 0) + 1

    def _handshake_expired(self) -> None:
        self.hs_timer = None
        if self.state in (_HELLO, _AUTH):
            log.warning("rpc handshake timed out for %s", self.peer_addr)
            self._fatal(w.CODE_HANDSHAKE_TIMEOUT, "handshake not completed in time")

    def _bad(self, code: str, message: str) -> None:
        self.srv.stats["bad_frames"] += 1
        log.warning("rpc protocol error from %s (%s): %s: %s", self.peer_addr, self.peer_id, code, message)
        self._fatal(code, message)

    def _send_now(self, msg: list[Any]) -> None:
        assert self.transport is not None
        self.transport.write(w.encode(self.packer, msg))

    def _fatal(self, code: str, message: str) -> None:
        """Tell the peer why, then close (transport.close flushes what was written first)."""
        if self.state == _CLOSED or self.transport is None:
            return
        self.cork.flush()  # answers already produced go out before the error
        try:
            self._send_now([w.FATAL, code, message])
        except Exception:  # the socket may already be gone; closing is what matters
            pass
        self.close()

    def close(self) -> None:
        if self.state != _CLOSED:
            self.state = _CLOSED
            if self.hs_timer is not None:
                self.hs_timer.cancel()
                self.hs_timer = None
            if self.transport is not None:
                self.cork.flush()
                self.transport.close()
