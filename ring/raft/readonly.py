"""ReadIndex bookkeeping on the leader (Raft thesis 6.4).

A read request records the commit index at the time it arrived, then the leader confirms it is still leader
with a heartbeat round carrying the request's ``ctx``. When a quorum of voters has acknowledged that ctx,
that request and every request queued before it are ready: the app serves them once it has applied
``index``. Contexts must be unique per request (the caller picks them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .ready import ReadState


@dataclass
class _Pending:
    index: int
    ctx: bytes
    acks: set[str] = field(default_factory=set)


class ReadOnly:
    def __init__(self) -> None:
        self._queue: list[_Pending] = []

    def add(self, index: int, ctx: bytes, self_id: str) -> None:
        self._queue.append(_Pending(index, ctx, {self_id}))

    @property
    def last_ctx(self) -> bytes | None:
        return self._queue[-1].ctx if self._queue else None

    def ack(self, frm: str, ctx: bytes, has_quorum: Callable[[set[str]], bool]) -> list[ReadState]:
        """Record ``frm``'s acknowledgement of ``ctx`` (which also vouches for every earlier request)."""
        pos = next((k for k, p in enumerate(self._queue) if p.ctx == ctx), None)
        if pos is None:
            return []
        for p in self._queue[: pos + 1]:
            p.acks.add(frm)
        # a quorum for request k proves leadership at the time every earlier request arrived, too
        ready_upto = -1
        for k in range(pos, -1, -1):
            if has_quorum(self._queue[k].acks):
                ready_upto = k
                break
        done, self._queue = self._queue[: ready_upto + 1], self._queue[ready_upto + 1 :]
        return [ReadState(p.index, p.ctx) for p in done]

    def clear(self) -> None:
        self._queue.clear()
