"""Hinted handoff: the background worker that delivers hints to primaries that came back.

Hints live in the storage's "hints" namespace under `<target>\\0<storage key>`, each the merged state of
every hinted write for that key. The worker asks `handoff.hints.HandoffPlanner` which targets are due
(the failure detector sees them up), reads a rate-limited batch, sends it with `handoff.deliver` (the
primary merges each state with causality, so a hint never overwrites a newer version), and deletes a hint
only after the primary acknowledged it, and only if no newer hinted write merged into it meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client.core import Metric

from dynamostore.kv import versioning as v
from dynamostore.config import HandoffSettings
from dynamostore.metrics import gauge
from dynamostore.kv.replica import hint_prefix, split_hint_key
from dynamostore.storage.keys import split_data_key
from handoff.hints import HandoffPlanner, within_hint_window

if TYPE_CHECKING:
    from dynamostore.node import Node

log = logging.getLogger(__name__)


class HandoffWorker:
    def __init__(self, node: Node, settings: HandoffSettings) -> None:
        self.node = node
        self.settings = settings
        self.planner = HandoffPlanner(settings.concurrency, settings.rate_per_sec)
        self._kick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # --- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        self.node.replica.on_new_hint = self.planner.hinted
        self.node.router.register("handoff.deliver", self._rpc_deliver)
        await self._recount()
        if self.settings.enabled:
            self._task = asyncio.create_task(self._run(), name="handoff")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def peer_up(self, peer: str) -> None:
        self.planner.wake(peer)
        self._kick.set()

    async def _recount(self) -> None:
        """Count pending hints per target from the store (at start: hints survive restarts)."""
        counts: dict[str, int] = {}
        after: bytes | None = None
        while True:
            rows = await self.node.storage.scan("hints", b"", start_after=after, limit=5000)
            if not rows:
                break
            for hkey, _ in rows:
                target, _ = split_hint_key(hkey)
                counts[target] = counts.get(target, 0) + 1
            after = rows[-1][0]
        for target, n in counts.items():
            self.planner.set_pending(target, n)
        if counts:
            log.info("hints pending at start: %s", counts)

    # --- policy for the coordinator -------------------------------------------------------------------

    def may_hint(self, primary: str) -> bool:
        """Hint a down primary only within the hint window and below the per-target cap."""
        loop = asyncio.get_running_loop()
        if not within_hint_window(self.node.detector.down_since(primary), loop.time(),
                                  self.settings.max_hint_window_s):
            return False
        return self.accepts_hint(primary)

    def accepts_hint(self, primary: str) -> bool:
        return self.planner.progress(primary).pending < self.settings.max_hints_per_target

    # --- delivery -------------------------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                await asyncio.wait_for(self._kick.wait(), self.settings.interval_ms / 1000)
            except asyncio.TimeoutError:
                pass
            self._kick.clear()
            for target in self.planner.due(self.node.up_set(), loop.time()):
                self.planner.start(target)
                self.node.spawn(self._deliver(target), f"handoff-{target}")

    async def _deliver(self, target: str) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self.node.detector.is_up(target):
                n = self.planner.allowance(loop.time())
                if n == 0:
                    await asyncio.sleep(self.planner.batch_size / self.planner.rate_per_sec / 4)
                    continue
                rows = await self.node.storage.scan("hints", hint_prefix(target), limit=n)
                if not rows:
                    self.planner.set_pending(target, 0)
                    return
                batch = [[split_hint_key(hkey)[1], raw] for hkey, raw in rows]
                try:
                    await self.node.call(target, "handoff.deliver", batch, 10.0)
                except Exception as exc:  # noqa: BLE001 - any failure: back off, keep the hints
                    self.planner.failed(target, type(exc).__name__, loop.time())
                    log.info("handoff to %s failed (%s); will retry", target, type(exc).__name__)
                    return
                dropped = 0
                for hkey, raw in rows:
                    dropped += await self.node.storage.update("hints", hkey, _delete_if_unchanged(raw))
                self.planner.delivered(target, dropped, loop.time())
                self.node.metrics.hints_delivered.labels(target).inc(dropped)
        finally:
            self.planner.finish(target)

    async def _rpc_deliver(self, payload: Any, peer: str) -> Any:
        from dynamostore.net.rpc import RpcRemoteError

        try:
            items = [(bytes(skey), v.decode(bytes(raw))) for skey, raw in payload]
            for skey, _ in items:
                p, _, _ = split_data_key(skey)
                if p >= self.node.config.cluster.partitions:
                    raise ValueError(f"partition {p} out of range")
        except (TypeError, ValueError) as exc:
            raise RpcRemoteError("bad_request", f"handoff.deliver payload: {exc}") from exc
        for skey, state in items:
            await self.node.replica.merge_raw(skey, state)
        return len(items)

    # --- observability --------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        now = loop.time()
        return {
            "handoff": {
                "enabled": self.settings.enabled,
                "pending": {t: p.pending for t, p in sorted(self.planner.targets.items())},
                "pending_total": sum(p.pending for p in self.planner.targets.values()),
                "delivered": {t: p.delivered for t, p in sorted(self.planner.targets.items())},
                "in_progress": sorted(self.planner.in_flight),
                "last_delivery_ago_s": {
                    t: round(now - p.last_delivery, 3)
                    for t, p in sorted(self.planner.targets.items()) if p.last_delivery is not None
                },
                "last_error": {t: p.last_error for t, p in sorted(self.planner.targets.items()) if p.last_error},
            }
        }

    def gauges(self) -> Iterable[Metric]:
        for t, p in sorted(self.planner.targets.items()):
            yield gauge("dynamostore_hints_pending", "Hints held for a target", float(p.pending), {"target": t})


def _delete_if_unchanged(sent: bytes) -> Any:
    def apply(raw: bytes | None) -> tuple[bytes | None, int]:
        if raw == sent:
            return None, 1
        return raw, 0  # a newer hinted write merged in meanwhile: keep it for the next round

    return apply
