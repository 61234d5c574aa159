"""Node-to-node RPC over mutual TLS, the version range of the handshake, and the limits before a peer has
authenticated: real sockets on 127.0.0.1, real TLS (the stdlib's ssl), certificates made by security.certs."""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from dynamostore.net import wire as w
from dynamostore.net.rpc import RpcClient, RpcError, RpcRemoteError, RpcServer, RpcUnavailable
from dynamostore.security import tls
from tests.security.conftest import CLUSTER, Pki

SECRET = b"cluster-secret-for-tests"
HOST = "127.0.0.1"


def identify(cert: Any) -> str | None:
    return tls.node_identity(cert, CLUSTER)


async def handler(method: str, payload: Any, peer: str) -> Any:
    return [peer, payload]


@pytest.fixture
async def servers() -> AsyncIterator[Callable[..., Awaitable[RpcServer]]]:
    made: list[RpcServer] = []

    async def make(node_id: str = "n1", pki: Pki | None = None, **kw: Any) -> RpcServer:
        if pki is not None:
            cert, key = pki.cert(node_id)
            kw.setdefault("ssl", tls.peer_server_context(cert, key, pki.ca))
            kw.setdefault("identify", identify)
        srv = RpcServer(node_id, SECRET, handler, host=HOST, port=0, **kw)
        await srv.start()
        made.append(srv)
        return srv

    yield make
    for s in made:
        await s.stop()


@pytest.fixture
async def clients() -> AsyncIterator[Callable[..., RpcClient]]:
    made: list[RpcClient] = []

    def make(node_id: str = "n2", pki: Pki | None = None, foreign: bool = False, **kw: Any) -> RpcClient:
        if pki is not None:
            cert, key = pki.cert(node_id, foreign)
            ca = (pki.foreign if foreign else pki.dir) / "ca.crt"
            kw.setdefault("ssl", tls.peer_client_context(cert, key, ca))
            kw.setdefault("identify", identify)
        c = RpcClient(node_id, SECRET, connect_timeout=2.0, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        await c.close()


async def wait_until(cond: Callable[[], bool], deadline: float = 10.0) -> None:
    end = time.monotonic() + deadline
    while not cond():
        assert time.monotonic() < end, "condition not reached before the deadline"
        await asyncio.sleep(0.01)


# --- mutual TLS ----------------------------------------------------------------------------------------


async def test_mutual_tls_call_at_version_2_without_the_secret_handshake(servers: Any, clients: Any, pki: Pki) -> None:
    srv = await servers("n1", pki)
    cli = clients("n2", pki, expect=lambda addr: "n1")
    assert await cli.call((HOST, srv.port), "echo", b"\x00payload", timeout=3) == ["n2", b"\x00payload"]
    assert srv.peers() == {"n2": 2} and cli.peers() == {"n1": 2}
    assert srv.stats["v2"] == 1 and srv.stats["auth_failures"] == 0


async def test_a_peer_with_a_certificate_from_another_ca_is_refused(servers: Any, clients: Any, pki: Pki) -> None:
    """Same cluster name, same node ids, another CA: the TLS handshake fails on both sides' checks."""
    srv = await servers("n1", pki)
    intruder = clients("n2", pki, foreign=True)  # trusts its own CA: refuses the server's certificate
    with pytest.raises(RpcError):
        await intruder.call((HOST, srv.port), "echo", 1, timeout=3)
    # one that trusts the cluster CA but presents a foreign certificate is refused by the server
    cert, key = pki.cert("n2", foreign=True)
    ctx = tls.peer_client_context(cert, key, pki.ca)
    sneaky = clients("n2", ssl=ctx, identify=identify)
    with pytest.raises(RpcError):
        await sneaky.call((HOST, srv.port), "echo", 1, timeout=3)
    assert srv.stats["requests"] == 0 and srv.peers() == {}


async def test_a_peer_without_a_certificate_is_refused(servers: Any, clients: Any, pki: Pki) -> None:
    srv = await servers("n1", pki)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cafile=str(pki.ca))
    anon = clients("n2", ssl=ctx, identify=identify)
    with pytest.raises(RpcError):
        await anon.call((HOST, srv.port), "echo", 1, timeout=3)
    assert srv.stats["requests"] == 0


