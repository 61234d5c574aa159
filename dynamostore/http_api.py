"""The client-facing HTTP API (aiohttp): /kv/{key}, /health, /status, /metrics, /openapi.json.

Handlers only translate: parse and validate the request (400/413 with a JSON reason before anything is
touched), call the coordinator, and render what happened (coordinator, acknowledgements, hinted count).
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import MultipartWriter, web

from dynamostore import versioning as v
from dynamostore.admin_api import AdminError, admin_routes
from dynamostore.context import ContextCodec, InvalidContext
from dynamostore.coordinator import ForwardError, ReadOptions, Unavailable, WriteOptions
from dynamostore.openapi import spec
from dynamostore.quorum import QuorumError, parse_quorum
from dynamostore.replica import SiblingLimitError

if TYPE_CHECKING:
    from dynamostore.node import Node

log = logging.getLogger(__name__)

JSON = "application/json"


class BadRequest(Exception):
    pass


def error(status: int, err: str, reason: str, **extra: Any) -> web.Response:
    return web.json_response({"error": err, "reason": reason, **extra}, status=status)


@dataclass(frozen=True, slots=True)
class Parsed:
    key: bytes
    context: dict[str, int]


class Api:
    def __init__(self, node: Node) -> None:
        self.node = node
        f = node.config.file
        self.q = f.quorum
        self.limits = f.limits
        self.n = node.n_val
        self.codec = ContextCodec(node.config.secret)

    # --- request parsing ------------------------------------------------------------------------------

    def _key(self, request: web.BaseRequest) -> bytes:
        raw = request.path[4:] if request.path.startswith("/kv/") else ""
        if not raw:
            raise BadRequest("the key is empty")
        key = raw.encode("utf-8", "surrogateescape")
        if len(key) > self.limits.max_key_bytes:
            raise BadRequest(f"the key is {len(key)} bytes, longer than the limit of {self.limits.max_key_bytes}")
        return key

    def _context(self, request: web.BaseRequest, key: bytes) -> dict[str, int]:
        token = request.headers.get("X-Context")
        if token is None or token.strip() == "":
            return {}
        try:
            return self.codec.decode(key, token)
        except InvalidContext as exc:
            raise BadRequest(str(exc)) from exc

    def _quorum(self, request: web.BaseRequest, header: str, param: str, default: int) -> int:
        if header and header in request.headers:
            return self._level(request.headers[header], header)
        if param in request.query:
            return self._level(request.query[param], f"?{param}")
        if header != "" and "X-Consistency-Level" in request.headers and param in ("r", "w"):
            return self._level(request.headers["X-Consistency-Level"], "X-Consistency-Level")
        return default

    def _level(self, raw: str, name: str) -> int:
        try:
            value = parse_quorum(raw, self.n, name)
        except QuorumError as exc:
            raise BadRequest(str(exc)) from exc
        return value

    def _sloppy(self, request: web.BaseRequest) -> bool:
        raw = request.headers.get("X-Sloppy-Quorum")
        if raw is None:
            return self.q.sloppy
        low = raw.strip().lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        raise BadRequest(f"X-Sloppy-Quorum must be true or false (got {raw!r})")

    def _timeout(self, request: web.BaseRequest) -> float:
        raw = request.headers.get("X-Timeout-Ms")
        if raw is None:
            return self.q.timeout_ms / 1000
        if not raw.strip().isdigit() or not 1 <= int(raw) <= 120_000:
            raise BadRequest(f"X-Timeout-Ms must be an integer from 1 to 120000 (got {raw!r})")
        return int(raw) / 1000

    def _write_opts(self, request: web.BaseRequest) -> WriteOptions:
        w = self._quorum(request, "X-Write-Quorum", "w", self.q.w)
        dw = self._quorum(request, "X-Durable-Writes", "dw", self.q.dw)
        pw = self._quorum(request, "", "pw", 0)
        if dw > w:
            w = dw  # a durable ack is an ack: asking DW=3 with W=2 means three replicas must answer
        return WriteOptions(w=w, dw=dw, pw=pw, sloppy=self._sloppy(request), timeout=self._timeout(request))

    def _read_opts(self, request: web.BaseRequest) -> ReadOptions:
        r = self._quorum(request, "X-Read-Quorum", "r", self.q.r)
        pr = self._quorum(request, "", "pr", 0)
        return ReadOptions(r=r, pr=pr, sloppy=self._sloppy(request), timeout=self._timeout(request))

    # --- rendering ------------------------------------------------------------------------------------

    def _render_state(
        self, request: web.BaseRequest, key: bytes, state: v.VersionSet | None, headers: dict[str, str]
    ) -> web.StreamResponse:
        if state is not None:
            headers["X-Context"] = self.codec.encode(key, state.clock)
        if state is None or state.is_deleted:
            return web.json_response({"error": "not_found", "reason": "no value for this key"}, status=404,
                                     headers=headers)
        live = state.live
        if len(live) == 1:
            s = live[0]
            return web.Response(body=s.value, status=200, headers={**headers, "Content-Type": s.content_type})
        headers["X-Siblings"] = str(len(live))
        if JSON in request.headers.get("Accept", ""):
            body = {
                "siblings": [
                    {"value": base64.b64encode(s.value or b"").decode(), "content_type": s.content_type,
                     "dot": f"{s.dot[0]}:{s.dot[1]}"}
                    for s in live
                ],
                "context": headers["X-Context"],
            }
            return web.json_response(body, status=300, headers=headers)
        mp = MultipartWriter("mixed")
        for s in live:
            mp.append(s.value or b"", {"Content-Type": s.content_type, "X-Dot": f"{s.dot[0]}:{s.dot[1]}"})
        return web.Response(body=mp, status=300, headers=headers)

    # --- handlers -------------------------------------------------------------------------------------

    async def get(self, request: web.BaseRequest) -> web.StreamResponse:
        key = self._key(request)
        opts = self._read_opts(request)
        res = await self.node.coordinator.get(key, opts)
        headers = {"X-Coordinator": res.coordinator, "X-Replies": str(res.replies), "X-Hinted": str(res.hinted)}
        return self._render_state(request, key, res.state, headers)

    async def put(self, request: web.BaseRequest) -> web.StreamResponse:
        key = self._key(request)
        limit = self.limits.max_value_bytes
        if request.content_length is not None and request.content_length > limit:
            return _too_large(request.content_length, limit)
        opts = self._write_opts(request)
        ctx = self._context(request, key)
        body = await request.read()  # capped by client_max_size: a longer chunked body answers 413
        ctype = request.headers.get("Content-Type", "application/octet-stream")
        return await self._write(request, key, body, ctype, ctx, opts)

    async def delete(self, request: web.BaseRequest) -> web.StreamResponse:
        key = self._key(request)
        opts = self._write_opts(request)
        ctx = self._context(request, key)
        return await self._write(request, key, None, "", ctx, opts)

    async def _write(
        self, request: web.BaseRequest, key: bytes, value: bytes | None, ctype: str, ctx: dict[str, int],
        opts: WriteOptions,
    ) -> web.StreamResponse:
        try:
            res = await self.node.coordinator.put(key, value, ctype, ctx, opts)
        except SiblingLimitError as exc:
            return error(409, "too_many_siblings", str(exc))
        except ForwardError as exc:
            return error(409 if exc.code == "conflict" else 400, exc.code, str(exc))
        headers = {
            "X-Coordinator": res.coordinator,
            "X-Acks": str(res.acks),
            "X-Hinted": str(res.hinted),
            "X-Durable": str(res.durable),
            "X-Context": self.codec.encode(key, res.state.clock),
        }
        if request.query.get("returnbody", "").lower() == "true" and value is not None:
            return self._render_state(request, key, res.state, headers)
        return web.Response(status=204, headers=headers)

    async def health(self, request: web.BaseRequest) -> web.Response:
        return web.json_response({"status": "ok", "node": self.node.node_id})

    async def status(self, request: web.BaseRequest) -> web.Response:
        return web.json_response(self.node.status(), dumps=lambda o: json.dumps(o, default=str))

    async def metrics(self, request: web.BaseRequest) -> web.Response:
        return web.Response(body=self.node.metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4"})

    async def openapi(self, request: web.BaseRequest) -> web.Response:
        return web.json_response(spec(self.n, self.limits.max_value_bytes, self.limits.max_key_bytes))

    async def debug_delay(self, request: web.BaseRequest) -> web.Response:
        """Fault injection for benchmarks and tests: delay this node's internal messages to one peer.

        Only with `testing_faults = true` in the settings; a production node answers 404."""
        if not self.node.config.file.testing_faults:
            return error(404, "not_found", "fault injection is disabled (set testing_faults = true)")
        try:
            doc = await request.json()
            peer, ms = str(doc["peer"]), float(doc["ms"])
        except (ValueError, KeyError, TypeError) as exc:
            raise BadRequest('expected JSON {"peer": "<node id>", "ms": <delay>}') from exc
        if peer not in self.node.members or not 0 <= ms <= 60_000:
            raise BadRequest(f"unknown peer {peer!r} or delay out of range (0..60000 ms)")
        m = self.node.members[peer]
        self.node.rpc_client.set_delay((m.rpc_host, m.rpc_port), ms / 1000)
        return web.json_response({"peer": peer, "ms": ms})

    async def empty_key(self, request: web.BaseRequest) -> web.Response:
        return error(400, "bad_request", "the key is empty: use /kv/{key}")


def _too_large(size: int | None, limit: int) -> web.Response:
    got = f"{size} bytes" if size is not None else "a larger body"
    return error(413, "value_too_large", f"the value is {got}, over the limit of {limit} bytes", limit=limit)


Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


def build_server(node: Node) -> web.Server:
    """aiohttp's low-level server with a dispatch of our own: the data path skips the router and the
    middleware chain of web.Application, measured at about a fifth of aiohttp's cost per request here."""
    api = Api(node)
    metrics = node.metrics
    limit = node.config.file.limits.max_value_bytes
    counters: dict[tuple[str, int], Any] = {}
    latencies: dict[str, Any] = {}
    kv: dict[str, Handler] = {"GET": api.get, "HEAD": api.get, "PUT": api.put, "POST": api.put,
                              "DELETE": api.delete}
    routes: dict[str, dict[str, Handler]] = {
        "/health": {"GET": api.health},
        "/status": {"GET": api.status},
        "/metrics": {"GET": api.metrics},
        "/openapi.json": {"GET": api.openapi},
        "/debug/delay": {"POST": api.debug_delay},
        "/kv": {m: api.empty_key for m in kv},
        "/kv/": {m: api.empty_key for m in kv},
    }
    for (method, path), handler in admin_routes(node).items():
        routes.setdefault(path, {})[method] = handler

    async def not_found(request: web.BaseRequest) -> web.StreamResponse:
        return error(404, "not_found", f"no such endpoint: {request.path}")

    async def dispatch(request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        is_kv = path.startswith("/kv/") and len(path) > 4
        op = request.method if is_kv else path.split("/")[1]
        start = time.perf_counter()
        try:
            methods = kv if is_kv else routes.get(path)
            if methods is None:
                handler: Handler = not_found
            elif request.method in methods:
                handler = methods[request.method]
            else:
                raise web.HTTPMethodNotAllowed(request.method, list(methods))
            resp = await handler(request)
        except BadRequest as exc:
            resp = error(400, "bad_request", str(exc))
        except AdminError as exc:
            resp = error(exc.status, "refused" if exc.status == 409 else "admin", str(exc))
        except Unavailable as exc:
            resp = error(503, "unavailable", str(exc))
        except web.HTTPRequestEntityTooLarge:
            resp = _too_large(None, limit)
        except web.HTTPException as exc:
            resp = error(exc.status, exc.reason.lower().replace(" ", "_"), exc.text or exc.reason)
        except Exception:  # noqa: BLE001 - a bug must answer 500 with JSON and keep the node serving
            log.exception("unhandled error for %s %s", request.method, request.path)
            resp = error(500, "internal", "internal error; see the node's log")
        counter = counters.get((op, resp.status))
        if counter is None:  # labels() costs a lock and a tuple hash per call: keep the children
            counter = counters[(op, resp.status)] = metrics.requests.labels(op, str(resp.status))
        counter.inc()
        if is_kv:
            hist = latencies.get(op)
            if hist is None:
                hist = latencies[op] = metrics.latency.labels(op)
            hist.observe(time.perf_counter() - start)
        return resp

    def make_request(message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> web.BaseRequest:
        # Bodies are capped at the value limit: a longer (chunked) body raises HTTPRequestEntityTooLarge.
        return web.BaseRequest(message, payload, protocol, writer, task, protocol._loop, client_max_size=limit)

    return web.Server(dispatch, request_factory=make_request, access_log=None)
