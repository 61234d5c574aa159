"""The put and get coordinators: thin asyncio drivers around the pure tallies of `quorum.py`.

A put is coordinated by a node in the key's active preference list (any other node forwards it): the
coordinator applies the write locally (minting its dot), sends the resulting state to the other targets,
and answers as soon as the tally is satisfied or cannot be. A get is coordinated by whichever node received
it: it asks every target, answers once R replies are in, then keeps listening for the stragglers for a
short while and repairs the stale primaries in the background (read repair).

Replica calls that are still running when the client is answered are not cancelled: replication completes
in the background and its outcome still feeds the failure detector.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from dynamostore import versioning as v
from dynamostore.quorum import GetTally, PutTally, Reply
from dynamostore.replica import KeyRef, LocalReplica
from dynamostore.rpc import RpcError, RpcRemoteError
from ring.placement import Ring, Role, Target, apl

log = logging.getLogger(__name__)


class Unavailable(Exception):
    """The request could not reach a quorum (HTTP 503); the message says what was required and what answered."""


class ForwardError(Exception):
    """A forwarded request came back with a client error from the coordinator (re-raised as such)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class WriteOptions:
    w: int
    dw: int
    pw: int
    sloppy: bool
    timeout: float

    def to_wire(self) -> list[Any]:
        return [self.w, self.dw, self.pw, self.sloppy, self.timeout]

    @classmethod
    def from_wire(cls, raw: list[Any]) -> WriteOptions:
        w, dw, pw, sloppy, timeout = raw
        return cls(int(w), int(dw), int(pw), bool(sloppy), float(timeout))


@dataclass(frozen=True, slots=True)
class ReadOptions:
    r: int
    pr: int
    sloppy: bool
    timeout: float


@dataclass(frozen=True, slots=True)
class PutResult:
    coordinator: str
    acks: int
    hinted: int
    durable: int
    state: v.VersionSet


@dataclass(frozen=True, slots=True)
class GetResult:
    coordinator: str
    replies: int
    hinted: int
    state: v.VersionSet | None


class ClusterView(Protocol):
    """What a coordinator needs from its node: identity, the ring, liveness and peer calls."""

    node_id: str
    n_val: int
    repair_wait: float
    replica_timeout: float
    read_all: bool

    @property
    def ring(self) -> Ring: ...
    def up_set(self) -> set[str]: ...
    def may_hint(self, primary: str) -> bool: ...
    def extra_targets(self, partition: int) -> tuple[str, ...]: ...
    async def call(self, node: str, method: str, payload: Any, timeout: float) -> Any: ...
    def call_future(self, node: str, method: str, payload: Any, timeout: float) -> asyncio.Future[Any]: ...
    def spawn(self, coro: Awaitable[None], name: str) -> None: ...


def _retrieve(f: asyncio.Future[Any]) -> None:
    """Replica calls may finish after the client was answered; retrieve their errors so none is 'never
    retrieved' (the node's call wrapper has already fed each outcome to the failure detector)."""
    if not f.cancelled():
        f.exception()


def _unreachable(name: str, n: int, pn: int, targets: list[Target], spares: list[str]) -> str:
    up = len(targets) + len(spares)
    primaries = sum(1 for t in targets if t.is_primary)
    need = f"{name}={n}" + (f", p{name}={pn}" if pn else "")
    return (f"not enough replicas: required {need}, but only {up} replicas of this key are reachable "
            f"({primaries} of them primary)")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, RpcRemoteError):
        return f"{exc.code}: {exc.message}"
    return type(exc).__name__


