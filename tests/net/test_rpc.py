"""Tests of the internal RPC (dynamostore.rpc): real sockets on 127.0.0.1, port 0.

Authentication failures surface as RpcRemoteError with code "auth" on the client, whichever side
detected them; the server counts and logs them and keeps serving other peers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import Any, AsyncIterator, Awaitable, Callable

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynamostore.net import wire as w
from dynamostore.net.cork import CORK_FRAMES, Cork
from dynamostore.net.rpc import (
    RpcClient,
    RpcError,
    RpcRemoteError,
    RpcRouter,
    RpcServer,
    RpcTimeout,
    RpcUnavailable,
)

SECRET = b"cluster-secret-for-tests"
HOST = "127.0.0.1"


async def wait_until(cond: Callable[[], bool], deadline: float = 2.0) -> None:
    """Poll `cond` until it holds; fail the test if it does not within `deadline` seconds."""
    end = time.monotonic() + deadline
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("condition not reached before the deadline")
        await asyncio.sleep(0.005)


class Slow:
    """A handler whose "slow" method blocks until released (no sleeps that hope)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered = 0

    async def __call__(self, method: str, payload: Any, peer: str) -> Any:
        if method == "slow":
            self.entered += 1
            await self.release.wait()
            return "late"
        if method == "echo":
            return payload
        if method == "peer":
            return peer
        if method == "shuffle":  # answer out of request order
            for _ in range(payload % 7):
                await asyncio.sleep(0)
            return payload
        if method == "bad_request":
            raise RpcRemoteError("bad_request", f"no good: {payload!r}")
        if method == "boom":
            raise ValueError("kaboom")
        if method == "unpackable":
            return object()
        raise RpcRemoteError("unknown_method", method)


@pytest.fixture
async def make_server() -> AsyncIterator[Callable[..., Awaitable[RpcServer]]]:
    servers: list[RpcServer] = []

    async def make(handler: Any = None, **kw: Any) -> RpcServer:
        kw.setdefault("host", HOST)
        kw.setdefault("port", 0)
        srv = RpcServer(kw.pop("node_id", "srv"), kw.pop("secret", SECRET), handler or Slow(), **kw)
        await srv.start()
        servers.append(srv)
        return srv

    yield make
    for srv in servers:
        await srv.stop()


@pytest.fixture
async def make_client() -> AsyncIterator[Callable[..., RpcClient]]:
    clients: list[RpcClient] = []

    def make(node_id: str = "cli", secret: bytes = SECRET, **kw: Any) -> RpcClient:
        c = RpcClient(node_id, secret, **kw)
        clients.append(c)
        return c

    yield make
    for c in clients:
        await c.close()


def addr_of(srv: RpcServer) -> tuple[str, int]:
    return (HOST, srv.port)


async def raw_exchange(port: int, data: bytes, deadline: float = 2.0) -> list[Any]:
    """Send raw bytes, read until the server closes; return the frames it sent."""
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(data)
    received = await asyncio.wait_for(reader.read(), deadline)  # read() returns at EOF only
    writer.close()
    msgs, err = w.FrameDecoder().feed(received)
    assert err is None
    return msgs


