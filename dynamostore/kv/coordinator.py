"""The put and get coordinators: thin asyncio drivers around the pure tallies of `quorum.py`.

A put is coordinated by a node in the key's active preference list (any other node forwards it): the
coordinator applies the write locally (minting its dot), sends the resulting state to the other targets,
and answers as soon as the tally is satisfied or cannot be. A get is coordinated by whichever node received
it: it asks R targets (its own copy first, read on the loop), more only when one fails or is slow, answers
once R replies are in, then keeps listening for the stragglers for a short while and repairs the stale
primaries in the background (read repair).

Answers are fed to the tally by callbacks the RPC client calls as it reads them (`_Gather`), and the
coordinator wakes once, when the tally is decided or a deadline passes: no future, task or `asyncio.wait`
per replica call.

Replica calls that are still running when the client is answered are not cancelled: replication completes
in the background and its outcome still feeds the failure detector.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from dynamostore.kv import versioning as v
from dynamostore.kv.quorum import GetTally, PutTally, Reply
from dynamostore.kv.replica import KeyRef, LocalReplica
from dynamostore.net.rpc import RpcError, RpcRemoteError
from dynamostore.outcome import Then, then_from
from dynamostore.ticks import TICKS_PER_S, tick_after
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


class PutResult:
    """A write's answer. Plain slotted classes, not NamedTuples: compiled, building a NamedTuple runs its
    interpreted `__new__` once per request."""

    __slots__ = ("coordinator", "acks", "hinted", "durable", "state")

    def __init__(self, coordinator: str, acks: int, hinted: int, durable: int, state: v.VersionSet) -> None:
        self.coordinator = coordinator
        self.acks = acks
        self.hinted = hinted
        self.durable = durable
        self.state = state


class GetResult:
    """A read's answer."""

    __slots__ = ("coordinator", "replies", "hinted", "state")

    def __init__(self, coordinator: str, replies: int, hinted: int, state: v.VersionSet | None) -> None:
        self.coordinator = coordinator
        self.replies = replies
        self.hinted = hinted
        self.state = state


class ClusterView(Protocol):
    """What a coordinator needs from its node: identity, the ring, liveness and peer calls."""

    node_id: str
    repair_wait: float
    replica_timeout: float
    read_all: bool

    @property
    def ring(self) -> Ring: ...
    @property
    def n_val(self) -> int: ...
    @property
    def liveness_version(self) -> int:
        """Changes whenever some peer goes up or down (preference lists are cached per version)."""
    def up_set(self) -> set[str]: ...
    def may_hint(self, primary: str) -> bool: ...
    def extra_targets(self, partition: int) -> tuple[str, ...]: ...
    async def call(self, node: str, method: str, payload: Any, timeout: float) -> Any: ...
    def call_then(self, node: str, method: str, payload: Any, timeout: float, then: Then) -> None:
        """Call `method` on `node`; its outcome goes to `then(result, exc)`, possibly later."""
    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None: ...


class _Alarms:
    """Request deadlines of one event loop, bucketed per tick like the RPC client's call timeouts
    (`ticks.tick_after`): a TimerHandle created and cancelled per request cost 4 us of CPU (measured),
    against well under 1 us here."""

    __slots__ = ("loop", "buckets")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.buckets: dict[int, set[_Gather]] = {}

    def add(self, when: float, gather: _Gather) -> int:
        """Call `gather.alarm()` once `when` has passed; returns the tick to `discard` it with."""
        tick = tick_after(when)
        bucket = self.buckets.get(tick)
        if bucket is None:
            bucket = self.buckets[tick] = set()
            self.loop.call_at(tick / TICKS_PER_S, self._ring, tick)
        bucket.add(gather)
        return tick

    def discard(self, tick: int, gather: _Gather) -> None:
        bucket = self.buckets.get(tick)
        if bucket is not None:
            bucket.discard(gather)

    def _ring(self, tick: int) -> None:
        for gather in self.buckets.pop(tick, ()):
            gather.alarm()


