"""The one token bucket of the background services (pure): how many keys may move now, and how long to wait.

Hinted handoff (`handoff.hints`), ownership transfer (`handoff.transfer`) and anti-entropy repairs
(`antientropy.scheduler`) all pace their work in keys per second with a burst. They share this bucket, and
it lives in `ring` because that is the one package every pure core may import: `antientropy` may import only
`ring`, so a bucket under `handoff/` would be out of its reach. Time comes in as an argument (any monotonic
origin); nothing here reads a clock.
"""

from __future__ import annotations

import math

# Float slack: a driver that sleeps exactly `wait()` seconds must then be granted what it waited for, even
# when rate * elapsed comes out a hair under a whole token.
_EPS = 1e-9


class TokenBucket:
    """`rate` tokens per second, holding at most `burst`; starts full. A rate <= 0 means unlimited.

    The bucket refills from the `now` of each call (time never runs backwards for it: an earlier `now` is
    treated as no time passing). Until the first call it has no notion of time: `now` at construction is
    optional, and the first call starts the clock.
    """

    __slots__ = ("rate", "burst", "_tokens", "_last")

    def __init__(self, rate: float, burst: float, now: float | None = None) -> None:
        self.rate = float(rate)
        self.burst = float(burst)
        self._tokens = self.burst
        self._last = now

    @property
    def unlimited(self) -> bool:
        return self.rate <= 0

    def _refill(self, now: float) -> None:
        last = self._last
        if last is None or now > last:
            if last is not None:
                self._tokens = min(self.burst, self._tokens + (now - last) * self.rate)
            self._last = now

    def available(self, now: float) -> float:
        """Tokens in the bucket now (infinite when unlimited)."""
        if self.unlimited:
            return math.inf
        self._refill(now)
        return self._tokens

    def take(self, want: int, now: float) -> int:
        """Take up to `want` whole tokens now; returns how many were granted (0: wait `wait(want, now)`)."""
        if self.unlimited:
            return want
        self._refill(now)
        granted = max(0, min(want, math.floor(self._tokens + _EPS)))
        self._tokens = max(0.0, self._tokens - granted)
        return granted

    def wait(self, want: float, now: float) -> float:
        """Seconds until `min(want, burst)` tokens are in the bucket; 0 if they are now. Capped at one burst,
        so a batch larger than the bucket waits for a full bucket, not forever."""
        if self.unlimited:
            return 0.0
        self._refill(now)
        missing = min(float(want), self.burst) - self._tokens
        return 0.0 if missing <= _EPS else missing / self.rate
