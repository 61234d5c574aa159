"""What the two clients share above the wire: their settings, the routing table, building each operation,
and `update()`'s read-modify-write as a sans-IO generator of operations (both clients run it unchanged).
"""

from __future__ import annotations

import json
import random
import ssl as _ssl
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Generic, TypedDict, TypeVar

from dynamostore.client import core
from dynamostore.client.core import Answer, Attempt, Call, Request, Timing
from dynamostore.client.errors import Conflict
from dynamostore.client.objects import Consistency, Object, Resolver, WriteResult, distinct
from dynamostore.client.routing import RouteMode, RoutingTable

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

STATUS_TIMEOUT = 2.0  # seconds for one /status request while refreshing the ring
STATUS_TRIES = 3  # nodes asked for /status per refresh


@dataclass(frozen=True, slots=True)
class Operation(Generic[T_co]):
    """A request to run over the key's preference list, and how to read its final answer."""

    key: str
    request: Request
    parse: Callable[[Answer, str | None], T_co]
    deadline: float | None
    server_timeout: float | None


# update(): what the function gets (the current value, None when absent) and gives back (the new value)
UpdateFn = Callable[[bytes | None], bytes | str]
Steps = Generator[Operation[Object | WriteResult], Object | WriteResult, Object]


class Settings(TypedDict, total=False):
    """The options both clients take (see `ClientCore`)."""

    resolver: Resolver | None
    defaults: Consistency | None
    routing: RouteMode
    retry_writes: bool
    deadline: float
    attempt_timeout: float
    connect_timeout: float
    refresh_interval: float
    token: str | None
    ssl: _ssl.SSLContext | str | None
    rng: random.Random | None
    clock: Callable[[], float]


def ssl_context(ssl: _ssl.SSLContext | str | None) -> _ssl.SSLContext | None:
    """An SSLContext as given, or one trusting the CA file at that path."""
    if ssl is None or isinstance(ssl, _ssl.SSLContext):
        return ssl
    return _ssl.create_default_context(cafile=ssl)


