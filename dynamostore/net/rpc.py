"""Internal RPC between dynamostore nodes: the public face of `net.wire`, `net.server`, `net.client`.

Binary, persistent and multiplexed: each client keeps one TCP connection per peer address and
sends length-prefixed msgpack frames tagged with a request id; the server answers out of order as
handlers finish. Both ends prove knowledge of the shared cluster secret at connect time
(HMAC-SHA256 over both sides' nonces; the secret is never sent).

Failure semantics the callers can rely on:
  * RpcUnavailable: cannot connect (refused, connect timeout, recently failed address: fail fast
    for `reconnect_backoff` s), or the connection dropped before the answer. The request may or may
    not have run remotely.
  * RpcTimeout: no answer within `timeout` (connect time included). A late answer is dropped.
  * RpcRemoteError(code, message): the handler raised RpcRemoteError(code, ...) ("internal" for any
    other exception). Authentication failures also surface as RpcRemoteError with code "auth",
    whichever side detected them (server refusing the client, or client refusing the server).

    server = RpcServer("n1", secret, router, host="127.0.0.1", port=0)
    await server.start()
    client = RpcClient("n2", secret)
    await client.call(("127.0.0.1", server.port), "ping", {"x": b"\\x00"}, timeout=1.0)
"""

from __future__ import annotations

from typing import Any, Callable

from dynamostore.net.client import RpcClient
from dynamostore.net.server import RpcServer
from dynamostore.net.wire import (
    Handler,
    RpcError,
    RpcRemoteError,
    RpcTimeout,
    RpcUnavailable,
)

__all__ = [
    "Handler",
    "MethodHandler",
    "RpcClient",
    "RpcError",
    "RpcRemoteError",
    "RpcRouter",
    "RpcServer",
    "RpcTimeout",
    "RpcUnavailable",
]

MethodHandler = Callable[[Any, str], Any]
"""(payload, peer_node_id) -> msgpack-able result (or a future or coroutine of one, see `Handler`)."""


class RpcRouter:
    """A Handler that dispatches by method name; unknown methods answer code "unknown_method"."""

    def __init__(self) -> None:
        self._methods: dict[str, MethodHandler] = {}

    def register(self, method: str, fn: MethodHandler) -> None:
        if method in self._methods:
            raise ValueError(f"rpc method {method!r} already registered")
        self._methods[method] = fn

    @property
    def methods(self) -> list[str]:
        return sorted(self._methods)

    def __call__(self, method: str, payload: Any, peer: str) -> Any:
        fn = self._methods.get(method)
        if fn is None:
            raise RpcRemoteError("unknown_method", f"no rpc method {method!r}")
        return fn(payload, peer)