async def raw_handshake(port: int, secret: bytes = SECRET) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Authenticate a raw socket by hand, speaking the documented wire protocol."""
    reader, writer = await asyncio.open_connection(HOST, port)
    packer = w.new_packer()
    cnonce = os.urandom(16)
    writer.write(w.encode(packer, [w.HELLO, w.MAGIC, w.VERSION, "raw", cnonce]))
    challenge = await read_frame(reader)
    assert challenge[0] == w.CHALLENGE
    proof = w.client_proof(secret, cnonce, challenge[2], "raw", challenge[1])
    writer.write(w.encode(packer, [w.AUTH, proof]))
    welcome = await read_frame(reader)
    assert welcome[0] == w.WELCOME
    return reader, writer


async def read_frame(reader: asyncio.StreamReader) -> Any:
    size = int.from_bytes(await reader.readexactly(4), "big")
    return msgpack.unpackb(await reader.readexactly(size), raw=False)


# --------------------------------------------------------------------------- calls


async def test_round_trip_keeps_types(make_server: Any, make_client: Any) -> None:
    srv = await make_server()
    client = make_client()
    payload = {
        "bytes": b"\x00\xff raw",
        "str": "naïve ☃",
        "ints": [0, -1, 2**63 - 1, -(2**63), 2**64 - 1],
        "nested": {"a": [b"x", {"b": [None, True, False, 1.5]}]},
        7: "int keys survive",
        "empty": [[], {}, b"", ""],
    }
    got = await client.call(addr_of(srv), "echo", payload, timeout=2)
    assert got == payload
    assert type(got["bytes"]) is bytes and type(got["str"]) is str
    assert type(got["nested"]["a"][0]) is bytes
    assert await client.call(addr_of(srv), "echo", b"", timeout=2) == b""
    assert await client.call(addr_of(srv), "echo", (1, 2), timeout=2) == [1, 2]  # msgpack: tuples -> lists


async def test_handler_sees_authenticated_peer_id(make_server: Any, make_client: Any) -> None:
    srv = await make_server(node_id="n1")
    client = make_client("n7")
    assert await client.call(addr_of(srv), "peer", None, timeout=2) == "n7"
    assert client.peer_id(addr_of(srv)) == "n1"


async def test_1000_concurrent_calls_multiplex_one_connection(make_server: Any, make_client: Any) -> None:
    srv = await make_server()
    client = make_client()
    results = await asyncio.gather(*(client.call(addr_of(srv), "shuffle", i, timeout=10) for i in range(1000)))
    assert results == list(range(1000))  # each caller got its own answer though they came out of order
    assert srv.stats["connections"] == 1  # the first 1000 callers shared one connect attempt
    assert srv.stats["requests"] == 1000
    assert client.in_flight(addr_of(srv)) == 0


async def test_remote_error_codes(make_server: Any, make_client: Any, caplog: pytest.LogCaptureFixture) -> None:
    srv = await make_server()
    client = make_client()
    with pytest.raises(RpcRemoteError) as e:
        await client.call(addr_of(srv), "bad_request", 42, timeout=2)
    assert e.value.code == "bad_request" and e.value.message == "no good: 42"
    with caplog.at_level(logging.ERROR, logger="dynamostore.rpc"):
        with pytest.raises(RpcRemoteError) as e:
            await client.call(addr_of(srv), "boom", None, timeout=2)
    assert e.value.code == "internal" and "kaboom" in e.value.message
    assert any("rpc handler failed" in r.message for r in caplog.records)
    with pytest.raises(RpcRemoteError) as e:
        await client.call(addr_of(srv), "unpackable", None, timeout=2)
    assert e.value.code == "internal" and "serializable" in e.value.message
    # The connection survived all of that.
    assert await client.call(addr_of(srv), "echo", 1, timeout=2) == 1
    assert srv.stats["connections"] == 1


async def test_unknown_method_via_router(make_server: Any, make_client: Any) -> None:
    router = RpcRouter()

    async def get(payload: Any, peer: str) -> Any:
        return {"key": payload, "from": peer}

    router.register("get", get)
    with pytest.raises(ValueError):
        router.register("get", get)
    srv = await make_server(router)
    client = make_client("n2")
    assert await client.call(addr_of(srv), "get", b"k", timeout=2) == {"key": b"k", "from": "n2"}
    with pytest.raises(RpcRemoteError) as e:
        await client.call(addr_of(srv), "nope", None, timeout=2)
    assert e.value.code == "unknown_method"
    assert router.methods == ["get"]


async def test_timeout_on_slow_handler_does_not_hurt_other_calls(make_server: Any, make_client: Any) -> None:
    handler = Slow()
    srv = await make_server(handler)
    client = make_client()
    addr = addr_of(srv)
    slow = asyncio.ensure_future(client.call(addr, "slow", None, timeout=0.2))
    started = time.monotonic()
    fast = await asyncio.gather(*(client.call(addr, "echo", i, timeout=2) for i in range(100)))
    assert fast == list(range(100))
    with pytest.raises(RpcTimeout):
        await slow
    elapsed = time.monotonic() - started
    assert 0.2 <= elapsed < 1.0
    assert client.in_flight(addr) == 0  # the timed-out call is forgotten
    handler.release.set()  # the late answer now arrives and must be dropped quietly
    assert await client.call(addr, "echo", "after", timeout=2) == "after"
    assert srv.stats["connections"] == 1


async def test_cancelled_caller_is_forgotten(make_server: Any, make_client: Any) -> None:
    handler = Slow()
    srv = await make_server(handler)
    client = make_client()
    task = asyncio.ensure_future(client.call(addr_of(srv), "slow", None, timeout=5))
    await wait_until(lambda: handler.entered == 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert client.in_flight(addr_of(srv)) == 0
    handler.release.set()
    assert await client.call(addr_of(srv), "echo", 3, timeout=2) == 3


class Outcomes:
    """Collects what call_then hands its callback, synchronously, as (result, exception) pairs."""

    def __init__(self) -> None:
        self.got: list[tuple[Any, BaseException | None]] = []

    def __call__(self, result: Any, exc: BaseException | None) -> None:
        self.got.append((result, exc))


async def test_call_then_needs_an_open_connection_and_does_nothing_without_one(
        make_server: Any, make_client: Any) -> None:
    srv = await make_server()
    client = make_client()
    seen = Outcomes()
    assert client.call_then(addr_of(srv), "echo", 1, timeout=2, then=seen) is False
    assert seen.got == [] and client.in_flight(addr_of(srv)) == 0
    await client.call(addr_of(srv), "echo", 0, timeout=2)  # connects
    assert client.call_then(addr_of(srv), "echo", [1, b"x"], timeout=2, then=seen) is True
    await wait_until(lambda: len(seen.got) == 1)
    assert seen.got == [([1, b"x"], None)]


async def test_call_then_hands_over_remote_errors_timeouts_and_lost_connections(
        make_server: Any, make_client: Any) -> None:
    handler = Slow()
    srv = await make_server(handler)
    client = make_client()
    addr = addr_of(srv)
    await client.call(addr, "echo", 0, timeout=2)
    refused, late, lost = Outcomes(), Outcomes(), Outcomes()
    assert client.call_then(addr, "bad_request", 1, timeout=2, then=refused)
    assert client.call_then(addr, "slow", None, timeout=0.1, then=late)
    await wait_until(lambda: len(refused.got) == 1 and len(late.got) == 1)
    (res, exc), = refused.got
    assert res is None and isinstance(exc, RpcRemoteError) and exc.code == "bad_request"
    (res, exc), = late.got
    assert res is None and isinstance(exc, RpcTimeout)
    assert client.call_then(addr, "slow", None, timeout=5, then=lost)
    await wait_until(lambda: handler.entered == 2)
    await srv.stop()
    await wait_until(lambda: len(lost.got) == 1)
    assert isinstance(lost.got[0][1], RpcUnavailable)
    handler.release.set()
    assert len(late.got) == 1  # each outcome is handed over once


async def test_a_failing_callback_does_not_break_the_connection(make_server: Any, make_client: Any,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    srv = await make_server()
    client = make_client()
    addr = addr_of(srv)
    await client.call(addr, "echo", 0, timeout=2)

    def broken(result: Any, exc: BaseException | None) -> None:
        raise RuntimeError("bug in a callback")

    seen = Outcomes()
    assert client.call_then(addr, "echo", 1, timeout=2, then=broken)
    assert client.call_then(addr, "echo", 2, timeout=2, then=seen)
    await wait_until(lambda: len(seen.got) == 1)
    assert seen.got == [(2, None)]
    assert "answer callback failed" in caplog.text
    assert await client.call(addr, "echo", 3, timeout=2) == 3


async def test_set_delay_delays_requests(make_server: Any, make_client: Any) -> None:
    srv = await make_server()
    client = make_client()
    addr = addr_of(srv)
    await client.call(addr, "echo", 0, timeout=2)  # connect first: time only the delay
    client.set_delay(addr, 0.15)
    t = time.monotonic()
    assert await client.call(addr, "echo", 1, timeout=2) == 1
    assert time.monotonic() - t >= 0.15
    # A delay longer than the timeout: the call times out and the request is never sent.
    client.set_delay(addr, 0.3)
    before = srv.stats["requests"]
    with pytest.raises(RpcTimeout):
        await client.call(addr, "echo", 2, timeout=0.05)
    await asyncio.sleep(0.35)  # past the delay: prove the dropped request stays dropped
    assert srv.stats["requests"] == before
    client.set_delay(addr, 0)
    t = time.monotonic()
    assert await client.call(addr, "echo", 3, timeout=2) == 3
    assert time.monotonic() - t < 0.15


async def test_request_over_max_frame(make_server: Any, make_client: Any) -> None:
    srv = await make_server(max_frame=1000)
    small = make_client(max_frame=100)
    with pytest.raises(RpcError, match="exceeds max_frame"):
        await small.call(addr_of(srv), "echo", b"x" * 200, timeout=2)
    client = make_client()
    with pytest.raises(RpcUnavailable, match="too_large"):
        await client.call(addr_of(srv), "echo", b"x" * 2000, timeout=2)
    assert srv.stats["bad_frames"] == 1
    assert await client.call(addr_of(srv), "echo", b"x" * 100, timeout=2) == b"x" * 100


# --------------------------------------------------------------------------- authentication


async def test_wrong_secret_is_refused_and_server_keeps_serving(
    make_server: Any, make_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    srv = await make_server()
    intruder = make_client("evil", b"not the secret")
    with caplog.at_level(logging.WARNING, logger="dynamostore.rpc"):
        with pytest.raises(RpcRemoteError) as e:
            await intruder.call(addr_of(srv), "echo", 1, timeout=2)
    assert e.value.code == "auth"
    assert srv.stats["auth_failures"] == 1
    assert any("auth failed" in r.message and "evil" in r.getMessage() for r in caplog.records)
    assert not intruder.is_connected(addr_of(srv))
    # Within the backoff the refusal repeats without a new attempt.
    with pytest.raises(RpcRemoteError) as e:
        await intruder.call(addr_of(srv), "echo", 1, timeout=2)
    assert e.value.code == "auth" and srv.stats["auth_failures"] == 1
    good = make_client("n2")
    assert await good.call(addr_of(srv), "echo", "still here", timeout=2) == "still here"
    await wait_until(lambda: srv.stats["open"] == 1)


async def test_client_refuses_server_that_cannot_prove_the_secret(make_client: Any) -> None:
    """A listener that speaks the protocol but does not know the secret is rejected by the client."""

    async def impostor(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        packer = w.new_packer()
        await read_frame(reader)  # HELLO
        writer.write(w.encode(packer, [w.CHALLENGE, "impostor", os.urandom(16)]))
        await read_frame(reader)  # AUTH: accept anything
        writer.write(w.encode(packer, [w.WELCOME, b"\x00" * 32]))
        await reader.read()
        writer.close()

    server = await asyncio.start_server(impostor, HOST, 0)
    try:
        client = make_client()
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(RpcRemoteError) as e:
            await client.call((HOST, port), "echo", b"secret data", timeout=2)
        assert e.value.code == "auth"
        assert not client.is_connected((HOST, port))
    finally:
        server.close()


async def test_request_before_handshake_is_refused(make_server: Any, make_client: Any) -> None:
    srv = await make_server()
    msgs = await raw_exchange(srv.port, w.encode(w.new_packer(), [w.REQ, 1, "echo", 1]))
    assert msgs == [[w.FATAL, "auth", "not authenticated"]]
    assert srv.stats["requests"] == 0 and srv.stats["auth_failures"] == 1


async def test_unfinished_handshake_times_out(make_server: Any) -> None:
    srv = await make_server(handshake_timeout=0.1)
    msgs = await raw_exchange(srv.port, b"")  # connect and say nothing
    assert [m[:2] for m in msgs] == [[w.FATAL, "handshake_timeout"]]
    await wait_until(lambda: srv.stats["open"] == 0)


# --------------------------------------------------------------------------- garbage


def _framed(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(_framed(b"\xc1\xc1\xc1"), id="not-msgpack"),
        pytest.param(_framed(msgpack.packb({"a": 1})), id="not-a-list"),
        pytest.param(_framed(msgpack.packb([99, "x"])), id="unknown-type"),
        pytest.param(_framed(msgpack.packb([w.HELLO, "dsrpc", 1, 5, b"n"])), id="bad-hello"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", id="http"),
    ],
)
async def test_garbage_gets_error_frame_and_close(make_server: Any, make_client: Any, garbage: bytes) -> None:
    srv = await make_server()
    msgs = await raw_exchange(srv.port, garbage)
    assert len(msgs) == 1 and msgs[0][0] == w.FATAL and msgs[0][1] in ("bad_frame", "too_large")
    assert srv.stats["bad_frames"] == 1
    client = make_client()
    assert await client.call(addr_of(srv), "echo", "ok", timeout=2) == "ok"


async def test_oversized_length_prefix_is_refused_before_the_body(make_server: Any, make_client: Any) -> None:
    srv = await make_server(max_frame=1 << 20)
    msgs = await raw_exchange(srv.port, (2 << 20).to_bytes(4, "big"))  # announce 2 MiB, send none
    assert [m[:2] for m in msgs] == [[w.FATAL, "too_large"]]
    msgs = await raw_exchange(srv.port, b"\xff\xff\xff\xff")
    assert [m[:2] for m in msgs] == [[w.FATAL, "too_large"]]
    assert await make_client().call(addr_of(srv), "echo", "ok", timeout=2) == "ok"


async def test_garbage_after_authentication(make_server: Any, make_client: Any) -> None:
    srv = await make_server()
    reader, writer = await raw_handshake(srv.port)
    packer = w.new_packer()
    writer.write(w.encode(packer, [w.REQ, 1, "echo", "fine"]))
    assert await read_frame(reader) == [w.OK, 1, "fine"]
    writer.write(w.encode(packer, [w.REQ, "not-an-id", "echo", 1]))
    assert (await read_frame(reader))[:2] == [w.FATAL, "bad_frame"]
    assert await asyncio.wait_for(reader.read(), 2) == b""  # closed
    writer.close()
    assert await make_client().call(addr_of(srv), "echo", "ok", timeout=2) == "ok"


# --------------------------------------------------------------------------- connections


async def test_server_restart_client_reconnects(make_server: Any, make_client: Any) -> None:
    handler = Slow()
    srv = await make_server(handler)
    addr = addr_of(srv)
    client = make_client()
    assert await client.call(addr, "echo", 1, timeout=2) == 1
    in_flight = asyncio.ensure_future(client.call(addr, "slow", None, timeout=5))
    await wait_until(lambda: handler.entered == 1)
    await srv.stop()
    with pytest.raises(RpcUnavailable):  # connection loss fails in-flight calls at once
        await asyncio.wait_for(in_flight, 1)
    await wait_until(lambda: not client.is_connected(addr))
    await srv.start()  # same port
    assert srv.port == addr[1]
    assert await client.call(addr, "echo", 2, timeout=2) == 2
    assert client.is_connected(addr)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


async def test_connect_to_closed_port_fails_fast_then_retries(make_client: Any) -> None:
    port = _closed_port()
    client = make_client(connect_timeout=5.0, reconnect_backoff=0.5)
    t = time.monotonic()
    with pytest.raises(RpcUnavailable, match="cannot connect"):
        await client.call((HOST, port), "echo", 1, timeout=5)
    assert time.monotonic() - t < 0.5
    # A listener appears on that port; during the backoff the client still fails fast without trying.
    srv = RpcServer("late", SECRET, Slow(), host=HOST, port=port)
    await srv.start()
    try:
        t = time.monotonic()
        with pytest.raises(RpcUnavailable):
            await client.call((HOST, port), "echo", 1, timeout=5)
        assert time.monotonic() - t < 0.2
        assert srv.stats["connections"] == 0
        await asyncio.sleep(0.5)  # let the 0.5 s backoff pass: the point of this step
        assert await client.call((HOST, port), "echo", 1, timeout=5) == 1
    finally:
        await srv.stop()


@pytest.fixture
async def silent_port() -> AsyncIterator[int]:
    """A listener that accepts connections and never says a word (a hung peer)."""
    held: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, HOST, 0)
    yield int(server.sockets[0].getsockname()[1])
    for writer in held:
        writer.close()
    server.close()


async def test_hung_peer_costs_connect_timeout_then_fails_fast(make_client: Any, silent_port: int) -> None:
    client = make_client(connect_timeout=0.2, reconnect_backoff=1.0)
    t = time.monotonic()
    with pytest.raises(RpcUnavailable, match="timed out"):
        await client.call((HOST, silent_port), "echo", 1, timeout=5)
    assert 0.2 <= time.monotonic() - t < 1.0
    t = time.monotonic()
    with pytest.raises(RpcUnavailable, match="timed out"):
        await client.call((HOST, silent_port), "echo", 1, timeout=5)
    assert time.monotonic() - t < 0.1  # within the backoff: no second 0.2 s wait


async def test_call_timeout_shorter_than_connect(make_client: Any, silent_port: int) -> None:
    client = make_client(connect_timeout=5.0)
    with pytest.raises(RpcTimeout):
        await client.call((HOST, silent_port), "echo", 1, timeout=0.1)


async def test_close_during_connect_fails_waiting_callers(silent_port: int) -> None:
    client = RpcClient("cli", SECRET, connect_timeout=5.0)
    calls = [asyncio.ensure_future(client.call((HOST, silent_port), "echo", i, timeout=5)) for i in range(3)]
    await asyncio.sleep(0)  # let the calls start the (shared) connect attempt
    await client.close()
    for c in calls:
        with pytest.raises(RpcUnavailable, match="client closed"):
            await c


async def test_close_fails_in_flight_and_later_calls(make_server: Any) -> None:
    handler = Slow()
    srv = await make_server(handler)
    client = RpcClient("cli", SECRET)
    task = asyncio.ensure_future(client.call(addr_of(srv), "slow", None, timeout=5))
    await wait_until(lambda: handler.entered == 1)
    await client.close()
    with pytest.raises(RpcUnavailable):
        await task
    with pytest.raises(RpcUnavailable):
        await client.call(addr_of(srv), "echo", 1, timeout=1)
    await wait_until(lambda: srv.stats["open"] == 0)


async def test_listener_binds_the_given_host(make_server: Any) -> None:
    srv = await make_server()
    assert srv._server is not None
    assert {s.getsockname()[0] for s in srv._server.sockets} == {HOST}


# --------------------------------------------------------------------------- framing (pure)


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.binary(max_size=40) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=20,
)


@settings(max_examples=40, deadline=None)
@given(msgs=st.lists(msgpack_values, min_size=1, max_size=8), data=st.data())
def test_decoder_reassembles_frames_split_anywhere(msgs: list[Any], data: st.DataObject) -> None:
    packer = w.new_packer()
    stream = b"".join(w.encode(packer, [w.OK, i, m]) for i, m in enumerate(msgs))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    decoder = w.FrameDecoder()
    out: list[Any] = []
    for a, b in zip([0, *cuts], [*cuts, len(stream)]):
        got, err = decoder.feed(stream[a:b])
        assert err is None
        out.extend(got)
    assert out == [[w.OK, i, m] for i, m in enumerate(msgs)]
    assert decoder.buffered == 0


class _RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return False


async def test_cork_sends_full_batches_at_once_and_the_rest_at_the_end_of_the_iteration() -> None:
    cork = Cork(asyncio.get_running_loop(), limit=3)
    t = _RecordingTransport()
    cork.transport = t
    for i in range(4):
        cork.write(bytes([i]))
    assert t.writes == [b"\x00\x01\x02"]  # the peer can start on a full batch while this side works on
    await asyncio.sleep(0)  # the loop runs the callbacks queued before this task's next step
    assert t.writes == [b"\x00\x01\x02", b"\x03"]
    cork.write(b"x")
    assert len(t.writes) == 2
    await asyncio.sleep(0)
    assert t.writes[-1] == b"x"
    assert Cork(asyncio.get_running_loop()).limit == CORK_FRAMES


def test_decoder_returns_good_frames_before_the_error() -> None:
    packer = w.new_packer()
    decoder = w.FrameDecoder(max_frame=100)
    msgs, err = decoder.feed(w.encode(packer, [w.OK, 1, "a"]) + (500).to_bytes(4, "big"))
    assert msgs == [[w.OK, 1, "a"]]
    assert err is not None and err.code == "too_large"
    assert decoder.feed(b"more") == ([], err)  # stays failed


def test_proofs_bind_direction_nonces_and_ids() -> None:
    args = (SECRET, b"c" * 16, b"s" * 16, "n1", "n2")
    assert w.client_proof(*args) != w.server_proof(*args)
    assert w.client_proof(*args) != w.client_proof(SECRET, b"c" * 16, b"s" * 16, "n1", "n3")
    assert w.client_proof(*args) != w.client_proof(b"other", *args[1:])
    assert w.proof_ok(w.client_proof(*args), w.client_proof(*args))
    assert not w.proof_ok(w.client_proof(*args), "not bytes")


# --------------------------------------------------------------------------- uvloop


def test_core_scenarios_on_uvloop() -> None:
    """The node runs on uvloop, whose transports are not asyncio.Transport subclasses."""
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> None:
        handler = Slow()
        srv = RpcServer("srv", SECRET, handler, host=HOST, port=0)
        await srv.start()
        client = RpcClient("cli", SECRET)
        addr = addr_of(srv)
        try:
            got = await asyncio.gather(*(client.call(addr, "shuffle", i, timeout=5) for i in range(200)))
            assert got == list(range(200)) and srv.stats["connections"] == 1
            with pytest.raises(RpcTimeout):
                await client.call(addr, "slow", None, timeout=0.05)
            with pytest.raises(RpcRemoteError) as e:
                await RpcClient("evil", b"wrong").call(addr, "echo", 1, timeout=2)
            assert e.value.code == "auth"
            assert [m[:2] for m in await raw_exchange(srv.port, b"\xff\xff\xff\xff")] == [[w.FATAL, "too_large"]]
            await srv.stop()
            await wait_until(lambda: not client.is_connected(addr))
            await srv.start()
            assert await client.call(addr, "echo", b"back", timeout=2) == b"back"
        finally:
            handler.release.set()
            await client.close()
            await srv.stop()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())
