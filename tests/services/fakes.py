"""Fakes of the narrow views (`dynamostore.views`) the services receive, for unit tests without a node process.

Only the views are fake: the replica is a real `LocalReplica` over a real LMDB `Storage` in the test's tmp_path
(`open_replica`), and each fake node answers RPCs through a real `RpcRouter`.

- `FakeClock`: `now()` is a number the test moves with `advance()`; `sleep()` (a service pacing itself) lets
  that much time pass and yields once; `wait()` (a loop's period, or a kick) returns when its event is set or
  when the test has advanced the clock past its deadline. No real time passes anywhere.
- `Network` / `FakePeers`: in-memory RPC between fake nodes. A call is routed to the callee's registered
  methods with the payload and the answer passed through msgpack (as on the wire: tuples become lists, bytes
  stay bytes). Nodes can be taken down, pairs cut, single methods made to fail, and every call is logged;
  `before(method, hook)` runs a hook just before a call is delivered (to race a write against it).
- `FakeLiveness`, `FakePlacement`: what this node believes about peers and the ring; the test sets them.
- `Spawner`: keeps every task it starts, so the test can await them (`settle`).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import msgpack

from dynamostore.kv.replica import LocalReplica
from dynamostore.net.rpc import RpcRemoteError, RpcRouter, RpcTimeout, RpcUnavailable
from dynamostore.outcome import Then, then_from
from dynamostore.storage.store import Storage
from ring.membership import Bootstrap, Command, MemberInfo, MembershipState, apply
from ring.placement import Ring


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.t = start
        self._timers: list[tuple[float, asyncio.Future[None]]] = []

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        """Time passes: every `wait` whose deadline is now behind returns (at its next turn)."""
        self.t += seconds
        due = [f for when, f in self._timers if when <= self.t]
        self._timers = [(when, f) for when, f in self._timers if when > self.t]
        for f in due:
            if not f.done():
                f.set_result(None)

    async def sleep(self, seconds: float) -> None:
        self.advance(max(0.0, seconds))
        await asyncio.sleep(0)

    async def wait(self, event: asyncio.Event | None, timeout: float) -> bool:
        if event is not None and event.is_set():
            return True
        timer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._timers.append((self.t + timeout, timer))
        waiters: list[asyncio.Future[Any]] = [timer]
        if event is not None:
            waiters.append(asyncio.ensure_future(event.wait()))
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
            self._timers = [(when, f) for when, f in self._timers if f is not timer]
        return event is not None and event.is_set()

    @property
    def waiting(self) -> int:
        """Tasks parked in `wait` (a loop that reached its wait is idle until the test moves time)."""
        return len(self._timers)


def _wire(value: Any) -> Any:
    return msgpack.unpackb(msgpack.packb(value), raw=False, strict_map_key=False)


class Call:
    __slots__ = ("caller", "node", "method", "payload")

    def __init__(self, caller: str, node: str, method: str, payload: Any) -> None:
        self.caller = caller
        self.node = node
        self.method = method
        self.payload = payload

    def __repr__(self) -> str:
        return f"Call({self.caller}->{self.node} {self.method})"


class Network:
    """The fake nodes' RPC: one router per node, and the faults the test injects."""

    def __init__(self) -> None:
        self.routers: dict[str, RpcRouter] = {}
        self.down: set[str] = set()
        self.cut: set[frozenset[str]] = set()
        self.failing: dict[tuple[str, str], Callable[[], Exception]] = {}
        self.hooks: dict[str, list[Callable[[Call], Any]]] = {}
        self.calls: list[Call] = []

    def router(self, node: str) -> RpcRouter:
        return self.routers.setdefault(node, RpcRouter())

    def peers(self, node: str) -> FakePeers:
        self.router(node)
        return FakePeers(self, node)

    def fail(self, node: str, method: str, error: Callable[[], Exception] = lambda: RpcTimeout("injected")) -> None:
        """Calls of `method` on `node` raise `error()` until `heal`."""
        self.failing[(node, method)] = error

    def heal(self, node: str, method: str) -> None:
        self.failing.pop((node, method), None)

    def before(self, method: str, hook: Callable[[Call], Any]) -> None:
        """Run `hook(call)` (awaited if it returns an awaitable) just before each `method` call is delivered."""
        self.hooks.setdefault(method, []).append(hook)

    def calls_of(self, method: str) -> list[Call]:
        return [c for c in self.calls if c.method == method]

    async def deliver(self, caller: str, node: str, method: str, payload: Any) -> Any:
        call = Call(caller, node, method, _wire(payload))
        self.calls.append(call)
        for hook in self.hooks.get(method, ()):
            done = hook(call)
            if inspect.isawaitable(done):
                await done
        if node in self.down or caller in self.down or frozenset((caller, node)) in self.cut:
            raise RpcUnavailable(f"{node} is unreachable from {caller}")
        failure = self.failing.get((node, method))
        if failure is not None:
            raise failure()
        try:
            result = self.routers[node](method, call.payload, caller)
            if inspect.isawaitable(result):
                result = await result
        except RpcRemoteError:
            raise
        except Exception as exc:  # noqa: BLE001 - what the real server answers for a handler's bug
            raise RpcRemoteError("internal", repr(exc)) from exc
        return _wire(result)


