"""Multi-process tests of the working cluster: real `dynamostore node` processes over real sockets."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from collections.abc import Callable
from typing import Any

import msgpack
import pytest

from tests.harness import Cluster, wait_for

pytestmark = pytest.mark.cluster

NO_BACKGROUND_REPAIR = {"handoff": {"enabled": False}, "antientropy": {"enabled": False}}


@pytest.mark.parametrize("level", ["ONE", "TWO", "THREE", "QUORUM", "ALL"])
async def test_put_on_one_node_get_on_another_at_every_level(make_cluster: Callable[..., Any], level: str) -> None:
    c: Cluster = await make_cluster(3)
    expected_acks = {"ONE": 1, "TWO": 2, "THREE": 3, "QUORUM": 2, "ALL": 3}[level]
    for i in range(20):
        status, h, _ = await c.put(f"n{i % 3 + 1}", f"k{i}", f"v{i}".encode(), {"X-Consistency-Level": level})
        assert status == 204, h
        assert int(h["X-Acks"]) >= expected_acks and h["X-Hinted"] == "0"
        assert h["X-Coordinator"] in c.ids
        status, h, body = await c.get(f"n{(i + 1) % 3 + 1}", f"k{i}", {"X-Consistency-Level": level})
        if expected_acks + expected_acks > 3 or level == "ALL":  # R + W > N: the read must see the write
            assert status == 200 and body == f"v{i}".encode()
        else:
            assert status in (200, 404)
        assert int(h["X-Replies"]) >= expected_acks


async def test_siblings_and_their_resolution(make_cluster: Callable[..., Any]) -> None:
    c: Cluster = await make_cluster(3)
    assert (await c.put("n1", "cart", b"base"))[0] == 204
    _, h, _ = await c.get("n2", "cart", {"X-Consistency-Level": "ALL"})
    ctx = h["X-Context"]
    # Two clients write with the same context through the same coordinator: both survive.
    assert (await c.put("n1", "cart", b"alice", {"X-Context": ctx}))[0] == 204
    assert (await c.put("n1", "cart", b"bob", {"X-Context": ctx}))[0] == 204
    # A third, blind write through another coordinator is concurrent with both.
    assert (await c.put("n3", "cart", b"carol"))[0] == 204
    status, h, body = await c.get("n2", "cart", {"Accept": "application/json", "X-Consistency-Level": "ALL"})
    assert status == 300
    doc = json.loads(body)
    import base64

    assert sorted(base64.b64decode(s["value"]) for s in doc["siblings"]) == [b"alice", b"bob", b"carol"]
    # Multipart is the default rendering.
    status, h2, body2 = await c.get("n3", "cart", {"X-Consistency-Level": "ALL"})
    assert status == 300 and h2["Content-Type"].startswith("multipart/mixed") and b"carol" in body2
    # Writing back with the context of all siblings replaces them.
    assert (await c.put("n2", "cart", b"alice+bob+carol", {"X-Context": doc["context"]}))[0] == 204
    status, _, body = await c.get("n1", "cart", {"X-Consistency-Level": "ALL"})
    assert status == 200 and body == b"alice+bob+carol"


async def test_delete_writes_a_tombstone_and_reads_404(make_cluster: Callable[..., Any]) -> None:
    c: Cluster = await make_cluster(3)
    await c.put("n1", "gone", b"x")
    _, h, _ = await c.get("n1", "gone", {"X-Consistency-Level": "ALL"})
    status, _, _ = await c.delete("n2", "gone", {"X-Context": h["X-Context"]})
    assert status == 204
    status, h, body = await c.get("n3", "gone", {"X-Consistency-Level": "ALL"})
    assert status == 404 and json.loads(body)["error"] == "not_found"


async def test_read_repair_fixes_a_replica_that_missed_a_write(make_cluster: Callable[..., Any]) -> None:
    c: Cluster = await make_cluster(3, NO_BACKGROUND_REPAIR)
    c.kill("n3")
    await wait_for(lambda: c.sees("n1", "n3", False), 5, "n1 to see n3 down")
    keys = [f"rr{i}" for i in range(30)]
    for k in keys:
        status, h, _ = await c.put("n1", k, k.encode(), {"X-Write-Quorum": "2"})
        assert status == 204 and h["X-Acks"] == "2"
    c.start("n3")
    await c.wait_healthy("n3")
    await wait_for(lambda: c.sees("n1", "n3", True), 5, "n1 to see n3 up")
    for k in keys:  # R=ALL waits for n3's (missing) answer, answers, then repairs n3
        status, _, body = await c.get("n1", k, {"X-Read-Quorum": "ALL"})
        assert status == 200 and body == k.encode()

    # Now n3 alone must hold every key: stop the others and read with R=1 from n3.
    async def repaired() -> bool:
        st = await c.status("n1")
        return bool(st["coordinator"]["read_repairs"] >= len(keys))

    await wait_for(repaired, 10, "read repairs to be sent")
    # /metrics counts what /status does (the counter was once declared and never incremented: always 0)
    st = await c.status("n1")
    metrics = (await (await (await c.http()).get(c.url("n1") + "/metrics")).content.read()).decode()
    counted = [line for line in metrics.splitlines() if line.startswith("dynamostore_read_repairs_total ")]
    assert counted and float(counted[0].split()[1]) >= st["coordinator"]["read_repairs"] >= len(keys), counted
    c.kill("n1")
    c.kill("n2")
    await wait_for(lambda: c.sees("n3", "n1", False), 5, "n3 to see n1 down")
    await wait_for(lambda: c.sees("n3", "n2", False), 5, "n3 to see n2 down")
    for k in keys:
        status, h, body = await c.get("n3", k, {"X-Read-Quorum": "1"})
        assert status == 200 and body == k.encode(), (k, status, body)


async def test_kill_9_every_node_and_restart_keeps_every_acknowledged_write(make_cluster: Callable[..., Any]) -> None:
    c: Cluster = await make_cluster(3, NO_BACKGROUND_REPAIR)
    acked: dict[str, bytes] = {}

    async def writer(w: int) -> None:
        for i in range(100):
            k, val = f"w{w}-{i}", f"value-{w}-{i}".encode()
            status, _, _ = await c.put(f"n{w % 3 + 1}", k, val, {"X-Write-Quorum": "ALL"})
            if status == 204:
                acked[k] = val

    await asyncio.gather(*(writer(w) for w in range(6)))
    assert len(acked) == 600
    for nid in c.ids:
        c.kill(nid)  # SIGKILL: no clean shutdown, no flush
    for nid in c.ids:
        c.start(nid)
    for nid in c.ids:
        await c.wait_healthy(nid)
    for nid in c.ids:  # each replica alone holds every write
        for other in c.ids:
            if other != nid:
                await wait_for(lambda a=nid, b=other: c.sees(a, b, True), 10, f"{nid} to see {other}")
    for k, val in acked.items():
        status, _, body = await c.get("n2", k, {"X-Read-Quorum": "ALL"})
        assert status == 200 and body == val, k


async def test_503_with_reason_when_too_few_replicas_are_up(make_cluster: Callable[..., Any]) -> None:
    c: Cluster = await make_cluster(3)
    await c.put("n1", "k", b"v", {"X-Write-Quorum": "ALL"})
    c.kill("n2")
    c.kill("n3")
    await wait_for(lambda: c.sees("n1", "n2", False), 5, "n1 to see n2 down")
    await wait_for(lambda: c.sees("n1", "n3", False), 5, "n1 to see n3 down")
    status, _, body = await c.put("n1", "k", b"v2", {"X-Write-Quorum": "2"})
    assert status == 503
    doc = json.loads(body)
    assert doc["error"] == "unavailable" and "w=2" in doc["reason"]
    status, _, body = await c.get("n1", "k", {"X-Read-Quorum": "2"})
    assert status == 503 and "r=2" in json.loads(body)["reason"]
    # R=1 and W=1 still work; the write supersedes what it read, so no sibling appears.
    _, h, _ = await c.get("n1", "k", {"X-Read-Quorum": "1"})
    assert (await c.put("n1", "k", b"v3", {"X-Write-Quorum": "1", "X-Context": h["X-Context"]}))[0] == 204
    status, _, body = await c.get("n1", "k", {"X-Read-Quorum": "1"})
    assert status == 200 and body == b"v3"


BAD_REQUESTS: list[tuple[str, str, dict[str, str], int]] = [
    ("PUT", "x" * 500, {}, 400),
    ("PUT", "k", {"X-Write-Quorum": "4"}, 400),
    ("PUT", "k", {"X-Write-Quorum": "MANY"}, 400),
    ("GET", "k", {"X-Read-Quorum": "-1"}, 400),
    ("GET", "k", {"X-Consistency-Level": "EVERYONE"}, 400),
    ("PUT", "k", {"X-Durable-Writes": "9"}, 400),
    ("PUT", "k", {"X-Sloppy-Quorum": "maybe"}, 400),
    ("PUT", "k", {"X-Timeout-Ms": "soon"}, 400),
    ("PUT", "k", {"X-Context": "forged.context"}, 400),
    ("DELETE", "k", {"X-Context": "bm9wZQ.AAAAAAAAAAAAAAAAAAAAAA"}, 400),
]


async def test_bad_input_gets_clear_errors_and_changes_nothing(make_cluster: Callable[..., Any]) -> None:
    c: Cluster = await make_cluster(3)
    assert (await c.put("n1", "k", b"original", {"X-Write-Quorum": "ALL"}))[0] == 204
    s = await c.http()
    for method, key, headers, want in BAD_REQUESTS:
        async with s.request(method, f"{c.url('n1')}/kv/{key}", data=b"evil", headers=headers) as r:
            assert r.status == want, (method, key, headers, r.status)
            doc = await r.json()
            assert doc["error"] and doc["reason"]
    async with s.put(f"{c.url('n1')}/kv/k", data=b"x" * (1024 * 1024 + 1)) as r:
        assert r.status == 413 and "limit" in (await r.json())["reason"]
    async with s.put(f"{c.url('n1')}/kv/") as r:
        assert r.status == 400
    # A context read from another key is refused too.
    await c.put("n1", "other", b"o")
    _, h, _ = await c.get("n1", "other")
    assert (await c.put("n1", "k", b"evil", {"X-Context": h["X-Context"]}))[0] == 400
    for nid in c.ids:
        status, _, body = await c.get(nid, "k", {"X-Read-Quorum": "ALL"})
        assert status == 200 and body == b"original"


def _raw_frames(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            try:
                data = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)


async def test_internal_port_refuses_strangers_and_survives_garbage(make_cluster: Callable[..., Any]) -> None:
    c: Cluster = await make_cluster(3)
    assert (await c.put("n1", "k", b"safe", {"X-Write-Quorum": "ALL"}))[0] == 204
    port = c.rpc_port("n2")
    attacks = [
        b"\x00\x00\x00\x05hello",  # not msgpack
        b"\xff\xff\xff\xff" + b"x" * 100,  # absurd length prefix
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # wrong protocol
        struct.pack(">I", 20) + msgpack.packb(["req", 1, "kv.put", ["k", b"x", False, None]]).ljust(20, b"\0"),
    ]
    for payload in attacks:
        await asyncio.to_thread(_raw_frames, port, payload)
    # A client with the wrong secret is refused by a real RPC handshake.
    from dynamostore.net.rpc import RpcClient, RpcError

    intruder = RpcClient("mallory", b"not-the-cluster-secret-at-all")
    with pytest.raises(RpcError):
        await intruder.call(("127.0.0.1", port), "kv.put", [b"k", b"junk", False, None], timeout=2)
    await intruder.close()
    for nid in c.ids:
        assert await c.healthy(nid)
        status, _, body = await c.get(nid, "k", {"X-Read-Quorum": "ALL"})
        assert status == 200 and body == b"safe"
