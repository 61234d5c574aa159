"""The narrow views a node's services receive instead of the node itself.

Each background service and API module is given only what it uses, as one of these Protocols; `node.py`
builds the real implementations and wires them (it is the composition root), and unit tests hand in
fakes with a controllable clock. The coordinator's `kv.coordinator.ClusterView` was the model.

- `Clock`: the time services reason with (the event loop's monotonic clock) and how they wait: `sleep` to
  pace their own work (a token bucket's wait), `wait` for something to happen or a period to end.
- `Peers`: calls to other nodes over the internal RPC (their outcomes feed the failure detector).
- `Liveness`: this node's view of which peers are up right now (not membership).
- `Placement`: the ring this node serves with, the replication factor and the committed membership.
- `Methods`: where a service registers the RPC methods it answers.
- `Spawner`: supervised background tasks (errors are logged, never lost; stopped with the node).
- `Membership`: reading the committed membership linearizably and proposing changes to it (Raft).
- `Service`: what the node starts, stops and asks for status and gauges.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, Protocol

from prometheus_client.core import Metric

from dynamostore.outcome import Then
from ring.membership import Command, MembershipState, Result
from ring.placement import Ring

MethodHandler = Callable[[Any, str], Any]
"""(payload, peer node id) -> a msgpack-able result, or a future or coroutine of one."""


class Clock(Protocol):
    def now(self) -> float:
        """Monotonic seconds (the event loop's time)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Pause this task's work for `seconds` (pacing). A test clock lets that time pass at once."""
        ...

    async def wait(self, event: asyncio.Event | None, timeout: float) -> bool:
        """Until `event` is set or `timeout` seconds have passed (None: the timeout only, a loop's period); True
        if the event is set. A cancellation always propagates, even one that races the event. A test clock
        moves only when the test advances it, so a periodic loop waits there until the test says so."""
        ...


class Peers(Protocol):
    async def call(self, node: str, method: str, payload: Any, timeout: float) -> Any:
        """Call `method` on `node`; raises `net.rpc.RpcError` subclasses (unavailable, timeout, remote)."""
        ...

    def call_then(self, node: str, method: str, payload: Any, timeout: float, then: Then) -> None:
        """`call` with its outcome handed to `then(result, exc)`, possibly later (the request hot path)."""
        ...


class Liveness(Protocol):
    def is_up(self, node: str) -> bool: ...

    def up_set(self) -> set[str]:
        """The nodes seen up now, this node included."""
        ...

    def down_since(self, node: str) -> float | None:
        """Clock time the node was last seen going down; None while it is up."""
        ...

    @property
    def version(self) -> int:
        """Changes whenever some peer goes up or down."""
        ...


class Placement(Protocol):
    node_id: str

    @property
    def ring(self) -> Ring | None:
        """The ring this node serves with; None until a joining node has received one."""
        ...

    @property
    def n_val(self) -> int: ...

    @property
    def state(self) -> MembershipState:
        """The committed membership this node has applied (empty until it has one)."""
        ...

    def members(self) -> list[str]:
        """Ids of the current members (removed ones excluded), this node included when it is one."""
        ...


class Methods(Protocol):
    def register(self, method: str, fn: MethodHandler) -> None: ...


class Spawner(Protocol):
    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None: ...


class Membership(Protocol):
    async def read_barrier(self, timeout: float = 5.0) -> MembershipState:
        """The committed membership as of now, linearizably (raises cluster.membership.MembershipError)."""
        ...

    async def propose(self, cmd: Command, timeout: float = 10.0) -> Result:
        """Propose a membership command through the Raft leader; its apply() result."""
        ...

    def raft_status(self) -> dict[str, Any]: ...


class Service(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def status(self) -> dict[str, Any]:
        """This service's part of `/status` (one top-level key)."""
        ...

    def gauges(self) -> Iterable[Metric]:
        """This service's gauges for `/metrics`, read at scrape time."""
        ...
