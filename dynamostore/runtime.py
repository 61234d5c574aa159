"""The asyncio runtime services share: the loop's clock and supervised background tasks.

`LoopClock` and `Supervisor` are the real `views.Clock` and `views.Spawner`; unit tests use fakes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)

# How long `Supervisor.stop` waits for cancelled tasks before it names the ones still running and cancels again.
STOP_GRACE_S = 2.0


class LoopClock:
    """Time from the running event loop (monotonic), and waiting on it."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def wait(self, event: asyncio.Event | None, timeout: float) -> bool:
        """`views.Clock.wait`. Not `asyncio.wait_for(event.wait(), timeout)`: on Python 3.11 that returns the
        event's result when a cancel arrives in the same loop pass as the event is set, swallowing the cancel;
        a service loop around it then never ends, and its service's stop() hangs (the "stop timed out in step
        'AntiEntropyService'" of loaded test teardowns). asyncio.timeout() tells its own expiry from a cancel."""
        if event is None:
            await asyncio.sleep(timeout)
            return False
        if not event.is_set():
            try:
                async with asyncio.timeout(timeout):
                    await event.wait()
            except TimeoutError:
                pass
        return event.is_set()


class Supervisor:
    """Background tasks that are not fire-and-forget: each is kept until it ends, an error is logged with its
    task's name instead of vanishing, and `stop` cancels whatever still runs and waits for it. Once stopping,
    it starts nothing new (a task ending as it is cancelled may try to spawn a follow-up)."""

    def __init__(self, what: str = "background task") -> None:
        self.what = what
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        if self._stopping:
            coro.close()  # never started: nothing to clean up, and no "never awaited" warning
            log.debug("%s %s not started: stopping", self.what, name)
            return
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
        """Cancel every task and wait until all have ended. A task that is still running after STOP_GRACE_S
        (it swallowed its cancellation) is named in the log and cancelled again, until it ends."""
        self._stopping = True
        while self._tasks:
            tasks = list(self._tasks)
            for t in tasks:
                t.cancel()
            _, pending = await asyncio.wait(tasks, timeout=STOP_GRACE_S)
            if pending:
                log.warning("%s still running %.1fs after being cancelled, cancelling again: %s", self.what,
                            STOP_GRACE_S, ", ".join(sorted(t.get_name() for t in pending)))