class _Gather:
    """The replica calls of one request: answers go to `answer` as they arrive (they keep arriving after the
    client was answered: read repair listens to them), and `wait` wakes the coordinator once, when its
    condition holds, every call has answered, or a deadline passes.

    What to do with an answer, or with a call still unanswered at the soft deadline (`slow`), are methods
    of the request's own subclass, not closures: closures that refer to each other and to the gather made
    every request leave a reference cycle (about 20 objects) for the cyclic collector, which then took ~4%
    of a coordinator's CPU. Nothing here refers back to what refers to it, so a finished request is freed
    by reference counting."""

    __slots__ = ("alarms", "loop", "waiting", "_seq", "_waiter", "_until", "_tick", "_deadline", "_slow_due")

    def __init__(self, alarms: _Alarms) -> None:
        self.alarms = alarms
        self.loop = alarms.loop
        self.waiting: dict[int, Target] = {}  # calls not answered yet
        self._seq = 0
        self._waiter: asyncio.Future[bool] | None = None
        self._until: Callable[[], bool] = bool
        self._tick = 0
        self._deadline = 0.0
        self._slow_due = False

    def answer(self, target: Target, result: Any, exc: BaseException | None) -> None:
        raise NotImplementedError

    def slow(self, target: Target) -> None:
        """`target` has not answered by the soft deadline (it may be replaced by another call)."""

    def track(self, target: Target) -> Then:
        """A call to `target` is made: the callback its answer (or failure) is to be given to, once."""
        seq = self._seq = self._seq + 1
        self.waiting[seq] = target

        def arrived(result: Any, exc: BaseException | None) -> None:
            if self.waiting.pop(seq, None) is None:
                return
            self.answer(target, result, exc)
            self._check()

        return arrived

    @property
    def pending(self) -> int:
        return len(self.waiting)

    def answered(self, target: Target, result: Any, exc: BaseException | None) -> None:
        """An answer obtained synchronously (this node's own copy, read on the loop)."""
        self.answer(target, result, exc)
        self._check()

    def _check(self) -> None:
        w = self._waiter
        if w is not None and not w.done() and (self.pending == 0 or self._until()):
            w.set_result(False)

    async def wait(self, until: Callable[[], bool], deadline: float, soft_deadline: float | None = None) -> bool:
        """Wait until `until()` or no call is pending; True when `deadline` passed first. At `soft_deadline`,
        `slow` is told once about each call not answered yet (it may add calls, which are waited for too)."""
        if until() or self.pending == 0:
            return False
        if self.loop.time() >= deadline:
            return True
        w = self._waiter = self.loop.create_future()
        self._until = until
        self._deadline = deadline
        # One alarm at a time: the soft deadline's, which sets the hard one when it rings.
        first = deadline if soft_deadline is None or soft_deadline >= deadline else soft_deadline
        self._slow_due = first < deadline
        self._tick = self.alarms.add(first, self)
        try:
            return await w
        finally:
            self.alarms.discard(self._tick, self)
            self._waiter = None
            self._until = bool

    def alarm(self) -> None:
        """The soft deadline passed (tell `slow`, then wait for the hard one) or the hard one did."""
        w = self._waiter
        if w is None or w.done():
            return
        if not self._slow_due:
            w.set_result(True)
            return
        self._slow_due = False
        self._tick = self.alarms.add(self._deadline, self)
        for t in list(self.waiting.values()):
            self.slow(t)
        self._check()


