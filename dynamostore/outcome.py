"""Outcome callbacks: how an asynchronous step hands over its result without a future or a task.

The replica fan-out of every request uses them (`RpcClient.call_then`, the coordinators' gathers): an
answer is handed to `then(result, None)` or `then(None, exc)` as its frame is decoded.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

Then = Callable[[Any, "BaseException | None"], None]  # then(result, None) or then(None, exception)


def then_from(fut: asyncio.Future[Any], then: Then) -> None:
    """Hand a future's outcome to `then` when it is done (the slow path of callers of `call_then`)."""

    def done(f: asyncio.Future[Any]) -> None:
        if f.cancelled():
            then(None, asyncio.CancelledError())
            return
        exc = f.exception()
        then(None if exc is not None else f.result(), exc)

    fut.add_done_callback(done)
