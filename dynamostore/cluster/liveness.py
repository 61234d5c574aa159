"""This node's view of which peers are up: a pure detector core and its heartbeat driver.

Liveness is not membership: membership says who owns what; liveness only steers requests around nodes
that are not answering right now. The detector is fed by ordinary traffic (every RPC outcome) and by light
heartbeats. A refused or broken connection marks a peer down at once; silence marks it down after
`down_after` seconds; any answer marks it up again. Time comes in as an argument.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass
class PeerState:
    up: bool = True
    last_ok: float | None = None
    last_failure: float | None = None
    last_error: str = ""
    changed_at: float = 0.0
    transitions: int = 0


class Detector:
    """Pure core. Peers start up (optimistic: the first request finds out fast if not)."""

    def __init__(self, peers: list[str], down_after: float, now: float) -> None:
        self.down_after = down_after
        self.peers: dict[str, PeerState] = {p: PeerState(last_ok=now, changed_at=now) for p in peers}
        self.version = 0  # bumped by every change of the up set (coordinators cache preference lists by it)

    def add_peer(self, peer: str, now: float) -> bool:
        """Start tracking a peer (a member that joined); True if it is new."""
        if peer in self.peers:
            return False
        self.peers[peer] = PeerState(last_ok=now, changed_at=now)
        self.version += 1
        return True

    def remove_peer(self, peer: str) -> bool:
        """Stop tracking a peer (a member that was removed from the cluster); True if it was tracked."""
        if self.peers.pop(peer, None) is None:
            return False
        self.version += 1
        return True

    def _set(self, peer: str, up: bool, now: float) -> bool:
        st = self.peers[peer]
        if st.up == up:
            return False
        st.up, st.changed_at = up, now
        st.transitions += 1
        self.version += 1
        return True

    def success(self, peer: str, now: float) -> bool:
        """Record an answer; True when this brought the peer back up."""
        if peer not in self.peers:
            return False
        self.peers[peer].last_ok = now
        return self._set(peer, True, now)

    def failure(self, peer: str, now: float, error: str, *, hard: bool) -> bool:
        """Record a failed exchange. Hard failures (refused/broken connection) mark down at once;
        soft ones (a timeout) only once the peer has been silent for `down_after`."""
        st = self.peers.get(peer)
        if st is None:
            return False
        st.last_failure, st.last_error = now, error
        silent = st.last_ok is None or now - st.last_ok >= self.down_after
        if hard or silent:
            return self._set(peer, False, now)
        return False

    def is_up(self, peer: str) -> bool:
        st = self.peers.get(peer)
        return st is None or st.up

    def down_since(self, peer: str) -> float | None:
        st = self.peers.get(peer)
        return None if st is None or st.up else st.changed_at

    def up_set(self, me: str) -> set[str]:
        return {p for p, st in self.peers.items() if st.up} | {me}

    def view(self, now: float) -> dict[str, dict[str, object]]:
        return {
            p: {
                "up": st.up,
                "since_s": round(now - st.changed_at, 3),
                "last_ok_ago_s": None if st.last_ok is None else round(now - st.last_ok, 3),
                "last_error": st.last_error,
                "transitions": st.transitions,
            }
            for p, st in sorted(self.peers.items())
        }


Probe = Callable[[str, float], Awaitable[None]]  # (peer, timeout) -> None or raises


class Heartbeater:
    """Asyncio driver: probes every peer each `interval` and feeds the detector."""

    def __init__(
        self,
        detector: Detector,
        probe: Probe,
        interval: float,
        *,
        is_hard: Callable[[BaseException], bool],
        on_up: Callable[[str], None] | None = None,
    ) -> None:
        self.detector = detector
        self.probe = probe
        self.interval = interval
        self.is_hard = is_hard
        self.on_up = on_up
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def start(self) -> None:
        # One loop per peer, so a peer that hangs until the probe times out delays nobody else's probe.
        for p in self.detector.peers:
            self.watch(p)

    def watch(self, peer: str) -> None:
        """Probe a peer (also one added to the detector after start())."""
        if peer not in self._tasks:
            self._tasks[peer] = asyncio.create_task(self._run(peer), name=f"heartbeat-{peer}")

    def unwatch(self, peer: str) -> None:
        """Stop probing a peer (removed from the cluster)."""
        task = self._tasks.pop(peer, None)
        if task is not None:
            task.cancel()

    async def stop(self) -> None:
        for t in self._tasks.values():
            t.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def _one(self, peer: str) -> None:
        loop = asyncio.get_running_loop()
        try:
            await self.probe(peer, self.detector.down_after)
        except Exception as exc:  # noqa: BLE001 - every failure is information for the detector
            if self.detector.failure(peer, loop.time(), type(exc).__name__, hard=self.is_hard(exc)):
                log.warning("peer %s is down (%s)", peer, type(exc).__name__)
        else:
            if self.detector.success(peer, loop.time()):
                log.info("peer %s is up again", peer)
                if self.on_up:
                    self.on_up(peer)

    async def _run(self, peer: str) -> None:
        while True:
            await self._one(peer)
            await asyncio.sleep(self.interval)
