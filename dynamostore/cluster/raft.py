"""RaftService: the asyncio driver around the sans-IO ``ring.raft.RaftNode`` (its messages travel in the pure
codec of ``ring.raft.wire``).

One loop task owns the RaftNode; nothing else touches it. Incoming messages, proposals and other requests
are queued and handled by that task, which then drains the node's Readys following the Ready contract
(ring/raft/ready.py): persist snapshot/entries/hard state with ``RaftLogStore`` in a worker thread (fsynced),
only then hand messages to per-peer sender tasks, restore a newer snapshot, apply committed entries in
order through ``apply``, serve ReadIndex answers, then ``advance``. Ticks come from the loop's clock.

Every ``compact_every`` applied entries the state machine is snapshotted with ``snapshot()`` and the log is
compacted. On restart the service loads the log store, restores the snapshot and replays the committed
entries after it through ``apply``.

A failure inside the loop (disk error, an exception from ``apply``) is fatal: it is logged, every waiter
gets a ``RaftServiceError`` carrying it, ``status()`` shows it, and later calls raise it. A send failure is
only logged (peers come and go; Raft retries).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from dynamostore.cluster.raftlog import RaftLogStore
from ring.raft import (
    ConfChange,
    Entry,
    EntryType,
    Message,
    NotLeader,
    PersistentState,
    ProposalDropped,
    RaftConfig,
    RaftNode,
    Ready,
    Role,
)
from ring.raft.wire import WireError, decode_message, encode_message

log = logging.getLogger(__name__)

SEND_QUEUE_LIMIT = 1024  # per peer; beyond it messages are dropped (Raft resends what matters)


# ---- errors ------------------------------------------------------------------------------------------------


class RaftServiceError(Exception):
    """Base of everything RaftService raises."""


class NotLeaderError(RaftServiceError):
    def __init__(self, leader_id: str | None) -> None:
        super().__init__(f"not the Raft leader (leader is {leader_id!r})")
        self.leader_id = leader_id


class ProposalRefused(RaftServiceError):
    """The leader refused the request (leadership transfer or membership change in progress, ...)."""


class ProposalLost(RaftServiceError):
    """Another leader's entry took the proposal's log index: it will never be applied."""


class RaftTimeout(RaftServiceError, TimeoutError):
    """The deadline passed; for a proposal the outcome is unknown (it may still be applied)."""


class ServiceStopped(RaftServiceError):
    pass


# ---- the service -------------------------------------------------------------------------------------------

_Request = tuple[Callable[[], Any], "asyncio.Future[Any]"]


class RaftService:
    def __init__(
        self,
        node_id: str,
        data_dir: Path,
        *,
        send: Callable[[str, bytes], Awaitable[None]],
        apply: Callable[[int, bytes], Any],
        snapshot: Callable[[], bytes],
        restore: Callable[[bytes], None],
        bootstrap_voters: list[str] | None,
        bootstrap_learners: list[str] | None = None,
        tick_interval: float = 0.05,
        election_ticks: int = 10,
        rng: random.Random | None = None,
        compact_every: int = 1000,
        read_index_via: Callable[[str], Awaitable[int]] | None = None,
        fsync: bool = True,
    ) -> None:
        """``read_index_via(leader_id)``: how a follower asks the leader for a read index (an RPC to the
        leader's ``read_index``); without it ``read_barrier`` on a follower raises NotLeaderError."""
        self.id = node_id
        self._dir = Path(data_dir)
        self._send_fn = send
        self._apply_fn = apply
        self._snapshot_fn = snapshot
        self._restore_fn = restore
        self._bootstrap = bootstrap_voters
        self._bootstrap_learners = bootstrap_learners or []
        self._tick_interval = tick_interval
        self._cfg = RaftConfig(election_ticks=election_ticks, heartbeat_ticks=max(1, election_ticks // 10))
        self._rng = rng or random.Random()
        self._compact_every = compact_every
        self._read_index_via = read_index_via
        self._fsync = fsync
        self._store: RaftLogStore | None = None
        self._node: RaftNode | None = None
        self._applied = 0
        self._inbox: list[Message] = []
        self._requests: list[_Request] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._senders: dict[str, tuple[asyncio.Queue[bytes], asyncio.Task[None]]] = {}
        self._apply_waiters: dict[int, list[tuple[int, asyncio.Future[Any]]]] = {}
        self._read_waiters: dict[bytes, asyncio.Future[int]] = {}
        self._watchers: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        self._ctx_seq = itertools.count(1)
        self._failure: BaseException | None = None
        self._stopping = False
        self.snapshots_taken = 0

    # ---- lifecycle ----
    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("already started")
        self._store = await asyncio.to_thread(RaftLogStore, self._dir, fsync=self._fsync)
        ps = await asyncio.to_thread(self._store.load)
        fresh = ps.hard_state.term == 0 and ps.snapshot.index == 0 and not ps.entries
        if fresh and self._bootstrap:
            ps = PersistentState.bootstrap(self._bootstrap, self._bootstrap_learners)
            store = self._store

            def write_initial() -> None:
                store.append(ps.entries)
                store.save_hard_state(ps.hard_state)

            await asyncio.to_thread(write_initial)
        if ps.snapshot.index > 0:
            self._restore_fn(ps.snapshot.data)
        self._applied = ps.snapshot.index
        self._node = RaftNode(self.id, self._cfg, self._rng, ps)
        self._task = asyncio.create_task(self._run(), name=f"raft-{self.id}")

    async def stop(self) -> None:
        """Stop ticking and sending; pending waiters get ServiceStopped. The log stays on disk."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            try:
                await self._task
            except Exception:  # already logged and recorded by _run
                pass
        for _, task in self._senders.values():
            task.cancel()
        for _, task in self._senders.values():
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._senders.clear()
        self._fail_all(ServiceStopped(f"raft service {self.id} stopped"))
        if self._store is not None:
            await asyncio.to_thread(self._store.close)
            self._store = None

    # ---- inputs ----
    async def receive(self, data: bytes) -> None:
        """An encoded Raft message from a peer. Raises WireError on garbage or a message for someone else."""
        m = decode_message(data)
        if m.to != self.id:
            raise WireError(f"message for {m.to!r} delivered to {self.id!r}")
        self._check_running()
        self._inbox.append(m)
        self._wake.set()

    async def propose(self, data: bytes, *, timeout: float) -> Any:
        """Append ``data`` to the log and return ``apply``'s result once it is applied here."""
        return await self._propose_and_wait(lambda n: n.propose(data), timeout)

    async def change_conf(self, change: ConfChange, *, timeout: float) -> None:
        """Add or remove a voter or learner (one change at a time); returns once applied here."""
        await self._propose_and_wait(lambda n: n.propose_conf_change(change), timeout)

    async def read_index(self, *, timeout: float) -> int:
        """Leader only: a commit index confirmed by a quorum heartbeat round after this call started."""
        ctx = f"{self.id}/{next(self._ctx_seq)}".encode()
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def start() -> None:
            self._n.read_index(ctx)
            self._read_waiters[ctx] = fut

        async with self._deadline(timeout, "read index"):
            await self._call(start)
            try:
                return await fut
            finally:
                self._read_waiters.pop(ctx, None)
        raise AssertionError("unreachable: the deadline context either returns or raises")  # for mypy

    async def read_barrier(self, *, timeout: float) -> None:
        """Return once the local state machine is at least as new as the leader's commit at call time."""
        async with self._deadline(timeout, "read barrier"):
            node = self._n
            if node.role is Role.LEADER:
                index = await self.read_index(timeout=timeout)
            elif node.leader is not None and self._read_index_via is not None:
                index = await self._read_index_via(node.leader)
            else:
                raise NotLeaderError(node.leader)
            await self._wait_for(lambda: self._applied >= index)

    async def wait_applied(self, index: int, *, timeout: float) -> None:
        async with self._deadline(timeout, f"apply of index {index}"):
            await self._wait_for(lambda: self._applied >= index)

    async def transfer_leadership(self, to: str, *, timeout: float) -> None:
        """Hand leadership to voter ``to``; returns once this node sees ``to`` as leader."""
        async with self._deadline(timeout, f"leadership transfer to {to}"):
            await self._call(lambda: self._n.transfer_leadership(to))
            await self._wait_for(lambda: self.leader == to)

    async def wait_leader(self, *, timeout: float) -> str:
        """Wait until this node knows a leader; returns its id."""
        async with self._deadline(timeout, "a leader"):
            await self._wait_for(lambda: self.leader is not None)
        leader = self.leader
        assert leader is not None
        return leader

    def status(self) -> dict[str, Any]:
        n = self._node
        if n is None:
            return {"id": self.id, "running": False, "error": repr(self._failure) if self._failure else None}
        return {
            "id": self.id,
            "running": self._task is not None and not self._task.done(),
            "role": n.role.value,
            "term": n.term,
            "leader": n.leader,
            "commit": n.commit,
            "applied": self._applied,
            "voters": sorted(n.conf.voters),
            "learners": sorted(n.conf.learners),
            "first_index": n.log.first_index,
            "last_index": n.log.last_index,
            "log_entries": n.log.last_index - n.log.snapshot.index,
            "snapshot_index": n.log.snapshot.index,
            "error": repr(self._failure) if self._failure else None,
        }

    @property
    def is_leader(self) -> bool:
        return self._node is not None and self._node.role is Role.LEADER

    @property
    def leader(self) -> str | None:
        return self._node.leader if self._node is not None else None

    @property
    def applied_index(self) -> int:
        return self._applied

    # ---- helpers for the public calls ----
    @property
    def _n(self) -> RaftNode:
        self._check_running()
        assert self._node is not None
        return self._node

    def _check_running(self) -> None:
        if self._failure is not None:
            raise RaftServiceError(f"raft service {self.id} failed: {self._failure!r}") from self._failure
        if self._node is None or self._stopping:
            raise ServiceStopped(f"raft service {self.id} is not running")

    def _deadline(self, timeout: float, what: str) -> _Deadline:
        return _Deadline(timeout, f"{self.id}: timed out after {timeout}s waiting for {what}")

    async def _call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the loop task between Readys; translate the core's refusals."""
        self._check_running()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._requests.append((fn, fut))
        self._wake.set()
        return await fut

    async def _propose_and_wait(self, fn: Callable[[RaftNode], int], timeout: float) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def start() -> None:
            n = self._n
            index = fn(n)
            self._apply_waiters.setdefault(index, []).append((n.term, fut))

        async with self._deadline(timeout, "the proposal to be applied (its outcome is unknown)"):
            await self._call(start)
            return await fut

    async def _wait_for(self, pred: Callable[[], bool]) -> None:
        self._check_running()
        if pred():
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._watchers.append((pred, fut))
        try:
            await fut
        finally:
            self._watchers = [(p, f) for p, f in self._watchers if f is not fut]

    # ---- the loop ----
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_tick = loop.time() + self._tick_interval
        try:
            while not self._stopping:
                delay = next_tick - loop.time()
                if delay > 0 and not self._wake.is_set():
                    try:
                        await asyncio.wait_for(self._wake.wait(), delay)
                    except asyncio.TimeoutError:
                        pass
                if self._stopping:
                    break
                self._wake.clear()
                node = self._n
                if loop.time() >= next_tick:
                    node.tick()  # one tick even after a stall: a burst of ticks would force elections
                    next_tick = loop.time() + self._tick_interval
                inbox, self._inbox = self._inbox, []
                for m in inbox:
                    node.step(m)
                requests, self._requests = self._requests, []
                for fn, fut in requests:
                    self._run_request(fn, fut)
                await self._drain(node)
                self._check_watchers()
        except Exception as e:
            log.exception("raft service %s failed", self.id)
            self._failure = e
            self._fail_all(RaftServiceError(f"raft service {self.id} failed: {e!r}"))
            raise

    def _run_request(self, fn: Callable[[], Any], fut: asyncio.Future[Any]) -> None:
        if fut.done():
            return
        try:
            fut.set_result(fn())
        except NotLeader as e:
            fut.set_exception(NotLeaderError(e.leader_hint))
        except ProposalDropped as e:
            fut.set_exception(ProposalRefused(str(e)))
        except ValueError as e:
            fut.set_exception(ProposalRefused(str(e)))

    async def _drain(self, node: RaftNode) -> None:
        while True:
            while node.has_ready():
                rd = node.ready()
                await self._handle_ready(node, rd)
                node.advance(rd)
            if self._compact_every > 0 and self._applied - node.log.snapshot.index >= self._compact_every:
                node.compact(self._applied, self._snapshot_fn())
                self.snapshots_taken += 1
                continue
            return

    async def _handle_ready(self, node: RaftNode, rd: Ready) -> None:
        if rd.must_sync:
            assert self._store is not None
            await asyncio.to_thread(self._store.persist, rd)  # fsynced before anything is sent
        for m in rd.messages:
            self._enqueue_send(m)
        if rd.snapshot is not None and rd.snapshot.index > self._applied:
            self._restore_fn(rd.snapshot.data)
            self._applied = rd.snapshot.index
            self._resolve_up_to(rd.snapshot.index)
        for e in rd.committed_entries:
            if e.index <= self._applied:
                continue
            if e.index != self._applied + 1:
                raise RaftServiceError(f"apply gap: entry {e.index} after {self._applied}")
            result = self._apply_fn(e.index, e.data) if e.type is EntryType.NORMAL and e.data else None
            self._applied = e.index
            self._resolve(e, result)
        for rs in rd.read_states:
            fut = self._read_waiters.pop(rs.ctx, None)
            if fut is not None and not fut.done():
                fut.set_result(rs.index)
        if rd.soft_state is not None and rd.soft_state.role is not Role.LEADER:
            # read requests are lost with leadership: tell their callers now instead of at their deadline
            for ctx, fut in list(self._read_waiters.items()):
                if not fut.done():
                    fut.set_exception(NotLeaderError(rd.soft_state.leader))
                del self._read_waiters[ctx]

    def _resolve(self, e: Entry, result: Any) -> None:
        for term, fut in self._apply_waiters.pop(e.index, []):
            if fut.done():
                continue
            if term == e.term:
                fut.set_result(result)
            else:
                fut.set_exception(ProposalLost(f"index {e.index} was taken by an entry of term {e.term}"))

    def _resolve_up_to(self, index: int) -> None:
        """A snapshot jumped past waiting proposals: whether they made it is unknown here."""
        for i in [i for i in self._apply_waiters if i <= index]:
            for _, fut in self._apply_waiters.pop(i):
                if not fut.done():
                    fut.set_exception(ProposalLost(f"index {i} was covered by a snapshot; outcome unknown"))

    def _check_watchers(self) -> None:
        for pred, fut in self._watchers:
            if fut.done():
                continue
            try:
                if pred():
                    fut.set_result(None)
            except Exception as e:  # a broken predicate fails its waiter, not the loop
                fut.set_exception(e)

    def _fail_all(self, exc: RaftServiceError) -> None:
        futs: list[asyncio.Future[Any]] = [f for _, f in self._requests]
        futs += [f for ws in self._apply_waiters.values() for _, f in ws]
        futs += list(self._read_waiters.values())
        futs += [f for _, f in self._watchers]
        for f in futs:
            if not f.done():
                f.set_exception(exc)
        self._requests.clear()
        self._apply_waiters.clear()
        self._read_waiters.clear()

    # ---- sending ----
    def _enqueue_send(self, m: Message) -> None:
        entry = self._senders.get(m.to)
        if entry is None:
            q: asyncio.Queue[bytes] = asyncio.Queue(SEND_QUEUE_LIMIT)
            task = asyncio.create_task(self._sender(m.to, q), name=f"raft-{self.id}-to-{m.to}")
            entry = self._senders[m.to] = (q, task)
        try:
            entry[0].put_nowait(encode_message(m))
        except asyncio.QueueFull:
            log.warning("raft %s: send queue to %s full, dropping a %s", self.id, m.to, type(m).__name__)

    async def _sender(self, peer: str, q: asyncio.Queue[bytes]) -> None:
        failures = 0
        while True:
            data = await q.get()
            try:
                await self._send_fn(peer, data)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as e:
                failures += 1
                if failures == 1 or failures % 100 == 0:  # a down peer would otherwise flood the log
                    log.warning("raft %s: sending to %s failed (%d in a row): %r", self.id, peer, failures, e)


class _Deadline:
    """``async with``: cancel the body after ``timeout`` seconds and raise RaftTimeout with a message."""

    def __init__(self, timeout: float, message: str) -> None:
        self._timeout = timeout
        self._message = message
        self._cm: Any = None

    async def __aenter__(self) -> None:
        self._cm = asyncio.timeout(self._timeout)
        await self._cm.__aenter__()

    async def __aexit__(self, et: Any, ev: Any, tb: Any) -> bool:
        try:
            await self._cm.__aexit__(et, ev, tb)
        except TimeoutError as e:
            raise RaftTimeout(self._message) from e
        return False