async def test_a_node_claiming_another_nodes_id_is_refused(servers: Any, clients: Any, pki: Pki) -> None:
    """n3's certificate, but the HELLO says n2: the certificate decides who a peer is."""
    srv = await servers("n1", pki)
    cert, key = pki.cert("n3")
    liar = clients("n2", ssl=tls.peer_client_context(cert, key, pki.ca), identify=identify)
    with pytest.raises(RpcRemoteError) as e:
        await liar.call((HOST, srv.port), "echo", 1, timeout=3)
    assert e.value.code == "auth" and "n3" in e.value.message
    assert srv.stats["auth_failures"] == 1 and srv.stats["requests"] == 0


async def test_the_client_refuses_a_server_that_is_not_the_node_at_that_address(
        servers: Any, clients: Any, pki: Pki) -> None:
    srv = await servers("n3", pki)  # a genuine node, but not the one the client means to reach
    cli = clients("n2", pki, expect=lambda addr: "n1")
    with pytest.raises(RpcRemoteError) as e:
        await cli.call((HOST, srv.port), "echo", 1, timeout=3)
    assert e.value.code == "auth" and "belongs to 'n1'" in e.value.message
    assert not cli.is_connected((HOST, srv.port))


async def test_plaintext_to_a_tls_port_and_tls_to_a_plaintext_port_are_refused(
        servers: Any, clients: Any, pki: Pki) -> None:
    tls_srv = await servers("n1", pki)
    with pytest.raises(RpcError):
        await clients("n2").call((HOST, tls_srv.port), "echo", 1, timeout=3)
    plain_srv = await servers("n3")
    with pytest.raises(RpcError):
        await clients("n2", pki).call((HOST, plain_srv.port), "echo", 1, timeout=3)
    assert tls_srv.stats["requests"] == 0 and plain_srv.stats["requests"] == 0


