"""Ownership transfer: streaming partitions to their new owner after a committed membership change.

Receiver-driven: for every pending transfer that makes this node a primary of some key partition (its
target, or a node pulled in when preference lists collapse), pull each of its streams to this node
(`handoff.transfer.plan_transfer`) from the stream's source in throttled batches (`transfer.fetch`), merge
every record in with causality, and persist the cursor after each batch so a crash of either side resumes
where it stopped; each stream ends with a catch-up pass, which starts once every reachable member has applied
the commit (from then on every coordinator sends the partition's writes to its pending owners). The transfer's target then asks every other
receiver whether its streams are done (`transfer.ready`, answered from the saved cursors) and proposes
`TransferDone` naming them through Raft; ownership moves (and the receivers start serving reads for the
partition) only when that entry is applied. Writes made during the move reach every pending owner too (the
coordinator adds them as extra targets, and hints a copy it could not deliver).

`step()` starts the receptions that are due; the asyncio driver calls it when the ring changes or every
second. `receive(plan)` is one transfer, end to end; unit tests drive both with fakes.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from prometheus_client.core import Metric

from dynamostore.config import TransferSettings
from dynamostore.kv import versioning as v
from dynamostore.kv.replica import LocalReplica
from dynamostore.metrics import gauge
from dynamostore.net.rpc import RpcRemoteError
from dynamostore.views import Clock, Methods, Peers, Placement
from handoff.transfer import (
    BatchPolicy,
    Cursor,
    TransferPlan,
    cursor_key,
    cursor_key_of,
    decode_cursor,
    done_command,
    encode_cursor,
    incoming,
    moves,
    my_streams,
    resume,
    start_after,
    still_pending,
)
from ring.membership import NOT_READY, Command, MembershipState, Result, Status, Transfer, pending_owner_of
from ring.pacing import TokenBucket

log = logging.getLogger(__name__)

FETCH_TIMEOUT = 30.0
PROPOSE_TIMEOUT = 30.0
PLAN_EPOCH_TIMEOUT = 2.0  # a member that does not answer this fast is not waited for
MAX_FETCH = 10_000
TIDY_EVERY = 30.0  # seconds between passes that drop partitions this node no longer replicates

Propose = Callable[[Command, float], Awaitable[Result]]


class TransferService:
    def __init__(self, settings: TransferSettings, *, placement: Placement, replica: LocalReplica, peers: Peers,
                 methods: Methods, propose: Propose, clock: Clock) -> None:
        self.settings = settings
        self.placement = placement
        self.replica = replica
        self.peers = peers
        self.methods = methods
        self.propose = propose
        self.clock = clock
        self.policy = BatchPolicy(max_keys=settings.batch_keys)
        self.throttle = TokenBucket(settings.keys_per_sec, max(settings.keys_per_sec, settings.batch_keys))
        self.active: dict[Transfer, asyncio.Task[None]] = {}
        self.keys_received = 0
        # per transfer being received: its streams, how many are done, keys received (for /status and the console)
        self.progress: dict[Transfer, dict[str, Any]] = {}
        self.done: list[dict[str, Any]] = []
        self._proposed: set[tuple[int, Transfer]] = set()  # done and committed; the local apply may lag
        self._streamed: set[bytes] = set()  # cursor keys of this node's finished streams (both passes)
        self._kick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._tidy_task: asyncio.Task[list[int]] | None = None
        self._tidied_at = -TIDY_EVERY
        self._tidied_epoch = -1
        self.partitions_dropped = 0

    async def start(self) -> None:
        self.methods.register("transfer.fetch", self._rpc_fetch)
        self.methods.register("transfer.ready", self._rpc_ready)
        self.methods.register("transfer.plan_epoch", self._rpc_plan_epoch)
        self._task = asyncio.create_task(self._run(), name="transfers")

    async def stop(self) -> None:
        tasks = [t for t in [self._task, self._tidy_task, *self.active.values()] if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def ring_changed(self, state: MembershipState) -> None:
        self._kick.set()

    async def _run(self) -> None:
        while True:
            await self.clock.wait(self._kick, 1.0)
            self._kick.clear()
            self.step()
            self._tidy()

    def _due(self, tp: TransferPlan) -> bool:
        """Whether this node still has work for the transfer: a stream to receive, or (its target) the done
        entry to propose."""
        me = self.placement.node_id
        if any(cursor_key(tp, s) not in self._streamed for s in my_streams(tp, me)):
            return True
        return tp.transfer.target == me and (tp.plan_epoch, tp.transfer) not in self._proposed

    def step(self) -> list[TransferPlan]:
        """Start receiving every pending transfer this node gains from that is not running or already done."""
        state = self.placement.state
        started: list[TransferPlan] = []
        if not state.transfers:
            return started
        for tp in incoming(state, self.placement.node_id):
            if tp.transfer not in self.active and self._due(tp):
                task = asyncio.create_task(self.receive(tp), name=f"transfer-{tp.transfer.partition}")
                self.active[tp.transfer] = task
                task.add_done_callback(functools.partial(self._finished, tp.transfer))
                started.append(tp)
        return started

    @property
    def tidying(self) -> bool:
        return self._tidy_task is not None and not self._tidy_task.done()

    def _tidy(self) -> None:
        """Start a pass of `drop_unowned` after a ring change, and every TIDY_EVERY seconds (a late write from a
        coordinator that had not applied the change yet may have left a copy behind)."""
        epoch, now = self.placement.state.epoch, self.clock.now()
        if self._tidy_task is not None and not self._tidy_task.done():
            return
        if epoch == self._tidied_epoch and now - self._tidied_at < TIDY_EVERY:
            return
        self._tidied_epoch, self._tidied_at = epoch, now
        self._tidy_task = asyncio.create_task(self.drop_unowned(), name="drop-unowned")

    async def drop_unowned(self) -> list[int]:
        """Drop the copy of every key partition this node neither replicates nor is receiving (a pending owner).

        Ownership leaves a node only when a `TransferDone` is applied, which names every new primary as holding
        the partition, so the copy is no longer needed; and dropping it is what keeps a partition that comes
        back here later from reviving records deleted (and reaped) meanwhile. Returns the partitions that had
        records."""
        state = self.placement.state
        ring, me = state.ring, self.placement.node_id
        if ring is None or me not in state.members:
            return []
        keep = set(ring.partitions_of(me, state.n_val)) | pending_owner_of(state, me)
        out: list[int] = []
        for k in range(ring.num_partitions):
            if state is not self.placement.state:
                break  # a newer ring: its own pass follows
            if k in keep:
                continue
            n = await self.replica.drop_partition(k)
            await self._forget_streams(state, k)
            if n:
                out.append(k)
                self.partitions_dropped += 1
                log.info("dropped %d records of key partition %d: %s no longer replicates it", n, k, me)
        return out

    async def _forget_streams(self, state: MembershipState, key_partition: int) -> None:
        """A dropped key partition's finished streams of the current plan no longer hold: should a later ring of
        the same plan make this node gain it again, it streams it again (its cursors start over)."""
        for t in state.transfers:
            ckey = cursor_key_of(state.plan_epoch, t.partition, t.target, key_partition)
            saved = await self.replica.load_meta(ckey)
            if saved is not None:
                fresh = Cursor(state.plan_epoch, t.partition, t.target, key_partition)
                await self.replica.save_meta(ckey, encode_cursor(fresh))
            self._streamed.discard(ckey)

    def _finished(self, key: Transfer, task: asyncio.Task[None]) -> None:
        self.active.pop(key, None)
        if not task.cancelled() and task.exception() is not None:
            log.warning("transfer of partition %d failed: %r; retrying", key.partition, task.exception())
        self._kick.set()

    async def receive(self, tp: TransferPlan) -> None:
        """Stream every key partition this node gains by one transfer (resuming from saved cursors); its
        target then waits for the other receivers and proposes it done."""
        started = self.clock.now()
        cursors: dict[int, Cursor] = {}
        mine = my_streams(tp, self.placement.node_id)
        progress = self.progress[tp.transfer] = {"streams": len(mine), "streams_done": 0, "keys": 0,
                                                 "receivers": sorted({s.receiver for s in tp.streams}),
                                                 "waiting_for": []}
        try:
            await self._receive(tp, started, cursors, progress)
        finally:
            self.progress.pop(tp.transfer, None)

    async def _receive(self, tp: TransferPlan, started: float, cursors: dict[int, Cursor],
                       progress: dict[str, Any]) -> None:
        me = self.placement.node_id
        tidy = self._tidy_task
        if tidy is not None and not tidy.done():
            await asyncio.wait([tidy])  # a pass for an older ring may still drop a partition this one gains
        applied_everywhere = False
        for stream in my_streams(tp, me):
            ckey = cursor_key(tp, stream)
            saved = await self.replica.load_meta(ckey)
            c = resume(tp, stream, decode_cursor(saved) if saved else None)
            progress["keys"] += c.keys  # received before a restart
            while not c.done:
                if not still_pending(self.placement.state, tp):
                    return  # the plan moved on (the change completed elsewhere or was superseded)
                grant = self.throttle.take(self.policy.max_keys, self.clock.now())
                if grant == 0:
                    await self.clock.sleep(self.throttle.wait(self.policy.max_keys, self.clock.now()))
                    continue
                rows = await self.peers.call(stream.source, "transfer.fetch",
                                             [stream.key_partition, start_after(c), grant], FETCH_TIMEOUT)
                await asyncio.gather(*(self.replica.merge_raw(bytes(k), v.decode(bytes(raw))) for k, raw in rows))
                if rows:
                    if not c.final:  # the catch-up pass re-reads what the first one received
                        self.keys_received += len(rows)
                        progress["keys"] += len(rows)
                    c = c.advance(bytes(rows[-1][0]), len(rows))
                if len(rows) < grant:
                    c = c.finish()
                    if c.final and not c.done and not applied_everywhere:
                        # the catch-up pass must see every write of coordinators that did not know of the move
                        await self._commit_applied_everywhere(tp)
                        applied_everywhere = True
                await self.replica.save_meta(ckey, encode_cursor(c))
            cursors[stream.key_partition] = c
            self._streamed.add(ckey)
            progress["streams_done"] += 1
        if tp.transfer.target != me:
            return  # the target proposes the done entry once every receiver is ready
        while True:
            waiting = await self._not_ready(tp)
            progress["waiting_for"] = waiting
            if not waiting:
                break
            if not still_pending(self.placement.state, tp):
                return
            await self.clock.wait(None, 1.0)
        res = await self.propose(done_command(tp), PROPOSE_TIMEOUT)
        if not res.ok and NOT_READY in res.reason:
            # the ring changed since this plan (another transfer was applied) and pulls another node in:
            # plan again once this node has applied it
            log.info("transfer of partition %d: %s", tp.transfer.partition, res.reason)
            await self.clock.wait(None, 1.0)
            return
        self._proposed.add((tp.plan_epoch, tp.transfer))
        keys = sum(c.keys for c in cursors.values())
        took = self.clock.now() - started
        self.done.append({"partition": tp.transfer.partition, "source": tp.transfer.source, "keys": keys,
                          "seconds": round(took, 3), "committed": res.ok, "reason": res.reason})
        log.info("transfer of partition %d from %s done: %d keys in %.2fs (%s)", tp.transfer.partition,
                 tp.transfer.source, keys, took, "committed" if res.ok else res.reason)

    async def _commit_applied_everywhere(self, tp: TransferPlan) -> None:
        """Wait until every member this node can reach has applied the commit that planned the transfer: from
        then on every coordinator sends the partition's writes to its pending owners too, so a catch-up pass
        that starts afterwards has every write the pending owners were not sent. A member that does not
        answer coordinates nothing this node could see (it is down, or cut off)."""
        me = self.placement.node_id
        waiting = [m for m in self.placement.state.live_members() if m != me]
        while waiting:
            lagging: list[str] = []
            for node in waiting:
                try:
                    epoch = int(await self.peers.call(node, "transfer.plan_epoch", None, PLAN_EPOCH_TIMEOUT))
                except Exception as exc:  # noqa: BLE001 - unreachable (or an older release): not waited for
                    log.debug("transfer.plan_epoch on %s: %r", node, exc)
                    continue
                if epoch < tp.plan_epoch:
                    lagging.append(node)
            if not lagging or not still_pending(self.placement.state, tp):
                return
            waiting = lagging
            await self.clock.wait(None, 0.2)

    async def _rpc_plan_epoch(self, payload: Any, peer: str) -> Any:
        return self.placement.state.plan_epoch

    async def _not_ready(self, tp: TransferPlan) -> list[str]:
        """Receivers of the transfer's streams that have not finished them (this node's own are done), and a
        leaving source that still holds hints (it hands them to their keys' owners before it is removed)."""
        me, state, t = self.placement.node_id, self.placement.state, tp.transfer
        wanted: dict[str, list[int]] = {}
        for s in tp.streams:
            if s.receiver != me:
                wanted.setdefault(s.receiver, []).append(s.key_partition)
        src = state.members.get(t.source)
        drain = src is not None and src.status is Status.LEAVING and t.source not in state.down
        if drain:
            wanted.setdefault(t.source, [])
        waiting: list[str] = []
        for node, kps in sorted(wanted.items()):
            hints = drain and node == t.source
            try:
                answer = await self.peers.call(node, "transfer.ready", [tp.plan_epoch, t.partition, t.target, kps, hints],
                                               FETCH_TIMEOUT)
                done, held = {int(k) for k in answer["done"]}, int(answer["hints"])
            except Exception as exc:  # noqa: BLE001 - unreachable or older: ask again later
                log.debug("transfer.ready on %s: %r", node, exc)
                waiting.append(node)
                continue
            if not set(kps) <= done or held:
                waiting.append(node)
        return waiting

    async def _rpc_ready(self, payload: Any, peer: str) -> Any:
        """Which of the named key partitions of a transfer this node has finished receiving (both passes), and
        (when asked: this node is a leaving source) whether it still holds hints (1) or not (0)."""
        try:
            epoch, slot, target, kps, *more = payload
            epoch, slot, target, kps = int(epoch), int(slot), str(target), [int(k) for k in kps]
            hints = bool(more[0]) if more else False
        except (TypeError, ValueError) as exc:
            raise RpcRemoteError("bad_request", f"transfer.ready payload: {exc}") from exc
        done: list[int] = []
        for kp in kps:
            raw = await self.replica.load_meta(cursor_key_of(epoch, slot, target, kp))
            if raw is not None and decode_cursor(raw).done:
                done.append(kp)
        held = hints and await self.replica.has_hints()
        return {"done": done, "hints": int(held)}

    async def _rpc_fetch(self, payload: Any, peer: str) -> Any:
        try:
            kp, after, limit = payload
            kp, limit = int(kp), min(int(limit), MAX_FETCH)
            after = None if after is None else bytes(after)
        except (TypeError, ValueError) as exc:
            raise RpcRemoteError("bad_request", f"transfer.fetch payload: {exc}") from exc
        rows = await self.replica.scan_partition(kp, after, limit)
        return [[k, raw] for k, raw in rows]

    def status(self) -> dict[str, Any]:
        state = self.placement.state
        return {"transfers": {"pending": len(state.transfers),
                              "moves": moves(state) if state.ring is not None else [],
                              "receiving": sorted(t.partition for t in self.active),
                              "partitions_dropped": self.partitions_dropped,
                              "progress": [{"partition": t.partition, "source": t.source, **p}
                                           for t, p in sorted(self.progress.items(), key=lambda kv: kv[0].partition)],
                              "keys_received": self.keys_received, "completed": self.done[-20:]}}

    def gauges(self) -> Iterable[Metric]:
        yield gauge("dynamostore_transfer_keys_received", "Keys received by ownership transfers", float(self.keys_received))