class FakePeers:
    """`views.Peers` of one fake node."""

    def __init__(self, net: Network, me: str) -> None:
        self.net = net
        self.me = me

    async def call(self, node: str, method: str, payload: Any, timeout: float) -> Any:
        return await self.net.deliver(self.me, node, method, payload)

    def call_then(self, node: str, method: str, payload: Any, timeout: float, then: Then) -> None:
        then_from(asyncio.ensure_future(self.call(node, method, payload, timeout)), then)


class FakeLiveness:
    """`views.Liveness`: the test says who is up (this node always is)."""

    def __init__(self, me: str, nodes: list[str]) -> None:
        self.me = me
        self.up = set(nodes) - {me}
        self.went_down: dict[str, float] = {}
        self._version = 0

    def is_up(self, node: str) -> bool:
        return node == self.me or node in self.up

    def up_set(self) -> set[str]:
        return self.up | {self.me}

    def down_since(self, node: str) -> float | None:
        return None if self.is_up(node) else self.went_down.get(node, 0.0)

    @property
    def version(self) -> int:
        return self._version

    def set_down(self, node: str, at: float) -> None:
        self.up.discard(node)
        self.went_down[node] = at
        self._version += 1

    def set_up(self, node: str) -> None:
        self.up.add(node)
        self.went_down.pop(node, None)
        self._version += 1


def member(node: str) -> MemberInfo:
    return MemberInfo(node, "127.0.0.1", 1, "127.0.0.1", 2)


def membership(nodes: list[str], partitions: int, n_val: int, *cmds: Command) -> MembershipState:
    """The committed membership after bootstrapping `nodes` and applying `cmds` (each must be accepted)."""
    state, res = apply(MembershipState(), Bootstrap(tuple(member(n) for n in nodes), partitions, n_val))
    assert res.ok, res.reason
    for cmd in cmds:
        state, res = apply(state, cmd)
        assert res.ok, res.reason
    return state


class FakePlacement:
    """`views.Placement`: a committed membership the test sets (and replaces, as the ring changes)."""

    def __init__(self, node_id: str, state: MembershipState) -> None:
        self.node_id = node_id
        self._state = state

    @property
    def ring(self) -> Ring | None:
        return self._state.ring

    @property
    def n_val(self) -> int:
        return self._state.n_val

    @property
    def state(self) -> MembershipState:
        return self._state

    @state.setter
    def state(self, state: MembershipState) -> None:
        self._state = state

    def members(self) -> list[str]:
        return self._state.live_members()


class Spawner:
    """`views.Spawner` that keeps its tasks: `settle()` awaits them (and those they spawn) and re-raises errors."""

    def __init__(self) -> None:
        self.tasks: list[tuple[str, asyncio.Task[None]]] = []

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        self.tasks.append((name, asyncio.get_running_loop().create_task(coro, name=name)))

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.tasks]

    async def settle(self, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not all(t.done() for _, t in self.tasks):
                await asyncio.gather(*(t for _, t in self.tasks))
        for _, t in self.tasks:
            t.result()

    async def cancel(self) -> None:
        for _, t in self.tasks:
            t.cancel()
        await asyncio.gather(*(t for _, t in self.tasks), return_exceptions=True)


async def open_replica(path: Path, node_id: str, *, partitions: int, segments: int = 16) -> LocalReplica:
    """A real local replica over a real LMDB store (close with `replica.storage.close()`)."""
    storage = await Storage.open(path / node_id, sync_interval=None)
    return await LocalReplica.open(node_id, storage, partitions=partitions, segments=segments, max_siblings=64,
                                   warn_siblings=16)


async def until(cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Yield to the loop until `cond()` holds; fail after `timeout` seconds (a deadline, not a sleep)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.001)
