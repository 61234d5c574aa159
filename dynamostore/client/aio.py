"""The asyncio client: the shared core over one aiohttp session (pooled keep-alive connections).

Use it as an async context manager, inside the loop that runs it:

    async with AsyncClient(["http://127.0.0.1:8001"]) as c:
        obj = await c.get("k")

The ring is read before the first request; later refreshes run in a background task (one at a time, its
errors logged), so no request waits on a /status.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from types import TracebackType
from typing import Any, TypeVar, Unpack

import aiohttp
from yarl import URL

from dynamostore.client.base import ClientCore, Operation, Settings, UpdateFn
from dynamostore.client.core import Answer, Attempt, Failure, TransportFailure
from dynamostore.client.errors import Unreachable
from dynamostore.client.objects import Consistency, Object, Resolver, WriteResult

log = logging.getLogger(__name__)

T = TypeVar("T")


class AsyncClient:
    """The same API as `Client`, awaitable. `connections`: pooled connections in all (aiohttp's limit)."""

    def __init__(self, urls: str | Sequence[str], *, connections: int = 100, **settings: Unpack[Settings]) -> None:
        self.core = ClientCore(urls, **settings)
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None
        self._refresh_task: asyncio.Task[bool] | None = None
        self._first_refresh = asyncio.Lock()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, t: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        task, self._refresh_task = self._refresh_task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            conn = aiohttp.TCPConnector(limit=self._connections, ssl=self.core.ssl if self.core.ssl else True)
            self._session = aiohttp.ClientSession(connector=conn, auto_decompress=False)
            # aiohttp resends a PUT or DELETE by itself once when a kept-alive connection turns out closed.
            # Retries are the core's decision (and its documented policy): turn that one off.
            self._session._retry_connection = False
        return self._session

    # --- the API ------------------------------------------------------------------------------------------

    async def get(self, key: str, *, resolver: Resolver | None = None, missing_ok: bool = False,
                  **consistency: Unpack[Consistency]) -> Object:
        """The key's value(s) and context. Raises `NotFound` unless `missing_ok` (then `obj.exists` is False)."""
        return await self._run(self.core.get_op(key, consistency, resolver, missing_ok))

    async def put(self, key: str, value: bytes | str, *, context: Object | str | None = None,
                  content_type: str | None = None, returnbody: bool = False, resolver: Resolver | None = None,
                  **consistency: Unpack[Consistency]) -> WriteResult:
        """Store `value`; see `Client.put`."""
        return await self._run(self.core.put_op(key, value, consistency, content_type=content_type,
                                                context=context, returnbody=returnbody, resolver=resolver))

    async def delete(self, key: str, *, context: Object | str | None = None,
                     **consistency: Unpack[Consistency]) -> WriteResult:
        """Delete what `context` covers; without one, what the coordinator reads at R (Riak's rule): the result's
        `deleted` counts those values, and `NotFound` means there were none (nothing was written)."""
        return await self._run(self.core.delete_op(key, consistency, context))

    async def update(self, key: str, fn: UpdateFn, *, resolver: Resolver | None = None,
                     content_type: str | None = None, max_resolutions: int = 3,
                     **consistency: Unpack[Consistency]) -> Object:
        """Read-modify-write; see `Client.update`."""
        steps = self.core.update_steps(key, fn, consistency, resolver=resolver, content_type=content_type,
                                       max_resolutions=max_resolutions)
        op = next(steps)
        while True:
            try:
                op = steps.send(await self._run(op))
            except StopIteration as done:
                result: Object = done.value
                return result

    async def refresh_ring(self) -> bool:
        """Read the ring from a node's /status now; False when no node gave one."""
        for a in self.core.status_attempts():
            try:
                if self.core.load_status(await self._send(a)):
                    return True
            except TransportFailure:
                continue
        return False

    @property
    def ring_epoch(self) -> int | None:
        return self.core.routing.epoch

    async def status(self) -> dict[str, Any]:
        """One node's /status document."""
        for a in self.core.status_attempts():
            try:
                ans = await self._send(a)
            except TransportFailure:
                continue
            if ans.status == 200:
                doc: dict[str, Any] = json.loads(ans.body)
                return doc
        raise Unreachable("no node answered /status")

    # --- driving the core ---------------------------------------------------------------------------------

    async def _ensure_ring(self) -> None:
        if self.core.routing.info is None:
            async with self._first_refresh:  # the first calls wait for one /status, not one each
                if self.core.routing.info is None and self.core.needs_refresh():
                    await self.refresh_ring()
        elif self.core.needs_refresh() and (self._refresh_task is None or self._refresh_task.done()):
            self._refresh_task = asyncio.create_task(self.refresh_ring(), name="dynamostore-client-ring-refresh")
            self._refresh_task.add_done_callback(_log_failure)

    async def _run(self, op: Operation[T]) -> T:
        await self._ensure_ring()
        call = self.core.start(op)
        clock = self.core.clock
        while (a := call.next_attempt(clock())) is not None:
            try:
                answer = await self._send(a)
            except TransportFailure as f:
                call.failed(a, f.failure, f.detail, clock())
                continue
            call.answered(a, answer, clock())
        return op.parse(call.answer(), call.final_node)

    async def _send(self, a: Attempt) -> Answer:
        req = a.request
        timeout = aiohttp.ClientTimeout(total=a.timeout, connect=a.connect_timeout)
        try:
            async with self._http().request(req.method, URL(a.url, encoded=True), data=req.body,
                                            headers=req.headers, timeout=timeout, allow_redirects=False) as r:
                body = await r.read()
                return Answer(r.status, {k.lower(): v for k, v in r.headers.items()}, body)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            raise TransportFailure(Failure.NOT_SENT, str(exc).rsplit(": ", 1)[-1][:120]) from None
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError):
            raise TransportFailure(Failure.TIMEOUT, "") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise TransportFailure(Failure.BROKEN, type(exc).__name__) from None


def _log_failure(task: asyncio.Task[bool]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.warning("refreshing the ring failed: %r", exc)
