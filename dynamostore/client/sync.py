"""The synchronous client: the shared core over urllib3's connection pools. Thread-safe: one client can be
shared by threads (urllib3's pools are; each call has its own state; refreshes of the ring take a lock)."""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from types import TracebackType
from typing import Any, TypeVar, Unpack

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NameResolutionError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)
from urllib3.exceptions import SSLError as Urllib3SSLError

from dynamostore.client.base import ClientCore, Operation, Settings, UpdateFn
from dynamostore.client.core import Answer, Attempt, Failure, TransportFailure
from dynamostore.client.errors import Unreachable
from dynamostore.client.objects import Consistency, Object, Resolver, WriteResult

T = TypeVar("T")


class Client:
    """`Client(["http://127.0.0.1:8001"])`: get, put, delete, update; see `ClientCore` for the settings.

    `connections` is the number of pooled keep-alive connections kept per node."""

    def __init__(self, urls: str | Sequence[str], *, connections: int = 10, **settings: Unpack[Settings]) -> None:
        self.core = ClientCore(urls, **settings)
        self._pool = urllib3.PoolManager(num_pools=64, maxsize=connections, block=False,
                                         ssl_context=self.core.ssl, retries=False)
        self._refresh_lock = threading.Lock()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._pool.clear()

    # --- the API ------------------------------------------------------------------------------------------

    def get(self, key: str, *, resolver: Resolver | None = None, missing_ok: bool = False,
            **consistency: Unpack[Consistency]) -> Object:
        """The key's value(s) and context. Raises `NotFound` unless `missing_ok` (then `obj.exists` is False)."""
        return self._run(self.core.get_op(key, consistency, resolver, missing_ok))

    def put(self, key: str, value: bytes | str, *, context: Object | str | None = None,
            content_type: str | None = None, returnbody: bool = False, resolver: Resolver | None = None,
            **consistency: Unpack[Consistency]) -> WriteResult:
        """Store `value`. With `context` (the Object read, or its token) it supersedes what that read saw;
        without, it stands beside whatever is stored (a sibling). `returnbody`: the result carries the key's
        state after the write as an Object."""
        return self._run(self.core.put_op(key, value, consistency, content_type=content_type, context=context,
                                          returnbody=returnbody, resolver=resolver))

    def delete(self, key: str, *, context: Object | str | None = None,
               **consistency: Unpack[Consistency]) -> WriteResult:
        """Delete what `context` covers; without one, what the coordinator reads at R (Riak's rule): the result's
        `deleted` counts those values, and `NotFound` means there were none (nothing was written)."""
        return self._run(self.core.delete_op(key, consistency, context))

    def update(self, key: str, fn: UpdateFn, *, resolver: Resolver | None = None, content_type: str | None = None,
               max_resolutions: int = 3, **consistency: Unpack[Consistency]) -> Object:
        """Read-modify-write: `fn(current value or None)` gives the new value, written with the read's
        context; concurrent changes are merged with the resolver (`ClientCore.update_steps`)."""
        steps = self.core.update_steps(key, fn, consistency, resolver=resolver, content_type=content_type,
                                       max_resolutions=max_resolutions)
        op = next(steps)
        while True:
            try:
                op = steps.send(self._run(op))
            except StopIteration as done:
                result: Object = done.value
                return result

    def refresh_ring(self) -> bool:
        """Read the ring from a node's /status now; False when no node gave one."""
        with self._refresh_lock:
            return self._refresh()

    @property
    def ring_epoch(self) -> int | None:
        return self.core.routing.epoch

    def status(self) -> dict[str, Any]:
        """One node's /status document."""
        for a in self.core.status_attempts():
            try:
                ans = self._send(a)
            except TransportFailure:
                continue
            if ans.status == 200:
                doc: dict[str, Any] = json.loads(ans.body)
                return doc
        raise Unreachable("no node answered /status")

    # --- driving the core ---------------------------------------------------------------------------------

    def _refresh(self) -> bool:
        for a in self.core.status_attempts():
            try:
                if self.core.load_status(self._send(a)):
                    return True
            except TransportFailure:
                continue
        return False

    def _run(self, op: Operation[T]) -> T:
        if self.core.needs_refresh() and self._refresh_lock.acquire(blocking=self.core.routing.info is None):
            try:
                if self.core.needs_refresh():
                    self._refresh()
            finally:
                self._refresh_lock.release()
        call = self.core.start(op)
        clock = self.core.clock
        while (a := call.next_attempt(clock())) is not None:
            try:
                answer = self._send(a)
            except TransportFailure as f:
                call.failed(a, f.failure, f.detail, clock())
                continue
            call.answered(a, answer, clock())
        return op.parse(call.answer(), call.final_node)

    def _send(self, a: Attempt) -> Answer:
        req = a.request
        try:
            r = self._pool.request(req.method, a.url, body=req.body, headers=req.headers, redirect=False,
                                   retries=False, timeout=urllib3.Timeout(total=a.timeout, connect=a.connect_timeout))
        except (NewConnectionError, ConnectTimeoutError, NameResolutionError, Urllib3SSLError) as exc:
            raise TransportFailure(Failure.NOT_SENT, str(exc).rsplit(": ", 1)[-1][:120]) from None
        except ReadTimeoutError:
            raise TransportFailure(Failure.TIMEOUT, "") from None
        except (ProtocolError, HTTPError, OSError) as exc:
            raise TransportFailure(Failure.BROKEN, type(exc).__name__) from None
        return Answer(r.status, {k.lower(): v for k, v in r.headers.items()}, r.data)