class ClientCore:
    """Settings and state of one client; the transports own the connections.

    - `urls`: one or more nodes to learn the ring from (`http://host:port`, or `https://` with `ssl`).
    - `resolver`: the default sibling resolver (per call: `resolver=`).
    - `defaults`: consistency options for every call (R, W, DW, PR, PW, sloppy, timeout, deadline, level).
    - `routing`: "ring" sends each request to a live primary of its key; "random" to any live node; "seeds"
      to the URLs given, in turn (no ring: a load balancer, or a caller choosing coordinators).
    - `retry_writes`: resend a write that may have been applied to the next node (see `core`), or raise
      `UncertainWrite`.
    - `deadline`: seconds for a whole call, fail-over included; `attempt_timeout` per node tried (raised to
      the call's `timeout` plus half a second when that is longer); `connect_timeout` per connection.
    - `refresh_interval`: seconds between two reads of the ring from `/status` (sooner on any sign of change).
    - `token`: sent as `Authorization: Bearer <token>`; `ssl`: an `ssl.SSLContext`, or a CA file's path.
    - `rng`, `clock`: injected for deterministic tests.
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        resolver: Resolver | None = None,
        defaults: Consistency | None = None,
        routing: RouteMode = "ring",
        retry_writes: bool = True,
        deadline: float = 10.0,
        attempt_timeout: float = 3.0,
        connect_timeout: float = 1.0,
        refresh_interval: float = 10.0,
        token: str | None = None,
        ssl: _ssl.SSLContext | str | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        seeds = [urls] if isinstance(urls, str) else list(urls)
        self.ssl = ssl_context(ssl)
        if self.ssl is not None and any(not u.startswith("https://") for u in seeds):
            raise ValueError("an ssl option was given: the node URLs must be https://")
        self.routing = RoutingTable(seeds, rng=rng or random.Random(), mode=routing,
                                    refresh_interval=refresh_interval)
        self.resolver = resolver
        self.defaults: Consistency = dict(defaults or {})  # type: ignore[assignment]
        self.retry_writes = retry_writes
        self.timing = Timing(deadline, attempt_timeout, connect_timeout)
        self.auth = f"Bearer {token}" if token else None
        self.clock = clock

    # --- operations -----------------------------------------------------------------------------------

    def _opts(self, call: Consistency) -> Consistency:
        return {**self.defaults, **call}

    def _op(self, key: str, request: Request, parse: Callable[[Answer, str | None], T],
            opts: Consistency) -> Operation[T]:
        timeout = opts.get("timeout")
        return Operation(key, request, parse, opts.get("deadline"), float(timeout) if timeout is not None else None)

    def get_op(self, key: str, opts: Consistency, resolver: Resolver | None = None,
               missing_ok: bool = False) -> Operation[Object]:
        o = self._opts(opts)
        res = resolver if resolver is not None else self.resolver
        req = core.build("GET", key, o, auth=self.auth)
        return self._op(key, req, lambda a, n: core.read_object(key, a, n, res, missing_ok=missing_ok), o)

    def put_op(self, key: str, value: bytes | str, opts: Consistency, *, content_type: str | None = None,
               context: Object | str | None = None, returnbody: bool = False,
               resolver: Resolver | None = None) -> Operation[WriteResult]:
        o = self._opts(opts)
        body, ctype = core.encode_value(value, content_type)
        res = resolver if resolver is not None else self.resolver
        req = core.build("PUT", key, o, body=body, content_type=ctype, context=core.context_of(context),
                         returnbody=returnbody, auth=self.auth)
        return self._op(key, req, lambda a, n: core.write_result(key, a, n, res), o)

    def delete_op(self, key: str, opts: Consistency, context: Object | str | None = None) -> Operation[WriteResult]:
        o = self._opts(opts)
        req = core.build("DELETE", key, o, context=core.context_of(context), auth=self.auth)
        return self._op(key, req, lambda a, n: core.write_result(key, a, n, None), o)

    def start(self, op: Operation[T]) -> Call:
        return Call(op.request, op.key.encode("utf-8"), self.routing, self.clock(), timing=self.timing,
                    retry_writes=self.retry_writes, deadline=op.deadline, server_timeout=op.server_timeout)

    def update_steps(self, key: str, fn: UpdateFn, opts: Consistency, *, resolver: Resolver | None,
                     content_type: str | None, max_resolutions: int) -> Steps:
        """Read (resolving siblings), apply `fn` once, write with the read's context and `returnbody`.

        If the state after the write holds distinct siblings, writers changed the key concurrently (from the
        same read, or one this client had not seen): the resolver merges them and the merge is written with
        the context of that state, again until one value remains or `max_resolutions` merges were written
        (then the state is returned as it is: its siblings are stored, and the next reader's resolver merges
        them; no update is lost either way). `fn` never runs twice: a concurrent change is merged, not
        redone. Without a resolver it raises `Conflict` (the write is stored; the key holds siblings).
        """
        res = resolver if resolver is not None else self.resolver
        read = yield self.get_op(key, opts, res, missing_ok=True)
        assert isinstance(read, Object)
        current = read.chosen() if read.exists else None  # Conflict: siblings and no resolver
        new = fn(current.value if current is not None else None)
        ctype = content_type or (current.content_type if current is not None and not isinstance(new, str) else None)
        wrote = yield self.put_op(key, new, opts, content_type=ctype, context=read, returnbody=True, resolver=res)
        merges = 0
        while True:
            assert isinstance(wrote, WriteResult) and wrote.object is not None
            after = wrote.object
            values = distinct(after.siblings)
            if len(values) <= 1:
                return after
            if after.resolved is None:
                raise Conflict(f"key {key!r} was changed concurrently ({len(values)} siblings) and no resolver "
                               "merges them; the write is stored beside them", values, after)
            if merges == max_resolutions:
                # Still changing under us. Nothing is lost: every write is a sibling the next reader merges.
                return after
            merges += 1
            merged = after.resolved
            wrote = yield self.put_op(key, merged.value, opts, content_type=merged.content_type, context=after,
                                      returnbody=True, resolver=res)

    # --- the ring -------------------------------------------------------------------------------------

    def status_attempts(self) -> list[Attempt]:
        now = self.clock()
        self.routing.refreshing(now)
        headers = {"Authorization": self.auth} if self.auth else {}
        req = Request("GET", "/status", headers)
        t = self.timing
        return [Attempt(None, url + "/status", req, STATUS_TIMEOUT, min(t.connect_timeout, STATUS_TIMEOUT))
                for url in self.routing.status_targets(now)[:STATUS_TRIES]]

    def load_status(self, answer: Answer) -> bool:
        if answer.status != 200:
            return False
        try:
            doc = json.loads(answer.body)
        except ValueError:
            return False
        return isinstance(doc, dict) and self.routing.load(doc, self.clock())

    def needs_refresh(self) -> bool:
        return self.routing.needs_refresh(self.clock())

