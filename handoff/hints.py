"""Hinted handoff planning (pure): which targets to deliver to now, how fast, and when to stop hinting.

A fallback holds hints for a down primary in a store of their own. When the failure detector sees the
primary up again, the node's handoff worker delivers them in batches: this module decides which targets
are due (up, with hints, not already being served, not backing off after a failure), how many hints the
rate limit allows right now, and whether a primary has been down too long to keep hinting it
(Cassandra's max_hint_window). Time always comes in as an argument.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass, field

from ring.pacing import TokenBucket


# ---- the layout of the hint store ----------------------------------------------------------------------
# A fallback keeps each hinted key under `<target>\0<storage key>` in a namespace of its own: the hints for
# one target are one contiguous range (delivery scans it), and a node id never contains a NUL byte.


def hint_key(target: str, skey: bytes) -> bytes:
    """Where a fallback keeps the hinted copy of storage key `skey` for the down primary `target`."""
    return target.encode() + b"\x00" + skey


def hint_prefix(target: str) -> bytes:
    """The scan prefix of every hint held for `target`."""
    return target.encode() + b"\x00"


def split_hint_key(hkey: bytes) -> tuple[str, bytes]:
    """Inverse of `hint_key`: (target, storage key)."""
    target, _, skey = hkey.partition(b"\x00")
    return target.decode(), skey


@dataclass
class TargetProgress:
    pending: int = 0
    delivered: int = 0
    failures: int = 0
    retry_at: float = 0.0
    last_delivery: float | None = None
    last_error: str = ""


@dataclass
class HandoffPlanner:
    concurrency: int
    rate_per_sec: float
    batch_size: int = 200
    backoff_base: float = 0.5
    backoff_max: float = 10.0
    targets: dict[str, TargetProgress] = field(default_factory=dict)
    in_flight: set[str] = field(default_factory=set)
    bucket: TokenBucket = field(init=False)

    def __post_init__(self) -> None:
        self.bucket = TokenBucket(self.rate_per_sec, max(self.rate_per_sec, float(self.batch_size)))

    def progress(self, target: str) -> TargetProgress:
        return self.targets.setdefault(target, TargetProgress())

    def set_pending(self, target: str, n: int) -> None:
        self.progress(target).pending = max(0, n)

    def hinted(self, target: str, new_keys: int = 1) -> None:
        self.progress(target).pending += new_keys

    def due(self, up: Container[str], now: float) -> list[str]:
        """Targets to start delivering to now, most hints first, within the concurrency limit."""
        free = self.concurrency - len(self.in_flight)
        if free <= 0:
            return []
        ready = [
            t for t, p in self.targets.items()
            if p.pending > 0 and t in up and t not in self.in_flight and p.retry_at <= now
        ]
        ready.sort(key=lambda t: (-self.targets[t].pending, t))
        return ready[:free]

    def start(self, target: str) -> None:
        self.in_flight.add(target)

    def allowance(self, now: float) -> int:
        """How many hints the rate limit lets the next batch carry (0: wait)."""
        return self.bucket.take(self.batch_size, now)

    def delivered(self, target: str, n: int, now: float) -> None:
        p = self.progress(target)
        p.delivered += n
        p.pending = max(0, p.pending - n)
        p.failures = 0
        p.last_delivery = now

    def failed(self, target: str, error: str, now: float) -> None:
        p = self.progress(target)
        p.failures += 1
        p.last_error = error
        p.retry_at = now + min(self.backoff_max, self.backoff_base * 2 ** (p.failures - 1))

    def finish(self, target: str) -> None:
        self.in_flight.discard(target)

    def wake(self, target: str) -> None:
        """The target came back up: forget any backoff so delivery starts at once."""
        p = self.progress(target)
        p.retry_at = 0.0
        p.failures = 0


def within_hint_window(down_since: float | None, now: float, window: float) -> bool:
    """Keep hinting a primary only while it has been down less than `window` seconds."""
    return down_since is None or now - down_since < window
