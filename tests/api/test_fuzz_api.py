"""Bad input at scale against a real 3-node cluster: the HTTP API fuzzed from its own /openapi.json with
schemathesis, and the internal RPC port fed malformed, oversized and unauthenticated frames.

What must hold: no 5xx other than the documented 503, every node still answers /health, and no stored value
is changed by a rejected request (known keys are written first, some fuzzed requests are aimed at them, and
they are re-read from the primaries at R=ALL afterwards). Everything is seeded / derandomized so a failure
replays.
"""

from __future__ import annotations

import asyncio
import os
import random
import struct
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
import requests
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from dynamostore.net import wire as w
from dynamostore.net.client import RpcClient
from dynamostore.net.wire import RpcRemoteError
from tests.harness import STRICT_ALL, Cluster
from tests.history import values_of

schemathesis = pytest.importorskip("schemathesis")
from schemathesis import GenerationMode  # noqa: E402

pytestmark = pytest.mark.cluster

# Fast failure detection is irrelevant here; keep background work quiet so the fuzz is the load.
SETTINGS = {"antientropy": {"enabled": False}}
KNOWN = {f"fuzz-known-{i}": f"original value {i}".encode() for i in range(4)}
HTTP_EXAMPLES = int(os.environ.get("FUZZ_HTTP_EXAMPLES", "150"))  # per strategy; ~20 s in all on 2 cores
WRITE_METHODS = {"PUT", "DELETE"}


async def _write_known(c: Cluster) -> None:
    for key, value in KNOWN.items():
        status, _, body = await c.put("n1", key, value, {"X-Write-Quorum": "all"})
        assert status == 204, (key, status, body)


async def _assert_known_unchanged(c: Cluster, changed_ok: set[str]) -> None:
    for key, value in KNOWN.items():
        if key in changed_ok:
            continue
        status, hd, body = await c.get("n2", key, STRICT_ALL)
        assert values_of(status, hd, body) == {value}, f"{key} changed by a rejected request: {status} {body[:200]!r}"


async def _all_healthy(c: Cluster) -> None:
    for nid in c.ids:
        assert c.alive(nid), f"{nid} process died: see {c.root / (nid + '.log')}"
        assert await c.healthy(nid), f"{nid} stopped answering /health"


def _http_fuzz(base: str) -> tuple[dict[int, int], set[str], list[str]]:
    """Run the schemathesis strategies against `base`; return status counts, known keys a request may
    legitimately have changed (2xx or 503 outcome), and the violations seen (5xx other than 503, bad 503)."""
    schema = schemathesis.openapi.from_url(base + "/openapi.json", timeout=10)
    statuses: dict[int, int] = {}
    changed_ok: set[str] = set()
    violations: list[str] = []
    guarded_refusals = [0]  # refused writes aimed at a known key, each checked unchanged right after
    session = requests.Session()
    known = st.sampled_from(sorted(KNOWN))

    def strict_read(key: str) -> tuple[int, str, bytes]:
        r = session.get(f"{base}/kv/{key}", headers=STRICT_ALL, timeout=15)
        return r.status_code, r.headers.get("X-Context", ""), r.content

    def check(case: Any) -> None:
        key = (case.path_parameters or {}).get("key")
        guarded = case.method.upper() in WRITE_METHODS and isinstance(key, str) and key in KNOWN
        before = strict_read(key) if guarded else None
        try:
            resp = case.call(base_url=base, session=session, timeout=15)
        except requests.exceptions.InvalidHeader:
            return  # requests itself refuses to send some generated headers: nothing reached the node
        except requests.ConnectionError as exc:
            violations.append(f"connection failed (crash?): {case.method} {case.formatted_path}: {exc}")
            return
        code = resp.status_code
        statuses[code] = statuses.get(code, 0) + 1
        if guarded:
            if 400 <= code < 500:
                # Refused: the stored versions and their causal context must be exactly as before.
                after = strict_read(key)
                if after != before:
                    violations.append(f"rejected {case.method} ({code}) changed {key}: {before!r} -> {after!r}")
                else:
                    guarded_refusals[0] += 1
            elif 200 <= code < 300 or code == 503:
                changed_ok.add(key)  # a legal write, or an unknown outcome (503): may change the value
        if code >= 500 and code != 503:
            violations.append(f"{code} for {case.method} {case.formatted_path} query={case.query} "
                              f"headers={case.headers}: {resp.text[:200]}")
        elif code == 503:
            try:
                doc = resp.json()
                assert "error" in doc and "reason" in doc
            except Exception:
                violations.append(f"503 without a JSON error/reason: {resp.text[:200]}")

    common = settings(max_examples=HTTP_EXAMPLES, deadline=None, derandomize=True, database=None,
                      phases=[Phase.explicit, Phase.generate],
                      suppress_health_check=list(HealthCheck))
    strategies = [
        schema.as_strategy(GenerationMode.POSITIVE),
        schema.as_strategy(GenerationMode.NEGATIVE),
    ]
    kv_op = {m: schema["/kv/{key}"][m] for m in ("GET", "PUT", "DELETE")}
    # Negative cases aimed at the known keys: the key is valid, something else is wrong, so the node must refuse.
    for m in ("PUT", "DELETE"):
        strategies.append(known.flatmap(
            lambda k, m=m: kv_op[m].as_strategy(GenerationMode.NEGATIVE, path_parameters={"key": k})))
    for strategy in strategies:
        common(given(case=strategy)(check))()
    session.close()
    statuses[-1] = guarded_refusals[0]
    return statuses, changed_ok, violations