class _PutGather(_Gather):
    """The writes of one put: this node's own (`me`), then, once it is committed (`committed`), the replicas'.
    A failed or slow replica is replaced by the next spare fallback (sloppy quorum), which keeps the copy as
    a hint for the primary it stands in for."""

    __slots__ = ("view", "me", "targets", "partition", "key", "durable", "timeout", "tally", "spares", "state",
                 "raw", "replaced", "local_done", "local_error", "replica", "ref")

    def __init__(self, alarms: _Alarms, view: ClusterView, me: Target, targets: list[Target], partition: int,
                 key: bytes, durable: bool, timeout: float, tally: PutTally, spares: list[str],
                 replica: LocalReplica | None = None, ref: KeyRef | None = None) -> None:
        super().__init__(alarms)
        self.replica = replica  # where a copy a pending owner did not take is kept as a hint for it
        self.ref = ref
        self.view = view
        self.me = me
        self.targets = targets
        self.partition = partition
        self.key = key
        self.durable = durable
        self.timeout = timeout
        self.tally = tally
        self.spares = spares
        self.state: v.VersionSet | None = None
        self.raw = b""  # the new state's causal encoding, once committed here
        self.replaced: bytes | None = None  # the digest of the state it replaced here (replicas may hold it too)
        self.local_done = False  # this node's write answered (even W=0 waits for it: the answer is its state)
        self.local_error: BaseException | None = None

    def done(self) -> bool:
        return self.local_done and self.tally.done()

    def committed(self, state: v.VersionSet, raw: bytes, replaced: bytes | None) -> None:
        """This node's write is committed (its ack counts when the write's future resolves, after the fsync
        a durable write waits for): send it to the other replicas now."""
        self.state, self.raw, self.replaced = state, raw, replaced
        for t in self.targets:
            if t is not self.me:
                self.send(t)
        # A partition moving to new owners: the write reaches each of them too, without counting toward W
        # (they serve no reads for it until their streams are done); a copy one does not take is kept here
        # as a hint for it, which the handoff service delivers (a pending owner must not miss a write).
        targets = self.targets
        for extra in self.view.extra_targets(self.partition):
            if all(extra != t.node for t in targets):
                self.view.call_then(extra, "kv.put", [self.key, raw, self.durable, None, replaced], self.timeout,
                                    _PendingCopy(self, extra))

    def send(self, t: Target) -> None:
        self.view.call_then(t.node, "kv.put", [self.key, self.raw, self.durable, t.hint_for, self.replaced],
                            self.timeout, self.track(t))

    def answer(self, target: Target, result: Any, exc: BaseException | None) -> None:
        if target is self.me:
            self.local_done = True
        if exc is None:
            self.tally.add_ack(target.node, primary=target.is_primary, durable=self.durable)
        elif target is self.me:
            self.local_error = exc  # nothing was sent: the put fails with this node's reason
        else:
            self.tally.add_error(target.node, _reason(exc))
            self.slow(target)

    def slow(self, target: Target) -> None:
        tally = self.tally
        if target is not self.me and self.spares and not tally.satisfied():
            tally.targets += 1
            self.send(Target(self.spares.pop(0), Role.FALLBACK, hint_for=target.hint_for or target.node))


class _GetGather(_Gather):
    """The replica reads of one get: R replicas are asked, the `reserve` only when one of them fails or is
    slow."""

    __slots__ = ("view", "replica", "ref", "timeout", "tally", "reserve")

    def __init__(self, alarms: _Alarms, view: ClusterView, replica: LocalReplica, ref: KeyRef, timeout: float,
                 tally: GetTally, reserve: list[Target]) -> None:
        super().__init__(alarms)
        self.view = view
        self.replica = replica
        self.ref = ref
        self.timeout = timeout
        self.tally = tally
        self.reserve = reserve

    def ask(self, t: Target) -> None:
        if t.node != self.view.node_id:
            self.view.call_then(t.node, "kv.get", [self.ref.key, t.hint_for], self.timeout, self.track(t))
        else:
            try:
                raw = self.replica.read_now(self.ref, t.hint_for)
            except Exception as exc:  # noqa: BLE001 - reported to the tally like a replica error
                self.answered(t, None, exc)
            else:
                self.answered(t, raw, None)

    def slow(self, target: Target) -> None:
        if self.reserve and not self.tally.satisfied():
            self.tally.reserve -= 1
            self.ask(self.reserve.pop(0))

    def answer(self, target: Target, result: Any, exc: BaseException | None) -> None:
        if exc is not None:
            self.tally.add_error(target.node, _reason(exc))
            self.slow(target)
        elif result is None or type(result) is bytes:
            self.tally.add_reply(Reply(target.node, target.is_primary, raw=result))
        else:
            self.tally.add_error(target.node, f"answered {type(result).__name__}, not a version")
            self.slow(target)


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


class _Plan(NamedTuple):
    targets: list[Target]
    spares: list[str]
    me: Target | None
    local_first: list[Target]  # this node first (its copy is read on the loop), then the apl order