class Coordinator:
    def __init__(self, view: ClusterView, replica: LocalReplica) -> None:
        self.view = view
        self.replica = replica
        self.read_repairs = 0  # counters for /metrics
        self.forwarded = 0

    def targets(self, ref: KeyRef, sloppy: bool) -> tuple[list[Target], list[str]]:
        """The active preference list, and the spare fallbacks left over to replace a failing target."""
        ring, n, up = self.view.ring, self.view.n_val, self.view.up_set()
        ts = [t for t in apl(ring, ref.partition, n, up) if t.hint_for is None or self.view.may_hint(t.hint_for)]
        if not sloppy:
            return [t for t in ts if t.is_primary], []
        used = {t.node for t in ts}
        _, fallbacks = ring.preference_list(ref.partition, n)
        return ts, [f for f in fallbacks if f in up and f not in used]

    # --- writes --------------------------------------------------------------------------------------

    async def put(
        self, key: bytes, value: bytes | None, content_type: str, context: v.Clock, opts: WriteOptions
    ) -> PutResult:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + opts.timeout
        ref = self.replica.ref(key)
        targets, spares = self.targets(ref, opts.sloppy)
        me = next((t for t in targets if t.node == self.view.node_id), None)
        if me is None:
            return await self._forward(ref, value, content_type, context, opts, targets, deadline)
        pw = opts.pw if opts.sloppy else max(opts.pw, opts.w)
        tally = PutTally(w=opts.w, dw=opts.dw, pw=pw, targets=len(targets) + len(spares))
        if tally.impossible():
            raise Unavailable(_unreachable("w", opts.w, pw, targets, spares))
        tally.targets = len(targets)
        durable = opts.dw > 0
        state = await self.replica.coordinate(
            ref, context, value, content_type, durable=durable, hint_for=me.hint_for
        )
        tally.add_ack(self.view.node_id, primary=me.is_primary, durable=durable)
        raw = v.encode(state)
        calls: dict[asyncio.Future[Any], Target] = {}

        def send(t: Target) -> None:
            fut = self.view.call_future(t.node, "kv.put", [key, raw, durable, t.hint_for], opts.timeout)
            fut.add_done_callback(_retrieve)
            calls[fut] = t

        def replace(t: Target) -> None:
            # Sloppy quorum: a target that failed or is slow is replaced by the next spare fallback,
            # which keeps the copy as a hint for the primary it stands in for.
            if spares and not tally.satisfied():
                tally.targets += 1
                send(Target(spares.pop(0), Role.FALLBACK, hint_for=t.hint_for or t.node))

        def answer(t: Target, res: Any, exc: BaseException | None) -> None:
            if exc is None:
                tally.add_ack(t.node, primary=t.is_primary, durable=durable)
            else:
                tally.add_error(t.node, _reason(exc))
                replace(t)

        for t in targets:
            if t is not me:
                send(t)
        # A partition moving to a new owner: the write reaches it too, without counting toward W (it does
        # not serve reads for the partition until its stream is done).
        for extra in self.view.extra_targets(ref.partition):
            if all(extra != t.node for t in targets):
                f = self.view.call_future(extra, "kv.put", [key, raw, durable, None], opts.timeout)
                f.add_done_callback(_retrieve)
        soft = loop.time() + min(self.view.replica_timeout, opts.timeout / 2)
        timed_out = await self._collect(calls, set(), deadline, tally.done, answer, soft, replace)
        out = tally.outcome(timed_out)
        if not out.ok:
            raise Unavailable(out.reason)
        return PutResult(self.view.node_id, out.acks, out.hinted, out.durable, state)

    async def _forward(
        self,
        ref: KeyRef,
        value: bytes | None,
        content_type: str,
        context: v.Clock,
        opts: WriteOptions,
        targets: list[Target],
        deadline: float,
    ) -> PutResult:
        loop = asyncio.get_running_loop()
        errors: list[str] = []
        for t in targets:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            wire_opts = WriteOptions(opts.w, opts.dw, opts.pw, opts.sloppy, remaining).to_wire()
            try:
                res = await self.view.call(
                    t.node,
                    "kv.coord_put",
                    [ref.key, value, content_type, sorted(context.items()), wire_opts],
                    remaining + 0.05,
                )
            except RpcRemoteError as exc:
                if exc.code in ("unavailable",):
                    raise Unavailable(exc.message) from exc
                if exc.code in ("bad_request", "conflict"):
                    raise ForwardError(exc.code, exc.message) from exc
                errors.append(f"{t.node}: {_reason(exc)}")
                continue
            except RpcError as exc:
                errors.append(f"{t.node}: {_reason(exc)}")
                continue
            self.forwarded += 1
            coord, acks, hinted, durable, raw = res
            return PutResult(coord, acks, hinted, durable, v.decode(raw))
        why = "; ".join(errors) if errors else "no replica of this key is reachable"
        raise Unavailable(
            f"could not reach a coordinator for this key (required w={opts.w}, {len(targets)} replicas reachable): {why}"
        )

    # --- reads ---------------------------------------------------------------------------------------

    async def get(self, key: bytes, opts: ReadOptions) -> GetResult:
        """Ask R replicas (this node first when it holds one), more only when one fails or is slow.

        Asking all N for every read, as Riak does, costs a third more replica work at R=2 for a little more
        read repair; anti-entropy repairs what reads don't see (Cassandra makes the same trade).
        `quorum.read_all = true` restores ask-all.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + opts.timeout
        ref = self.replica.ref(key)
        targets, _ = self.targets(ref, opts.sloppy)
        pr = opts.pr if opts.sloppy else max(opts.pr, opts.r)
        tally = GetTally(r=opts.r, pr=pr, targets=len(targets))
        if tally.impossible():
            raise Unavailable(_unreachable("r", opts.r, pr, targets, []))
        me = self.view.node_id
        order = sorted(targets, key=lambda t: t.node != me)  # stable: apl order otherwise
        first = len(order) if (self.view.read_all or pr > 0) else opts.r
        reserve = order[first:]
        tally.reserve = len(reserve)
        calls: dict[asyncio.Future[Any], Target] = {}

        def ask(t: Target) -> None:
            if t.node == me:
                fut: asyncio.Future[Any] = asyncio.ensure_future(self.replica.get(ref, t.hint_for))
            else:
                fut = self.view.call_future(t.node, "kv.get", [key, t.hint_for], opts.timeout)
            fut.add_done_callback(_retrieve)
            calls[fut] = t

        async def ask_local_last(ts: list[Target]) -> None:
            # Remote replicas first, so they work while this node reads its own copy (no task for it).
            for t in ts:
                if t.node != me:
                    ask(t)
            for t in ts:
                if t.node == me:
                    done: asyncio.Future[Any] = loop.create_future()
                    try:
                        done.set_result(await self.replica.get(ref, t.hint_for))
                    except Exception as exc:  # noqa: BLE001 - reported to the tally like a replica error
                        done.set_exception(exc)
                    calls[done] = t

        def ask_another(_: Target) -> None:
            if reserve and not tally.satisfied():
                tally.reserve -= 1
                ask(reserve.pop(0))

        def answer(t: Target, res: Any, exc: BaseException | None) -> None:
            if exc is not None:
                tally.add_error(t.node, _reason(exc))
                ask_another(t)
                return
            state = res if (res is None or isinstance(res, v.VersionSet)) else v.decode(res)
            tally.add_reply(Reply(t.node, t.is_primary, state))

        await ask_local_last(order[:first])
        seen: set[asyncio.Future[Any]] = set()
        soft = loop.time() + min(self.view.replica_timeout, opts.timeout / 2)
        timed_out = await self._collect(calls, seen, deadline, tally.done, answer, soft, ask_another)
        out = tally.outcome(timed_out)
        if not out.ok:
            raise Unavailable(out.reason)
        if len(seen) < len(calls) or tally.repairs():
            self.view.spawn(self._read_repair(ref, tally, calls, seen, answer), "read-repair")
        return GetResult(self.view.node_id, out.replies, out.hinted, out.state)

    async def _read_repair(
        self,
        ref: KeyRef,
        tally: GetTally,
        calls: dict[asyncio.Future[Any], Target],
        seen: set[asyncio.Future[Any]],
        answer: Callable[[Target, Any, BaseException | None], None],
    ) -> None:
        loop = asyncio.get_running_loop()
        await self._collect(calls, seen, loop.time() + self.view.repair_wait, tally.all_in, answer)
        stale = tally.repairs()
        merged = tally.merged()
        if not stale or merged is None:
            return
        raw = v.encode(merged)
        for node in stale:
            try:
                if node == self.view.node_id:
                    await self.replica.merge(ref, merged, durable=False)
                else:
                    await self.view.call(node, "kv.put", [ref.key, raw, False, None], 2.0)
                self.read_repairs += 1
            except Exception as exc:  # noqa: BLE001 - repair is best effort; anti-entropy catches the rest
                log.debug("read repair of %r on %s failed: %s", ref.key, node, exc)

    # --- shared --------------------------------------------------------------------------------------

    @staticmethod
    async def _collect(
        calls: dict[asyncio.Future[Any], Target],
        seen: set[asyncio.Future[Any]],
        deadline: float,
        done: Callable[[], bool],
        on_answer: Callable[[Target, Any, BaseException | None], None],
        soft_deadline: float | None = None,
        on_slow: Callable[[Target], None] | None = None,
    ) -> bool:
        """Feed answers to `on_answer` until `done()` or the deadline. True when it timed out.

        `on_answer` may add calls (a replacement target); they are waited for too. At `soft_deadline`,
        `on_slow` is told once about each target that has not answered yet. Futures still running at the
        end keep running; a later _collect with the same `seen` set picks their answers up (read repair
        does); each future is reported once.
        """
        loop = asyncio.get_running_loop()
        while not done():
            pending = [f for f in calls if f not in seen]
            for f in pending:
                if f.done():
                    seen.add(f)
                    exc = f.exception()
                    on_answer(calls[f], None if exc else f.result(), exc)
            pending = [f for f in calls if f not in seen]
            if done() or not pending:
                break
            now = loop.time()
            if now >= deadline:
                return True
            wake = deadline
            if soft_deadline is not None and on_slow is not None:
                if now >= soft_deadline:
                    for f in pending:
                        on_slow(calls[f])
                    soft_deadline = None
                    continue
                wake = min(wake, soft_deadline)
            await asyncio.wait(pending, timeout=wake - now, return_when=asyncio.FIRST_COMPLETED)
        return False