async def test_http_api_fuzzed_from_openapi_gives_no_5xx_keeps_nodes_up_and_data_intact(
    make_cluster: Callable[..., Any],
) -> None:
    c: Cluster = await make_cluster(3, SETTINGS)
    await _write_known(c)
    statuses, changed_ok, violations = await asyncio.to_thread(_http_fuzz, c.url("n1"))
    guarded = statuses.pop(-1)
    print(f"\nHTTP fuzz: status counts {dict(sorted(statuses.items()))}; known keys legally written: {sorted(changed_ok)}; "
          f"refused writes to known keys checked unchanged: {guarded}")
    assert not violations, "\n".join(violations[:20])
    assert sum(statuses.values()) >= 4 * HTTP_EXAMPLES // 2, statuses  # the fuzz really sent requests
    assert any(400 <= s < 500 for s in statuses), "negative cases should have been refused with 4xx"
    assert guarded >= 20, "too few refused writes aimed at known keys to say anything"
    await _all_healthy(c)
    await _assert_known_unchanged(c, changed_ok)


# --------------------------------------------------------------------------- internal RPC port


def _frame(value: Any) -> bytes:
    return w.frame(msgpack.packb(value, use_bin_type=True))


async def _exchange(port: int, chunks: list[bytes], timeout: float = 8.0) -> bytes:
    """Send raw bytes, then read until the server closes the connection (or the deadline passes)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for chunk in chunks:
            writer.write(chunk)
        await writer.drain()
        got = bytearray()
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                got += chunk
        return bytes(got)
    except (ConnectionResetError, BrokenPipeError):
        return b""  # a reset is a refusal too
    finally:
        writer.close()


def _decode(data: bytes) -> list[Any]:
    dec = w.FrameDecoder()
    msgs, _ = dec.feed(data)
    return msgs


def _malformed_inputs(rng: random.Random) -> list[tuple[str, list[bytes]]]:
    hello = [w.HELLO, w.MAGIC, w.VERSION, "intruder", os.urandom(w.NONCE_BYTES)]
    put = [w.REQ, 1, "kv.put", [b"fuzz-known-0", b"\x00garbage", False, None]]
    cases: list[tuple[str, list[bytes]]] = [
        ("request before handshake", [_frame(put)]),
        ("hello then request without auth", [_frame(hello), _frame(put)]),
        ("wrong secret", [_frame(hello), _frame([w.AUTH, b"\x00" * 32])]),
        ("non-bytes proof", [_frame(hello), _frame([w.AUTH, "proof"])]),
        ("wrong magic", [_frame([w.HELLO, "http", 1, "x", b"n"])]),
        ("wrong version", [_frame([w.HELLO, w.MAGIC, 99, "x", os.urandom(16)])]),
        ("oversized frame header", [struct.pack(">I", 0xFFFFFFF0) + b"xx"]),
        ("not a list", [_frame({"a": 1})]),
        ("empty list", [_frame([])]),
        ("string type tag", [_frame(["1", 2])]),
        ("undecodable msgpack", [struct.pack(">I", 3) + b"\xc1\xc1\xc1"]),
        ("http on the rpc port", [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"]),
    ]
    for i in range(40):
        blob = rng.randbytes(rng.randrange(1, 300))
        cases.append((f"random bytes #{i}", [blob]))
    for i in range(20):  # a plausible length prefix followed by garbage
        body = rng.randbytes(rng.randrange(1, 200))
        cases.append((f"framed garbage #{i}", [struct.pack(">I", len(body)) + body]))
    return cases


async def test_rpc_port_refuses_malformed_and_unauthenticated_frames_and_keeps_serving(
    make_cluster: Callable[..., Any],
) -> None:
    c: Cluster = await make_cluster(3, SETTINGS)
    await _write_known(c)
    seed = int(os.environ.get("FUZZ_SEED", "7"))
    print(f"\nRPC fuzz seed={seed}")
    rng = random.Random(seed)
    port = c.rpc_port("n2")
    refused = 0
    for name, chunks in _malformed_inputs(rng):
        data = await _exchange(port, chunks)
        msgs = _decode(data)
        # Refused means: the server closed the connection, never answered OK, and said why when it could.
        assert not any(m[0] == w.OK for m in msgs), (name, msgs)
        assert not any(m[0] == w.WELCOME for m in msgs), (name, msgs)
        if msgs:
            assert msgs[-1][0] == w.FATAL, (name, msgs)
        refused += 1
    # A peer that connects and never finishes the handshake is dropped too (handshake timeout, 5 s).
    data = await _exchange(port, [_frame([w.HELLO, w.MAGIC, w.VERSION, "slow", os.urandom(16)])], timeout=15)
    assert _decode(data)[-1][:2] == [w.FATAL, w.CODE_HANDSHAKE_TIMEOUT]
    print(f"RPC fuzz: {refused} malformed/unauthenticated connections refused")
    await _all_healthy(c)
    await _assert_known_unchanged(c, set())
    # and the node still serves real traffic through that same RPC port
    status, _, _ = await c.put("n1", "fuzz-after", b"ok", {"X-Write-Quorum": "all"})
    assert status == 204
    status, hd, body = await c.get("n3", "fuzz-after", STRICT_ALL)
    assert values_of(status, hd, body) == {b"ok"}


MSGPACK_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=20) | st.binary(max_size=64),
    lambda inner: st.lists(inner, max_size=5),
    max_leaves=12,
)
# Methods whose garbage payloads an authenticated peer may send. Raft and membership methods are left out on
# purpose: a peer holding the cluster secret is trusted to speak the protocol, and random Raft messages would
# test the trust model, not input handling.
AUTH_METHODS = ["ping", "kv.get", "kv.put", "kv.coord_put", "handoff.deliver", "no.such.method"]


async def test_rpc_authenticated_garbage_payloads_are_refused_per_request_and_the_node_keeps_serving(
    make_cluster: Callable[..., Any],
) -> None:
    c: Cluster = await make_cluster(3, SETTINGS)
    await _write_known(c)
    from dynamostore.config import load_cluster_file

    secret = load_cluster_file(c.config).cluster.secret.encode()
    client = RpcClient("n1", secret)
    addr = ("127.0.0.1", c.rpc_port("n2"))
    payloads = st.tuples(st.sampled_from(AUTH_METHODS), MSGPACK_VALUES)
    codes: dict[str, int] = {}
    rng = random.Random(11)
    # Draw deterministic examples with a seeded hypothesis run collected into a list (no network inside hypothesis).
    drawn: list[tuple[str, Any]] = []

    @settings(max_examples=150, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck), phases=[Phase.generate])
    @given(payloads)
    def collect(x: tuple[str, Any]) -> None:
        drawn.append(x)

    collect()
    rng.shuffle(drawn)
    try:
        for method, payload in drawn:
            try:
                await client.call(addr, method, payload, timeout=5)
                codes["ok"] = codes.get("ok", 0) + 1
            except RpcRemoteError as exc:
                codes[exc.code] = codes.get(exc.code, 0) + 1
        print(f"\nauthenticated garbage: {len(drawn)} calls, outcomes {dict(sorted(codes.items()))}")
        assert codes.get("unknown_method", 0) > 0
        assert await client.call(addr, "ping", 0, timeout=5) is not None
    finally:
        await client.close()
    await _all_healthy(c)
    await _assert_known_unchanged(c, set())
