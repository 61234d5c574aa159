"""RPC client: one persistent, authenticated, multiplexed connection per peer address.

A call costs one future (or, with `call_then`, a plain callback slot: the answer is handed over
synchronously as its frame is decoded, without a loop hop), a share of a timer and one packed frame; no
task is spawned. Frames written by many callers in the same loop iteration are corked into one
`transport.write`. Connections open lazily; callers arriving while a connect is in progress share it; a
failed connect makes the address fail fast (RpcUnavailable) for `reconnect_backoff` seconds, then the next
call retries.

With TLS (`ssl`, security.tls.peer_client_context) the client presents its node certificate, accepts only
peers whose certificate comes from the cluster CA and names the node id the peer claims (`identify`) and,
when `expect(addr)` knows it, the node that address belongs to. The handshake offers a range of protocol
versions; a version-1 server refuses ranges, so on that refusal the client reconnects offering version 1,
and offers the range again once that connection ends (the peer may come back upgraded; net.wire).
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl as _ssl
from collections.abc import Callable
from typing import Any, cast

from dynamostore.net import wire as w
from dynamostore.outcome import Then, then_from
from dynamostore.ticks import TICKS_PER_S, tick_after
from dynamostore.net.cork import Cork
from dynamostore.net.wire import RpcError, RpcRemoteError, RpcTimeout, RpcUnavailable

log = logging.getLogger("dynamostore.rpc")

Addr = tuple[str, int]


class _Then:
    """A pending call answered by calling a function, in the shape of the futures it sits beside."""

    __slots__ = ("fn", "finished")

    def __init__(self, fn: Then) -> None:
        self.fn = fn
        self.finished = False

    def done(self) -> bool:
        return self.finished

    def set_result(self, result: Any) -> None:
        self._deliver(result, None)

    def set_exception(self, exc: BaseException) -> None:
        self._deliver(None, exc)

    def _deliver(self, result: Any, exc: BaseException | None) -> None:
        self.finished = True
        try:
            self.fn(result, exc)
        except Exception:  # noqa: BLE001 - runs inside the connection's read loop: never break it
            log.exception("rpc: answer callback failed")


class RpcClient:
    """Calls `method` on peers. Safe to share across all coroutines of one event loop."""

    def __init__(
        self,
        node_id: str,
        secret: bytes,
        *,
        connect_timeout: float = 1.0,
        max_frame: int = w.DEFAULT_MAX_FRAME,
        reconnect_backoff: float = 0.15,
        local_host: str | None = None,
        ssl: _ssl.SSLContext | None = None,
        identify: Callable[[Any], str | None] | None = None,
        expect: Callable[[Addr], str | None] | None = None,
        versions: tuple[int, int] | None = None,
    ) -> None:
        """`local_host`: the address outgoing connections come from (a node's own address, so a network
        filter can tell nodes apart on a shared host); None lets the kernel choose. `ssl`, `identify`,
        `expect`: see the module's docstring; `versions`: default wire.supported_versions()."""
        if ssl is not None and identify is None:
            raise ValueError("a TLS RpcClient needs identify(): who a peer certificate names")
        self.node_id = node_id
        self.connect_timeout = connect_timeout
        self.max_frame = max_frame
        self.reconnect_backoff = reconnect_backoff
        self.local_host = local_host
        self.ssl = ssl
        self.identify = identify
        self.expect = expect
        self.versions = versions or w.supported_versions()
        self._legacy: set[Addr] = set()  # addresses of version-1 servers (they refuse version ranges)
        self._secret = secret
        self._conns: dict[Addr, _ClientConn] = {}
        self._connecting: dict[Addr, asyncio.Task[_ClientConn]] = {}
        self._down: dict[Addr, tuple[float, RpcError]] = {}  # addr -> (fail fast until, why)
        self._delays: dict[Addr, float] = {}
        self._closed = False

    # -- public API ---------------------------------------------------------------------

    async def call(self, addr: Addr, method: str, payload: Any, *, timeout: float) -> Any:
        """Call `method(payload)` on the node at `addr`; return its result.

        Raises RpcTimeout (no answer in `timeout` s, connect included), RpcUnavailable (cannot
        connect, or the connection dropped before the answer), RpcRemoteError (the handler refused,
        or authentication failed: code "auth"), RpcError (the request exceeds max_frame).
        """
        conn = self._conns.get(addr)
        if conn is None:
            loop = asyncio.get_running_loop()
            start = loop.time()
            conn = await self._connect(addr, timeout)
            if conn.closed:  # lost between the handshake and this caller resuming
                raise RpcUnavailable(f"connection to {addr[0]}:{addr[1]} lost")
            timeout -= loop.time() - start
        loop = conn.loop
        if timeout <= 0:
            raise RpcTimeout(f"{method} to {addr}: timed out while connecting")
        rid = conn.next_rid
        conn.next_rid = rid + 1
        data = w.encode(conn.packer, [w.REQ, rid, method, payload])
        if len(data) - 4 > self.max_frame:
            raise RpcError(f"{method} request of {len(data) - 4} bytes exceeds max_frame {self.max_frame}")
        fut: asyncio.Future[Any] = loop.create_future()
        self._pend(conn, rid, timeout, fut)
        pending = conn.pending
        # Fault injection (benchmarks): a plain dict check costs nothing when unused.
        delay = self._delays.get(addr) if self._delays else None
        if delay:
            loop.call_later(delay, conn.write_if_pending, rid, data)
        else:
            conn.write(data)
        try:
            return await fut
        except RpcTimeout:
            raise RpcTimeout(f"{method} to {addr[0]}:{addr[1]}: no answer within {timeout:g}s") from None
        except BaseException:
            pending.pop(rid, None)  # the caller was cancelled: forget the call
            raise

    def call_then(self, addr: Addr, method: str, payload: Any, *, timeout: float, then: Then) -> bool:
        """The hot path of `call`: when a connection to `addr` is open, send now and return True; the
        outcome goes to `then(result, exc)` (same errors as `call`), called synchronously as the answer is
        read or the call times out or the connection is lost. False, having done nothing, when a connect is
        needed first (use `call`)."""
        conn = self._conns.get(addr)
        if conn is None or conn.closed or self._delays:
            return False
        rid = conn.next_rid
        conn.next_rid = rid + 1
        data = w.encode(conn.packer, [w.REQ, rid, method, payload])
        if len(data) - 4 > self.max_frame:
            return False  # let call() raise the clear error
        self._pend(conn, rid, timeout, _Then(then))
        conn.write(data)
        return True

    @staticmethod
    def _pend(conn: _ClientConn, rid: int, timeout: float, slot: _Slot) -> None:
        """Register the future (or callback) of request `rid`. Timeouts are bucketed per 10 ms tick: one
        timer per bucket instead of a timer handle created and cancelled per call; a call times out at most
        one tick late, never early."""
        loop = conn.loop
        conn.pending[rid] = slot
        tick = tick_after(loop.time() + timeout)
        bucket = conn.buckets.get(tick)
        if bucket is None:
            bucket = conn.buckets[tick] = []
            loop.call_at(tick / TICKS_PER_S, conn.expire, tick)
        bucket.append(rid)

    def set_delay(self, addr: Addr, seconds: float) -> None:
        """Delay every request sent to `addr` by `seconds` (0 removes the delay)."""
        if seconds > 0:
            self._delays[addr] = seconds
        else:
            self._delays.pop(addr, None)

    def is_connected(self, addr: Addr) -> bool:
        """Whether an authenticated connection to `addr` is currently open."""
        return addr in self._conns

    def in_flight(self, addr: Addr) -> int:
        """Calls to `addr` waiting for an answer (timed-out and answered calls are not counted)."""
        conn = self._conns.get(addr)
        return len(conn.pending) if conn is not None else 0

    def peer_id(self, addr: Addr) -> str | None:
        """The node id the peer at `addr` proved during the handshake, if connected."""
        conn = self._conns.get(addr)
        return conn.peer_id if conn is not None else None

    def peers(self) -> dict[str, int]:
        """Open connections: peer node id -> protocol version spoken."""
        return {c.peer_id: c.version for c in self._conns.values()}

    async def close(self) -> None:
        """Close every connection; in-flight and later calls raise RpcUnavailable."""
        self._closed = True
        tasks = list(self._connecting.values())
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for conn in list(self._conns.values()):
            conn.close(RpcUnavailable("client closed"))
        self._conns.clear()

    # -- connecting ---------------------------------------------------------------------

    async def _connect(self, addr: Addr, timeout: float) -> _ClientConn:
        if self._closed:
            raise RpcUnavailable("client closed")
        loop = asyncio.get_running_loop()
        down = self._down.get(addr)
        if down is not None:
            if loop.time() < down[0]:
                raise _copy(down[1])  # same error as the failed attempt, without retrying yet
            del self._down[addr]
        task = self._connecting.get(addr)
        if task is None:
            task = loop.create_task(self._open(addr))
            self._connecting[addr] = task
            task.add_done_callback(lambda t: self._connect_done(addr, t))
        try:
            # shield: one caller giving up must not abort the attempt the others share.
            return await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            raise RpcTimeout(f"connect to {addr[0]}:{addr[1]}: call timed out while connecting") from None
        except RpcError as exc:
            raise _copy(exc) from None  # the attempt's exception is shared by all its waiters
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if self._closed and (me is None or me.cancelling() == 0):
                # close() cancelled the shared attempt; this caller was not cancelled itself.
                raise RpcUnavailable("client closed") from None
            raise

    def _connect_done(self, addr: Addr, task: asyncio.Task[_ClientConn]) -> None:
        if self._connecting.get(addr) is task:
            del self._connecting[addr]
        if task.cancelled():
            return
        exc = task.exception()  # also marks it retrieved when every caller gave up
        if exc is not None:
            why = exc if isinstance(exc, RpcError) else RpcUnavailable(f"connect failed: {exc!r}")
            self._down[addr] = (asyncio.get_running_loop().time() + self.reconnect_backoff, why)
            return
        conn = task.result()
        if self._closed or conn.closed:
            conn.close(RpcUnavailable("client closed"))
            return
        self._conns[addr] = conn

    async def _open(self, addr: Addr) -> _ClientConn:
        try:
            return await self._open_once(addr)
        except _OldServer:
            # A version-1 server refused our range: offer what it speaks, for as long as this connection
            # lasts (see _lost).
            log.info("rpc: %s:%d speaks protocol version 1 only; reconnecting at version 1", *addr)
            self._legacy.add(addr)
            return await self._open_once(addr)

    async def _open_once(self, addr: Addr) -> _ClientConn:
        loop = asyncio.get_running_loop()
        host, port = addr
        made: list[_ClientConn] = []

        def factory() -> _ClientConn:
            made.append(_ClientConn(self, addr))
            return made[-1]

        try:
            async with asyncio.timeout(self.connect_timeout):
                local = (self.local_host, 0) if self.local_host else None
                await loop.create_connection(factory, host, port, local_addr=local, ssl=self.ssl,
                                             ssl_handshake_timeout=self.connect_timeout if self.ssl else None)
                await made[0].ready
            return made[0]
        except BaseException as exc:
            for conn in made:  # never leak a half-open connection (timeout, cancel, auth)
                conn.close(RpcUnavailable("connect aborted"))
            if isinstance(exc, TimeoutError):
                raise RpcUnavailable(f"connect to {host}:{port} timed out after {self.connect_timeout}s") from None
            if isinstance(exc, _ssl.SSLError):
                # e.g. the peer's certificate is not from the cluster CA, or it refused ours
                raise RpcRemoteError(w.CODE_AUTH, f"TLS with {host}:{port} failed: {exc.reason or exc}") from None
            if isinstance(exc, OSError):
                raise RpcUnavailable(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
            raise

    def _lost(self, conn: _ClientConn) -> None:
        if self._conns.get(conn.addr) is conn:
            del self._conns[conn.addr]
            if conn.version == 1:
                # the peer may come back upgraded (that is how a rolling upgrade restarts it): offer the range
                # again next time (an old node refuses it once more, and we fall back once more)
                self._legacy.discard(conn.addr)


_Slot = asyncio.Future[Any] | _Then  # how a pending call is answered


class _OldServer(RpcUnavailable):
    """The server refused our version range as a version-1 server does (FATAL "version" to a range)."""


class _ClientConn(asyncio.Protocol):
    """One connection: handshake, pending calls by request id, corked writes."""

    def __init__(self, client: RpcClient, addr: Addr) -> None:
        self.client = client
        self.addr = addr
        self.loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[None] = self.loop.create_future()
        self.decoder = w.FrameDecoder(client.max_frame)
        self.packer = w.new_packer()
        self.transport: asyncio.Transport | None = None
        self.pending: dict[int, _Slot] = {}
        self.buckets: dict[int, list[int]] = {}  # timeout tick -> request ids
        self.next_rid = 1
        self.cork = Cork(self.loop)
        self.cnonce = os.urandom(w.NONCE_BYTES)
        self.snonce = b""
        self.peer_id = ""
        self.version = 0
        self.offered: int | list[int] = 1
        self.closed = False

    # -- hot path -----------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.cork.write(data)

    def write_if_pending(self, rid: int, data: bytes) -> None:
        if rid in self.pending and not self.closed:
            self.write(data)

    def expire(self, tick: int) -> None:
        """Time out every call of this bucket that is still waiting (answered ones are gone)."""
        pending = self.pending
        for rid in self.buckets.pop(tick, ()):
            fut = pending.pop(rid, None)
            if fut is not None and not fut.done():
                fut.set_exception(RpcTimeout())  # call() re-raises it with the details

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        msgs, err = self.decoder.feed(data)
        pending = self.pending
        try:
            for msg in msgs:
                kind = msg[0]
                if kind == w.OK and len(msg) == 3:
                    fut = pending.pop(msg[1], None)  # None: the call timed out, drop the late answer
                    if fut is not None and not fut.done():
                        fut.set_result(msg[2])
                elif kind == w.ERR and len(msg) == 4:
                    fut = pending.pop(msg[1], None)
                    if fut is not None and not fut.done():
                        fut.set_exception(RpcRemoteError(str(msg[2]), str(msg[3])))
                else:
                    self._control(msg)
                    if self.closed:
                        return
        except TypeError:  # e.g. an unhashable request id from a broken peer
            self.close(RpcUnavailable(f"malformed answer from {self.addr[0]}:{self.addr[1]}"))
            return
        if err is not None:
            self.close(RpcUnavailable(f"bad frame from {self.addr[0]}:{self.addr[1]}: {err}"))

    # -- lifecycle ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = self.cork.transport = cast(asyncio.Transport, transport)
        c = self.client
        self.offered = w.offer(c.versions, legacy=self.addr in c._legacy)
        self.transport.write(w.encode(self.packer, [w.HELLO, w.MAGIC, self.offered, c.node_id, self.cnonce]))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        reason = RpcUnavailable(
            f"connection to {self.addr[0]}:{self.addr[1]} lost" + (f": {exc}" if exc else "")
        )
        self._shutdown(reason)

    def _version_ok(self, version: Any) -> bool:
        lo, hi = self.client.versions
        return type(version) is int and lo <= version <= hi and (version == self.offered or type(self.offered) is list)

    def _identity_refused(self, sid: str) -> str | None:
        """With TLS: why the server's certificate does not fit the node id it claims (or the address's)."""
        c = self.client
        if c.ssl is None or c.identify is None or self.transport is None:
            return None
        cert_id = c.identify(self.transport.get_extra_info("peercert"))
        if cert_id is None:
            return "its certificate is not a node certificate of this cluster"
        if cert_id != sid:
            return f"it claims node id {sid!r}, its certificate names {cert_id!r}"
        want = c.expect(self.addr) if c.expect is not None else None
        if want is not None and want != sid:
            return f"it is node {sid!r}, this address belongs to {want!r}"
        return None

    def _control(self, msg: list[Any]) -> None:
        kind = msg[0]
        c = self.client
        if kind == w.CHALLENGE and len(msg) in (3, 4) and not self.snonce and not self.ready.done():
            sid, snonce = msg[1], msg[2]
            version = msg[3] if len(msg) == 4 else 1
            if type(sid) is not str or type(snonce) is not bytes or not self._version_ok(version):
                self.close(RpcUnavailable(f"malformed challenge from {self.addr}"))
                return
            self.peer_id, self.snonce, self.version = sid, snonce, version
            proof = w.client_proof(c._secret, self.cnonce, snonce, c.node_id, sid)
            assert self.transport is not None
            self.transport.write(w.encode(self.packer, [w.AUTH, proof]))
        elif kind == w.WELCOME and len(msg) == 2 and self.snonce and not self.ready.done():
            expected = w.server_proof(c._secret, self.cnonce, self.snonce, c.node_id, self.peer_id)
            if not w.proof_ok(expected, msg[1]):
                log.warning("rpc: peer at %s (%r) failed to prove the cluster secret", self.addr, self.peer_id)
                self.close(RpcRemoteError(w.CODE_AUTH, f"peer at {self.addr} failed authentication"))
                return
            self._ready(self.peer_id)
        elif kind == w.READY and len(msg) == 3 and not self.snonce and not self.ready.done():
            sid, version = msg[1], msg[2]
            if c.ssl is None or type(sid) is not str or type(version) is not int or version < 2:
                # without TLS nothing but the secret authenticates a server: READY is not acceptable
                self.close(RpcRemoteError(w.CODE_AUTH, f"peer at {self.addr} skipped authentication"))
                return
            if not self._version_ok(version):
                self.close(RpcUnavailable(f"{self.addr[0]}:{self.addr[1]} chose protocol version {version!r}"))
                return
            self.peer_id, self.version = sid, version
            self._ready(sid)
        elif kind == w.FATAL and len(msg) == 3:
            code, message = str(msg[1]), str(msg[2])
            if (not self.ready.done() and code == w.CODE_VERSION and type(self.offered) is list
                    and self.offered[0] <= 1):
                self.close(_OldServer(message))
            elif not self.ready.done() and code == w.CODE_AUTH:
                self.close(RpcRemoteError(code, message))
            else:
                self.close(RpcUnavailable(f"{self.addr[0]}:{self.addr[1]} closed the connection: {code}: {message}"))
        else:
            self.close(RpcUnavailable(f"unexpected message type {kind!r} from {self.addr[0]}:{self.addr[1]}"))

    def _ready(self, sid: str) -> None:
        refused = self._identity_refused(sid)
        if refused is not None:
            log.warning("rpc: refusing the peer at %s:%d: %s", self.addr[0], self.addr[1], refused)
            self.close(RpcRemoteError(w.CODE_AUTH, f"peer at {self.addr[0]}:{self.addr[1]} refused: {refused}"))
            return
        self.ready.set_result(None)

    def close(self, reason: RpcError) -> None:
        if not self.closed:
            self._shutdown(reason)
            if self.transport is not None:
                self.transport.close()

    def _shutdown(self, reason: RpcError) -> None:
        """Fail the handshake and every in-flight call with `reason` (a fresh copy each)."""
        self.closed = True
        self.cork.drop()
        self.client._lost(self)
        if not self.ready.done():
            self.ready.set_exception(_copy(reason))
            self.ready.exception()  # retrieved: nobody may be waiting any more
        pending, self.pending = self.pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(_copy(reason))


def _copy(exc: RpcError) -> RpcError:
    # Raising one exception object from many awaiters would chain their tracebacks together.
    if isinstance(exc, RpcRemoteError):
        return RpcRemoteError(exc.code, exc.message)
    return type(exc)(*exc.args)
