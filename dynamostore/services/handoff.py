"""Hinted handoff: the background service that delivers hints to primaries that came back.

A fallback keeps the merged state of every hinted write for a key in the replica's hint store
(`handoff.hints.hint_key`). The service asks `handoff.hints.HandoffPlanner` which targets are due (seen up,
with hints, not backing off), reads a rate-limited batch, sends it with `handoff.deliver` (the primary
merges each state with causality, so a hint never overwrites a newer version, and stores it durably: fsynced
before it answers), and drops a hint only after the primary acknowledged it, and only if no newer hinted write
merged into it meanwhile.

Hints follow ring changes: hints held for a node that is no longer a member (removed, or replaced), and every
hint a leaving node holds, go to the key partition's current primaries and pending owners that are up
(`retarget`) instead of waiting for a target that will never be back, or dying with the leaving process.
(A leaving node's transfers complete only once it holds no hints: services/transfer.py asks.)

`step()` is one pass of the loop (start the deliveries that are due); the asyncio driver (`_run`) calls it
when woken (a peer came back up, the ring changed) or every `interval_ms`. Unit tests call it directly with
a fake clock.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client.core import Metric

from dynamostore.config import HandoffSettings
from dynamostore.kv import versioning as v
from dynamostore.kv.replica import LocalReplica
from dynamostore.metrics import gauge
from dynamostore.net.rpc import RpcRemoteError
from dynamostore.storage.keys import split_data_key
from dynamostore.views import Clock, Liveness, Methods, Peers, Placement, Spawner
from handoff.hints import HandoffPlanner, within_hint_window
from ring.membership import MembershipState, Status, pending_write_targets

log = logging.getLogger(__name__)

DELIVER_TIMEOUT = 10.0


class HandoffService:
    def __init__(self, settings: HandoffSettings, *, replica: LocalReplica, peers: Peers, liveness: Liveness,
                 methods: Methods, spawner: Spawner, clock: Clock, partitions: int,
                 delivered: Callable[[str, int], None] = lambda target, n: None,
                 placement: Placement | None = None) -> None:
        self.settings = settings
        self.replica = replica
        self.peers = peers
        self.liveness = liveness
        self.methods = methods
        self.spawner = spawner
        self.clock = clock
        self.partitions = partitions
        self.delivered = delivered  # metrics: hints handed off per target
        self.placement = placement  # where hints of removed targets (or of this node leaving) go instead
        self.planner = HandoffPlanner(settings.concurrency, settings.rate_per_sec)
        self._kick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # --- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        self.replica.on_new_hint = self.planner.hinted
        self.methods.register("handoff.deliver", self._rpc_deliver)
        counts = await self.replica.hint_counts()
        for target, n in counts.items():
            self.planner.set_pending(target, n)
        if counts:
            log.info("hints pending at start: %s", counts)
        if self.settings.enabled:
            self._task = asyncio.create_task(self._run(), name="handoff")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def peer_up(self, peer: str) -> None:
        self.planner.wake(peer)
        self._kick.set()

    def ring_changed(self, state: MembershipState) -> None:
        self._kick.set()

    # --- policy for the coordinator -------------------------------------------------------------------

    def may_hint(self, primary: str) -> bool:
        """Hint a down primary only within the hint window and below the per-target cap."""
        if not within_hint_window(self.liveness.down_since(primary), self.clock.now(),
                                  self.settings.max_hint_window_s):
            return False
        return self.accepts_hint(primary)

    def accepts_hint(self, primary: str) -> bool:
        return self.planner.progress(primary).pending < self.settings.max_hints_per_target

    # --- delivery -------------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            await self.clock.wait(self._kick, self.settings.interval_ms / 1000)
            self._kick.clear()
            self.step()

    def step(self) -> list[str]:
        """Start a delivery to every target that is due now; returns them."""
        now = self.clock.now()
        moved = [t for t, p in sorted(self.planner.targets.items())
                 if p.pending > 0 and t not in self.planner.in_flight and p.retry_at <= now and self.orphaned(t)]
        for target in moved:
            self.planner.start(target)
            self.spawner.spawn(self.retarget(target), f"handoff-retarget-{target}")
        due = [t for t in self.planner.due(self.liveness.up_set(), now) if t not in moved]
        for target in due:
            self.planner.start(target)
            self.spawner.spawn(self.deliver(target), f"handoff-{target}")
        return moved + due

    def _leaving(self, state: MembershipState) -> bool:
        assert self.placement is not None
        mine = state.members.get(self.placement.node_id)
        return mine is not None and mine.status in (Status.LEAVING, Status.REMOVED)

    def orphaned(self, target: str) -> bool:
        """Whether hints for `target` must go to their keys' current owners instead: it is no longer a member
        (removed, or replaced), or this node is leaving."""
        if self.placement is None:
            return False
        state = self.placement.state
        if not state.initialized:  # no committed membership applied yet (the ring comes from the config)
            return False
        m = state.members.get(target)
        return m is None or m.status is Status.REMOVED or self._leaving(state)

    def destinations(self, key_partition: int) -> list[str]:
        """Where a re-targeted hint of a key partition goes: its current primaries and pending owners that are
        members and up (this node itself unless it is leaving)."""
        assert self.placement is not None
        state, me = self.placement.state, self.placement.node_id
        ring = state.ring
        if ring is None:
            return []
        leaving = self._leaving(state)
        out: list[str] = []
        for node in [*ring.walk(key_partition)[: state.n_val], *pending_write_targets(state, key_partition)]:
            m = state.members.get(node)
            if node in out or m is None or m.status is Status.REMOVED:
                continue
            if (node == me and not leaving) or (node != me and self.liveness.is_up(node)):
                out.append(node)
        return out

    async def retarget(self, target: str) -> None:
        """Hand `target`'s hints to their keys' current owners (`destinations`), then drop them; back off when
        one of those does not take its batch (or a key has none up)."""
        me = self.placement.node_id if self.placement is not None else ""
        try:
            while True:
                n = self.planner.allowance(self.clock.now())
                if n == 0:
                    await self.clock.sleep(self.planner.batch_size / self.planner.rate_per_sec / 4)
                    continue
                rows = await self.replica.hints_for(target, n)
                if not rows:
                    self.planner.set_pending(target, 0)
                    return
                batches: dict[str, list[list[bytes]]] = {}
                for skey, raw in rows:
                    dests = self.destinations(split_data_key(skey)[0])
                    if not dests:
                        self.planner.failed(target, "no owner of a hinted key is up", self.clock.now())
                        return
                    for d in dests:
                        batches.setdefault(d, []).append([skey, raw])
                try:
                    for d, items in sorted(batches.items()):
                        if d == me:  # durably, like a delivered hint: the hint is dropped right after
                            for skey, raw in items:
                                await self.replica.merge_raw(skey, v.decode(raw), durable=True)
                        else:
                            await self.peers.call(d, "handoff.deliver", items, DELIVER_TIMEOUT)
                except Exception as exc:  # noqa: BLE001 - any failure: back off, keep the hints
                    self._failed(target, "re-targeting hints for", exc)
                    return
                await self._drop_delivered(target, rows)
        finally:
            self.planner.finish(target)

    async def deliver(self, target: str) -> None:
        """Hand off `target`'s hints in rate-limited batches while it is up; back off after a failure."""
        try:
            while self.liveness.is_up(target):
                n = self.planner.allowance(self.clock.now())
                if n == 0:
                    await self.clock.sleep(self.planner.batch_size / self.planner.rate_per_sec / 4)
                    continue
                rows = await self.replica.hints_for(target, n)
                if not rows:
                    self.planner.set_pending(target, 0)
                    return
                try:
                    await self.peers.call(target, "handoff.deliver", [[skey, raw] for skey, raw in rows],
                                          DELIVER_TIMEOUT)
                except Exception as exc:  # noqa: BLE001 - any failure: back off, keep the hints
                    self._failed(target, "handoff to", exc)
                    return
                await self._drop_delivered(target, rows)
        finally:
            self.planner.finish(target)

    def _failed(self, target: str, what: str, exc: Exception) -> None:
        self.planner.failed(target, type(exc).__name__, self.clock.now())
        log.info("%s %s failed (%s); will retry", what, target, type(exc).__name__)

    async def _drop_delivered(self, target: str, rows: list[tuple[bytes, bytes]]) -> None:
        """The hints of `rows` are stored by their recipients: drop each one no write changed meanwhile."""
        dropped = 0
        for skey, raw in rows:
            dropped += await self.replica.drop_hint_if_unchanged(target, skey, raw)
        self.planner.delivered(target, dropped, self.clock.now())
        self.delivered(target, dropped)

    async def _rpc_deliver(self, payload: Any, peer: str) -> Any:
        try:
            items = [(bytes(skey), v.decode(bytes(raw))) for skey, raw in payload]
            for skey, _ in items:
                p, _, _ = split_data_key(skey)
                if p >= self.partitions:
                    raise ValueError(f"partition {p} out of range")
        except (TypeError, ValueError) as exc:
            raise RpcRemoteError("bad_request", f"handoff.deliver payload: {exc}") from exc
        # Durable before the ack: the sender drops its hints once this returns, and a hint may be the only other
        # copy of a write acknowledged as durable. Always durable (a hint does not record how its writes were
        # acknowledged); queued together, the merges share group commits and one fsync per batch.
        await asyncio.gather(*(self.replica.merge_raw(skey, state, durable=True) for skey, state in items))
        return len(items)

    # --- observability --------------------------------------------------------------------------------

    def pending(self) -> dict[str, int]:
        """Hints held here per target (every target this node has held hints for, 0 once drained)."""
        return {t: p.pending for t, p in self.planner.targets.items()}

    def delivered_total(self) -> int:
        return sum(p.delivered for p in self.planner.targets.values())

    def status(self) -> dict[str, Any]:
        now = self.clock.now()
        targets = sorted(self.planner.targets.items())
        return {
            "handoff": {
                "enabled": self.settings.enabled,
                "pending": {t: p.pending for t, p in targets},
                "pending_total": sum(p.pending for _, p in targets),
                "delivered": {t: p.delivered for t, p in targets},
                "in_progress": sorted(self.planner.in_flight),
                "last_delivery_ago_s": {
                    t: round(now - p.last_delivery, 3) for t, p in targets if p.last_delivery is not None
                },
                "last_error": {t: p.last_error for t, p in targets if p.last_error},
            }
        }

    def gauges(self) -> Iterable[Metric]:
        for t, p in sorted(self.planner.targets.items()):
            yield gauge("dynamostore_hints_pending", "Hints held for a target", float(p.pending), {"target": t})
