"""The runtime services share (dynamostore/runtime.py): the loop clock's wait and the supervisor's stop."""

from __future__ import annotations

import asyncio
import logging

import pytest

from dynamostore import runtime
from dynamostore.runtime import LoopClock, Supervisor


async def test_wait_returns_on_the_event_or_the_timeout() -> None:
    clock, ev = LoopClock(), asyncio.Event()
    assert await clock.wait(ev, 0.001) is False
    asyncio.get_running_loop().call_soon(ev.set)
    assert await clock.wait(ev, 60.0) is True
    assert await clock.wait(None, 0.001) is False


async def test_a_cancel_that_races_the_event_is_not_swallowed() -> None:
    """asyncio.wait_for(event.wait(), t) on 3.11 returns True here instead of raising: the bug behind services
    whose stop() hung."""
    ev = asyncio.Event()
    task = asyncio.ensure_future(LoopClock().wait(ev, 60.0))
    await asyncio.sleep(0)  # parked in the wait
    ev.set()
    task.cancel()  # in the same loop pass
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_stop_cancels_again_a_task_that_swallowed_its_cancel(monkeypatch: pytest.MonkeyPatch,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(runtime, "STOP_GRACE_S", 0.01)
    swallowed = []

    async def stubborn() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            swallowed.append(True)  # a bug: carries on
        await asyncio.Event().wait()

    sup = Supervisor("test task")
    sup.spawn(stubborn(), "stubborn")
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="dynamostore.runtime"):
        await asyncio.wait_for(sup.stop(), 5.0)
    assert swallowed == [True] and sup.running == 0
    assert any("stubborn" in r.getMessage() for r in caplog.records)


async def test_nothing_starts_once_stopping() -> None:
    sup = Supervisor()
    await sup.stop()
    ran = []

    async def late() -> None:
        ran.append(True)

    sup.spawn(late(), "late")
    await asyncio.sleep(0)
    assert ran == [] and sup.running == 0