async def test_a_ready_without_tls_is_refused_by_the_client(clients: Any) -> None:
    """Without TLS only the secret authenticates a server: one that skips the challenge is not trusted."""

    async def impostor(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(int.from_bytes(await reader.readexactly(4), "big"))
        writer.write(w.encode(w.new_packer(), [w.READY, "n1", 2]))
        await reader.read()
        writer.close()

    server = await asyncio.start_server(impostor, HOST, 0)
    try:
        with pytest.raises(RpcRemoteError) as e:
            await clients("n2").call((HOST, server.sockets[0].getsockname()[1]), "echo", 1, timeout=3)
        assert e.value.code == "auth"
    finally:
        server.close()


# --- versions ------------------------------------------------------------------------------------------


def test_version_choice() -> None:
    assert w.choose_version(1, (1, 2)) == 1  # a version-1 client
    assert w.choose_version([1, 2], (1, 2)) == 2
    assert w.choose_version([1, 5], (1, 2)) == 2  # a newer client, downgraded to what both speak
    assert w.choose_version([3, 5], (1, 2)) is None
    assert w.choose_version([1, 2], (1, 1)) is None  # version-1 servers knew no ranges
    assert w.choose_version(2, (1, 1)) is None
    assert w.choose_version("2", (1, 2)) is None
    assert w.offer((1, 2)) == [1, 2] and w.offer((1, 1)) == 1 and w.offer((1, 2), legacy=True) == 1


@pytest.mark.parametrize("use_tls", [False, True], ids=["plaintext", "tls"])
async def test_a_version_1_client_and_server_talk_to_version_2_ones(
        servers: Any, clients: Any, pki: Pki, use_tls: bool) -> None:
    p = pki if use_tls else None
    new_srv = await servers("n1", p)
    old_cli = clients("n2", p, versions=(1, 1))
    assert await old_cli.call((HOST, new_srv.port), "echo", "a", timeout=3) == ["n2", "a"]
    assert new_srv.peers() == {"n2": 1} and old_cli.peers() == {"n1": 1}
    old_srv = await servers("n3", p, versions=(1, 1))
    new_cli = clients("n2", p)
    assert await new_cli.call((HOST, old_srv.port), "echo", "b", timeout=3) == ["n2", "b"]
    assert old_srv.peers() == {"n2": 1} and new_cli.peers()["n3"] == 1
    assert old_srv.stats["bad_frames"] == 1  # it refused the range first, as the old release does


async def test_no_common_version_is_refused_with_the_reason(servers: Any, clients: Any) -> None:
    srv = await servers("n1", versions=(1, 1))
    cli = clients("n2", versions=(2, 2))
    with pytest.raises(RpcUnavailable, match="version"):
        await cli.call((HOST, srv.port), "echo", 1, timeout=3)


def test_version_max_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYNAMOSTORE_RPC_VERSION_MAX", "1")
    assert w.supported_versions() == (1, 1)
    monkeypatch.setenv("DYNAMOSTORE_RPC_VERSION_MAX", "9")
    with pytest.raises(ValueError):
        w.supported_versions()
    monkeypatch.delenv("DYNAMOSTORE_RPC_VERSION_MAX")
    assert w.supported_versions() == (w.MIN_VERSION, w.VERSION)


# --- before authentication ----------------------------------------------------------------------------


async def _raw(port: int, data: bytes, deadline: float = 3.0) -> list[Any]:
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(data)
    got = await asyncio.wait_for(reader.read(), deadline)
    writer.close()
    msgs, _ = w.FrameDecoder().feed(got)
    return msgs


async def test_connections_over_the_cap_are_refused_busy(servers: Any, clients: Any) -> None:
    srv = await servers("n1", max_connections=1)
    first = clients("n2")
    assert await first.call((HOST, srv.port), "echo", 1, timeout=3) == ["n2", 1]
    msgs = await _raw(srv.port, b"")
    assert [m[:2] for m in msgs] == [[w.FATAL, w.CODE_BUSY]]
    assert srv.stats["busy"] == 1 and srv.stats["open"] == 1
    assert await first.call((HOST, srv.port), "echo", 2, timeout=3) == ["n2", 2]  # the peer keeps its connection


async def test_a_large_frame_before_authentication_is_refused_before_its_body(servers: Any) -> None:
    srv = await servers("n1")
    msgs = await _raw(srv.port, (w.PREAUTH_MAX_FRAME + 1).to_bytes(4, "big") + b"x")
    assert [m[:2] for m in msgs] == [[w.FATAL, w.CODE_TOO_LARGE]]


async def test_a_large_frame_after_authentication_is_fine(servers: Any, clients: Any) -> None:
    srv = await servers("n1")
    big = os.urandom(w.PREAUTH_MAX_FRAME * 4)
    assert await clients("n2").call((HOST, srv.port), "echo", big, timeout=3) == ["n2", big]


async def test_two_hundred_half_open_connections_are_dropped_at_the_handshake_timeout(servers: Any) -> None:
    srv = await servers("n1", handshake_timeout=0.3)
    conns = [await asyncio.open_connection(HOST, srv.port) for _ in range(200)]
    for _, writer in conns[:100]:  # half of them start a handshake and never finish it
        writer.write(w.encode(w.new_packer(), [w.HELLO, w.MAGIC, [1, 2], "x", os.urandom(16)]))
    await wait_until(lambda: srv.stats["connections"] == 200)
    await wait_until(lambda: srv.stats["open"] == 0, deadline=15)
    for reader, writer in conns:
        data = await asyncio.wait_for(reader.read(), 2)  # the server closed it (EOF), after saying why
        msgs, _ = w.FrameDecoder().feed(data)
        assert msgs[-1][:2] == [w.FATAL, w.CODE_HANDSHAKE_TIMEOUT]
        writer.close()
