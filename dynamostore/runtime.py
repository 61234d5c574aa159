"""The asyncio runtime services share: the loop's clock and supervised background tasks.

`LoopClock` and `Supervisor` are the real `views.Clock` and `views.Spawner`; unit tests use fakes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)


class LoopClock:
    """Time from the running event loop (monotonic), and waiting on it."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class Supervisor:
    """Background tasks that are not fire-and-forget: each is kept until it ends, an error is logged with its
    task's name instead of vanishing, and `stop` cancels whatever still runs and waits for it."""

    def __init__(self, what: str = "background task") -> None:
        self.what = what
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._reap)

    def _reap(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s %s failed", self.what, task.get_name(), exc_info=task.exception())

    @property
    def running(self) -> int:
        return len(self._tasks)

    async def stop(self) -> None:
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
