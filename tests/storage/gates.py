"""Test helpers that hold the storage engine's fsync or the writer thread at a chosen point (shared by the storage
tests and the service tests that check what is durable before what)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from dynamostore.storage.store import Storage

DEADLINE = 20.0   # seconds; upper bound for waits on conditions, never a sleep


class _Gated:
    """An engine whose fsync is replaced (a compiled engine's methods cannot be patched in place)."""

    def __init__(self, engine: Any, sync: Callable[[], None]) -> None:
        self._engine = engine
        self.sync = sync

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)


class SyncGate:
    """Replaces the engine's fsync: records the calling thread, blocks until released, can be told to fail."""

    def __init__(self, s: Storage) -> None:
        self.committer = s._committer   # white box: every fsync goes through the committer's engine
        self.engine = self.committer.engine
        self.real = self.engine.sync
        self.threads: list[int] = []
        self.entered = threading.Semaphore(0)
        self.release = threading.Semaphore(0)
        self.fail: Exception | None = None
        self.committer.engine = _Gated(self.engine, self.sync)

    def restore(self) -> None:
        """Stop gating (so teardown's close() is not held, even after a failed assertion)."""
        self.committer.engine = self.engine
        self.release.release(1000)

    def sync(self) -> None:
        self.threads.append(threading.get_ident())
        self.entered.release()
        assert self.release.acquire(timeout=DEADLINE), "fsync gate never released"
        if self.fail is not None:
            raise self.fail
        self.real()

    async def wait_entered(self) -> None:
        assert await asyncio.to_thread(self.entered.acquire, True, DEADLINE), "no fsync started"

    def open(self, n: int = 1) -> None:
        self.release.release(n)


class _GatedTxn:
    def __init__(self, txn: Any, gate: CommitGate) -> None:
        self._txn = txn
        self._gate = gate

    def __getattr__(self, name: str) -> Any:
        return getattr(self._txn, name)

    def commit(self) -> None:
        self._gate.commit(self._txn)


class CommitGate:
    """Wraps the engine's write transactions: each commit blocks until released, and can be told to fail
    instead (then the transaction is aborted, as a failed LMDB commit leaves it)."""

    def __init__(self, s: Storage) -> None:
        self.committer = s._committer
        self.engine = self.committer.engine
        self.entered = threading.Semaphore(0)
        self.release = threading.Semaphore(0)
        self.fail: Exception | None = None
        self.commits = 0
        gated = _Gated(self.engine, self.engine.sync)
        gated.begin = lambda durable: _GatedTxn(self.engine.begin(durable), self)  # type: ignore[attr-defined]
        self.committer.engine = gated

    def restore(self) -> None:
        self.committer.engine = self.engine
        self.release.release(1000)

    def commit(self, txn: Any) -> None:
        self.entered.release()
        assert self.release.acquire(timeout=DEADLINE), "commit gate never released"
        if self.fail is not None:
            fail, self.fail = self.fail, None
            txn.abort()
            raise fail
        txn.commit()
        self.commits += 1

    async def wait_entered(self) -> None:
        assert await asyncio.to_thread(self.entered.acquire, True, DEADLINE), "no commit started"

    def open(self, n: int = 1) -> None:
        self.release.release(n)


class WriterGate:
    """Holds the writer thread (nometasync mode) inside an op's fn, so that the ops queued meanwhile form ONE
    batch after it."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def fn(self, current: bytes | None) -> tuple[bytes | None, None]:
        self.entered.set()
        self.release.wait(DEADLINE)
        return current, None

    async def hold(self, s: Storage) -> asyncio.Future[None]:
        fut = s.update("meta", b"gate", self.fn)
        assert await asyncio.to_thread(self.entered.wait, DEADLINE), "writer never picked up the gate op"
        return fut