class Coordinator:
    def __init__(self, view: ClusterView, replica: LocalReplica) -> None:
        self.view = view
        self.replica = replica
        self.read_repairs = 0  # counters for /metrics
        self.forwarded = 0
        # Plans per (partition, sloppy) for one ring, N and liveness version; only plans made of primaries
        # are cached (a fallback's eligibility also depends on the hint caps of the handoff worker).
        self._plan_for: tuple[Ring | None, int, int] = (None, 0, -1)
        self._plans: dict[tuple[int, bool], _Plan] = {}
        self._alarms: _Alarms | None = None

    def _alarms_of(self, loop: asyncio.AbstractEventLoop) -> _Alarms:
        alarms = self._alarms
        if alarms is None or alarms.loop is not loop:
            alarms = self._alarms = _Alarms(loop)
        return alarms

    def plan(self, ref: KeyRef, sloppy: bool) -> _Plan:
        """The active preference list of a key, the spare fallbacks left over to replace a failing target,
        this node's place in it, and the order reads ask in. Shared: callers must not modify it."""
        view = self.view
        ring, n, version = view.ring, view.n_val, view.liveness_version
        cached_ring, cached_n, cached_version = self._plan_for
        if ring is not cached_ring or n != cached_n or version != cached_version:
            self._plan_for, self._plans = (ring, n, version), {}
        plan = self._plans.get((ref.partition, sloppy))
        if plan is not None:
            return plan
        up = view.up_set()
        ts = [t for t in apl(ring, ref.partition, n, up) if t.hint_for is None or view.may_hint(t.hint_for)]
        spares: list[str] = []
        if not sloppy:
            ts = [t for t in ts if t.is_primary]
        else:
            used = {t.node for t in ts}
            _, fallbacks = ring.preference_list(ref.partition, n)
            spares = [f for f in fallbacks if f in up and f not in used]
        me = next((t for t in ts if t.node == view.node_id), None)
        local_first = ([me] if me is not None else []) + [t for t in ts if t is not me]
        plan = _Plan(ts, spares, me, local_first)
        if all(t.is_primary for t in ts):
            self._plans[(ref.partition, sloppy)] = plan
        return plan

    # --- writes --------------------------------------------------------------------------------------

    async def put(
        self, key: bytes, value: bytes | None, content_type: str, context: v.Clock, opts: WriteOptions,
        dots: tuple[v.Dot, ...] = (),
    ) -> PutResult:
        """Coordinate a write (or forward it to a node that can). `context` and `dots` are the client's
        context: a version vector and the single dots it covers beyond it (`versioning.update`)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + opts.timeout
        ref = self.replica.ref(key)
        targets, spare_nodes, me, _ = self.plan(ref, opts.sloppy)
        if me is None:
            return await self._forward(ref, value, content_type, context, opts, targets, deadline, dots)
        pw = opts.pw if opts.sloppy else max(opts.pw, opts.w)
        tally = PutTally(w=opts.w, dw=opts.dw, pw=pw, targets=len(targets) + len(spare_nodes))
        if tally.impossible():
            raise Unavailable(_unreachable("w", opts.w, pw, targets, spare_nodes))
        tally.targets = len(targets)
        durable = opts.dw > 0
        gather = _PutGather(self._alarms_of(loop), self.view, me, targets, ref.partition, key, durable, opts.timeout,
                            tally, list(spare_nodes), self.replica, ref)
        then_from(self.replica.coordinate_then(ref, context, value, content_type, durable=durable,
                                               hint_for=me.hint_for, committed=gather.committed, dots=dots),
                   gather.track(me))
        soft = loop.time() + min(self.view.replica_timeout, opts.timeout / 2)
        timed_out = await gather.wait(gather.done, deadline, soft)
        if gather.local_error is not None:
            raise gather.local_error
        out = tally.outcome(timed_out)
        if not out.ok:
            raise Unavailable(out.reason)
        if gather.state is None:  # the deadline passed before this node's own write was committed
            raise Unavailable("timed out before the write was committed on its coordinator")
        return PutResult(self.view.node_id, out.acks, out.hinted, out.durable, gather.state)

    async def _forward(
        self,
        ref: KeyRef,
        value: bytes | None,
        content_type: str,
        context: v.Clock,
        opts: WriteOptions,
        targets: list[Target],
        deadline: float,
        dots: tuple[v.Dot, ...] = (),
    ) -> PutResult:
        """Forward to the first reachable coordinator. A dot cloud travels as a sixth payload element; a node
        of an earlier release refuses six elements as a bad payload and is then sent the context's vector
        alone: the write supersedes less than its context covered (a sibling may stay), never more."""
        loop = asyncio.get_running_loop()
        errors: list[str] = []
        cloud: list[list[Any]] | None = [[a, n] for a, n in dots] if dots else None
        for t in targets:
            while True:  # once, or twice for an earlier release refusing the cloud
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                wire_opts = WriteOptions(opts.w, opts.dw, opts.pw, opts.sloppy, remaining).to_wire()
                payload: list[Any] = [ref.key, value, content_type, sorted(context.items()), wire_opts]
                if cloud is not None:
                    payload.append(cloud)
                try:
                    res = await self.view.call(t.node, "kv.coord_put", payload, remaining + 0.05)
                except RpcRemoteError as remote:
                    if cloud is not None and remote.code == "bad_request" and "kv.coord_put payload" in remote.message:
                        cloud = None
                        continue
                    if remote.code in ("unavailable",):
                        raise Unavailable(remote.message) from remote
                    if remote.code in ("bad_request", "conflict"):
                        raise ForwardError(remote.code, remote.message) from remote
                    errors.append(f"{t.node}: {_reason(remote)}")
                    break
                except RpcError as exc:
                    errors.append(f"{t.node}: {_reason(exc)}")
                    break
                self.forwarded += 1
                coord, acks, hinted, durable, raw = res
                # the coordinator's stored form, local actor included: the actor of the write's dot
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
        started = loop.time()
        deadline = started + opts.timeout
        ref = self.replica.ref(key)
        targets, _, _, order = self.plan(ref, opts.sloppy)
        pr = opts.pr if opts.sloppy else max(opts.pr, opts.r)
        tally = GetTally(r=opts.r, pr=pr, targets=len(targets))
        if tally.impossible():
            raise Unavailable(_unreachable("r", opts.r, pr, targets, []))
        first = len(order) if (self.view.read_all or pr > 0) else opts.r
        reserve = order[first:]
        tally.reserve = len(reserve)
        gather = _GetGather(self._alarms_of(loop), self.view, self.replica, ref, opts.timeout, tally, reserve)
        # Remote replicas first, so they work while this node reads its own copy.
        for t in order[1:first]:
            gather.ask(t)
        if first:
            gather.ask(order[0])
        soft = started + min(self.view.replica_timeout, opts.timeout / 2)
        timed_out = await gather.wait(tally.done, deadline, soft)
        out = tally.outcome(timed_out)
        if not out.ok:
            raise Unavailable(out.reason)
        if gather.pending or tally.repairs():
            self.view.spawn(self._read_repair(ref, tally, gather), "read-repair")
        return GetResult(self.view.node_id, out.replies, out.hinted, out.state)

    async def _read_repair(self, ref: KeyRef, tally: GetTally, gather: _Gather) -> None:
        loop = asyncio.get_running_loop()
        await gather.wait(tally.all_in, loop.time() + self.view.repair_wait)
        stale = tally.repairs()
        merged = tally.merged()
        if not stale or merged is None:
            return
        raw = v.encode(merged, local=False)
        for node in stale:
            try:
                if node == self.view.node_id:
                    await self.replica.merge(ref, merged, durable=False)
                else:
                    await self.view.call(node, "kv.put", [ref.key, raw, False, None], 2.0)
                self.read_repairs += 1
            except Exception as exc:  # noqa: BLE001 - repair is best effort; anti-entropy catches the rest
                log.debug("read repair of %r on %s failed: %s", ref.key, node, exc)


class _PendingCopy:
    """The outcome of a write's copy to a pending owner of its partition: not waited for, but when it fails the
    coordinator keeps the write as a hint for that node (a slotted callable, not a closure: no cycle)."""

    __slots__ = ("gather", "node")

    def __init__(self, gather: _PutGather, node: str) -> None:
        self.gather = gather
        self.node = node

    def __call__(self, result: Any, exc: BaseException | None) -> None:
        g = self.gather
        if exc is None or not g.raw or g.replica is None or g.ref is None:
            return
        # the causal encoding the replicas were sent (this node's local actor bookkeeping stays in its own record)
        then_from(g.replica.merge(g.ref, v.decode(g.raw), durable=g.durable, hint_for=self.node), _hint_kept)


def _hint_kept(result: Any, exc: BaseException | None) -> None:
    if exc is not None:
        log.warning("could not keep a hint for a pending owner: %r", exc)
