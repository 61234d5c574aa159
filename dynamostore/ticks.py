"""Deadline ticks shared by the RPC client's call timeouts and the coordinators' request deadlines.

Deadlines are bucketed per 10 ms tick with one loop timer per bucket: a TimerHandle created and cancelled per
call or request cost 4 us of CPU (measured), against well under 1 us for a set insertion.
"""

from __future__ import annotations

TICKS_PER_S = 100  # timeout granularity (10 ms) of RPC calls and of coordinated requests


def tick_after(when: float) -> int:
    """The 10 ms tick whose timer fires after loop time `when`: deadlines are bucketed per tick, one timer
    per bucket instead of a timer handle created and cancelled per call (never early, at most a tick late)."""
    return int(when * TICKS_PER_S) + 1
