"""Calls to other nodes, and what their outcomes teach the failure detector (the real `views.Peers`).

Every call's outcome is information about the peer: an answer (even an error the handler raised) means it
is up; a refused or broken connection marks it down at once; a timeout only once it has been silent for the
detector's window. A peer that comes back up is announced to whoever listens (`on_up`), so the handoff
and anti-entropy services start at once instead of at their next poll.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from dynamostore.cluster.liveness import Detector
from dynamostore.metrics import CallStats
from dynamostore.net.rpc import RpcClient, RpcRemoteError, RpcTimeout, RpcUnavailable
from dynamostore.outcome import Then, then_from


class Address(Protocol):
    """Where a member's internal RPC listens (config.Member and membership.MemberInfo both have it)."""

    @property
    def rpc_host(self) -> str: ...

    @property
    def rpc_port(self) -> int: ...


class PeerCalls:
    def __init__(self, client: RpcClient, addresses: Mapping[str, Address], detector: Detector,
                 stats: CallStats) -> None:
        self.client = client
        self.addresses = addresses  # the node's live address book: replaced entries are seen at once
        self.detector = detector
        self.stats = stats
        self.on_up: list[Callable[[str], None]] = []

    def address(self, node: str) -> tuple[str, int]:
        m = self.addresses[node]
        return m.rpc_host, m.rpc_port

    async def call(self, node: str, method: str, payload: Any, timeout: float) -> Any:
        m = self.addresses[node]
        loop = asyncio.get_running_loop()
        try:
            res = await self.client.call((m.rpc_host, m.rpc_port), method, payload, timeout=timeout)
        except RpcUnavailable:
            self.detector.failure(node, loop.time(), "unavailable", hard=True)
            self.stats.count(method, "unavailable")
            raise
        except RpcTimeout:
            self.detector.failure(node, loop.time(), "timeout", hard=False)
            self.stats.count(method, "timeout")
            raise
        except RpcRemoteError:
            self.detector.success(node, loop.time())
            self.stats.count(method, "error")
            raise
        if self.detector.success(node, loop.time()):
            self.peer_up(node)
        self.stats.count(method, "ok")
        return res

    def call_then(self, node: str, method: str, payload: Any, timeout: float, then: Then) -> None:
        """`call` with its outcome handed to `then(result, exc)`: on an open connection without a future, a task
        or a loop hop (the replica fan-out hot path)."""
        m = self.addresses[node]

        def done(result: Any, exc: BaseException | None) -> None:
            self._observe(node, method, exc)
            then(result, exc)

        if not self.client.call_then((m.rpc_host, m.rpc_port), method, payload, timeout=timeout, then=done):
            then_from(asyncio.ensure_future(self.call(node, method, payload, timeout)), then)  # call() observes

    def _observe(self, node: str, method: str, exc: BaseException | None) -> None:
        """Feed the outcome of a call made with call_then to the detector and the metrics."""
        now = asyncio.get_running_loop().time()
        if exc is None or isinstance(exc, RpcRemoteError):
            if self.detector.success(node, now):
                self.peer_up(node)
            outcome = "ok" if exc is None else "error"
        elif isinstance(exc, RpcUnavailable):
            self.detector.failure(node, now, "unavailable", hard=True)
            outcome = "unavailable"
        else:
            self.detector.failure(node, now, "timeout", hard=False)
            outcome = "timeout"
        self.stats.count(method, outcome)

    def peer_up(self, peer: str) -> None:
        for fn in self.on_up:
            fn(peer)


class LivenessView:
    """The real `views.Liveness`: the detector as seen from this node (which is always up to itself)."""

    def __init__(self, detector: Detector, me: str) -> None:
        self.detector = detector
        self.me = me

    def is_up(self, node: str) -> bool:
        return node == self.me or self.detector.is_up(node)

    def up_set(self) -> set[str]:
        return self.detector.up_set(self.me)

    def down_since(self, node: str) -> float | None:
        return self.detector.down_since(node)

    @property
    def version(self) -> int:
        return self.detector.version

    def watched(self, node: str) -> bool:
        """Whether the detector tracks `node` (a member this node has heard of)."""
        return node in self.detector.peers
