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
from dynamostore.admin_api import AdminError, add_admin_routes
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

    def _key(self, request: web.Request) -> bytes:
        raw = request.match_info.get("key", "")
        if not raw:
            raise BadRequest("the key is empty")
        key = raw.encode("utf-8", "surrogateescape")
        if len(key) > self.limits.max_key_bytes:
            raise BadRequest(f"the key is {len(key)} bytes, longer than the limit of {self.limits.max_key_bytes}")
        return key

    def _context(self, request: web.Request, key: bytes) -> dict[str, int]:
        token = request.headers.get("X-Context")
        if token is None or token.strip() == "":
            return {}
        try:
            return self.codec.decode(key, token)
        except InvalidContext as exc:
            raise BadRequest(str(exc)) from exc

    def _quorum(self, request: web.Request, header: str, param: str, default: int) -> int:
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

    def _sloppy(self, request: web.Request) -> bool:
        raw = request.headers.get("X-Sloppy-Quorum")
        if raw is None:
            return self.q.sloppy
        low = raw.strip().lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        raise BadRequest(f"X-Sloppy-Quorum must be true or false (got {raw!r})")

    def _timeout(self, request: web.Request) -> float:
        raw = request.headers.get("X-Timeout-Ms")
        if raw is None:
            return self.q.timeout_ms / 1000
        if not raw.strip().isdigit() or not 1 <= int(raw) <= 120_000:
            raise BadRequest(f"X-Timeout-Ms must be an integer from 1 to 120000 (got {raw!r})")
        return int(raw) / 1000

    def _write_opts(self, request: web.Request) -> WriteOptions:
        w = self._quorum(request, "X-Write-Quorum", "w", self.q.w)
        dw = self._quorum(request, "X-Durable-Writes", "dw", self.q.dw)
        pw = self._quorum(request, "", "pw", 0)
        if dw > w:
            w = dw  # a durable ack is an ack: asking DW=3 with W=2 means three replicas must answer
        return WriteOptions(w=w, dw=dw, pw=pw, sloppy=self._sloppy(request), timeout=self._timeout(request))

    def _read_opts(self, request: web.Request) -> ReadOptions:
        r = self._quorum(request, "X-Read-Quorum", "r", self.q.r)
        pr = self._quorum(request, "", "pr", 0)
        return ReadOptions(r=r, pr=pr, sloppy=self._sloppy(request), timeout=self._timeout(request))

    # --- rendering ------------------------------------------------------------------------------------

    def _render_state(
        self, request: web.Request, key: bytes, state: v.VersionSet | None, headers: dict[str, str]
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

    async def get(self, request: web.Request) -> web.StreamResponse:
        key = self._key(request)
        opts = self._read_opts(request)
        res = await self.node.coordinator.get(key, opts)
        headers = {"X-Coordinator": res.coordinator, "X-Replies": str(res.replies), "X-Hinted": str(res.hinted)}
        return self._render_state(request, key, res.state, headers)

    async def put(self, request: web.Request) -> web.StreamResponse:
        key = self._key(request)
        limit = self.limits.max_value_bytes
        if request.content_length is not None and request.content_length > limit:
            return _too_large(request.content_length, limit)
        opts = self._write_opts(request)
        ctx = self._context(request, key)
        body = await request.read()  # capped by client_max_size: a longer chunked body answers 413
        ctype = request.headers.get("Content-Type", "application/octet-stream")
        return await self._write(request, key, body, ctype, ctx, opts)

    async def delete(self, request: web.Request) -> web.StreamResponse:
        key = self._key(request)
        opts = self._write_opts(request)
        ctx = self._context(request, key)
        return await self._write(request, key, None, "", ctx, opts)

    async def _write(
        self, request: web.Request, key: bytes, value: bytes | None, ctype: str, ctx: dict[str, int],
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

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "node": self.node.node_id})

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(self.node.status(), dumps=lambda o: json.dumps(o, default=str))

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.node.metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4"})

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(spec(self.n, self.limits.max_value_bytes, self.limits.max_key_bytes))

    async def debug_delay(self, request: web.Request) -> web.Response:
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

    async def empty_key(self, request: web.Request) -> web.Response:
        return error(400, "bad_request", "the key is empty: use /kv/{key}")


def _too_large(size: int | None, limit: int) -> web.Response:
    got = f"{size} bytes" if size is not None else "a larger body"
    return error(413, "value_too_large", f"the value is {got}, over the limit of {limit} bytes", limit=limit)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def build_app(node: Node) -> web.Application:
    api = Api(node)
    metrics = node.metrics

    @web.middleware
    async def errors_and_metrics(request: web.Request, handler: Handler) -> web.StreamResponse:
        op = request.method if request.path.startswith("/kv") else request.path.split("/")[1]
        start = time.perf_counter()
        try:
            resp = await handler(request)
        except BadRequest as exc:
            resp = error(400, "bad_request", str(exc))
        except AdminError as exc:
            resp = error(exc.status, "refused" if exc.status == 409 else "admin", str(exc))
        except Unavailable as exc:
            resp = error(503, "unavailable", str(exc))
        except web.HTTPRequestEntityTooLarge:
            resp = _too_large(None, node.config.file.limits.max_value_bytes)
        except web.HTTPException as exc:
            resp = error(exc.status, exc.reason.lower().replace(" ", "_"), exc.text or exc.reason)
        except Exception:  # noqa: BLE001 - a bug must answer 500 with JSON and keep the node serving
            log.exception("unhandled error for %s %s", request.method, request.path)
            resp = error(500, "internal", "internal error; see the node's log")
        metrics.requests.labels(op, str(resp.status)).inc()
        if request.path.startswith("/kv"):
            metrics.latency.labels(op).observe(time.perf_counter() - start)
        return resp

    app = web.Application(middlewares=[errors_and_metrics], client_max_size=node.config.file.limits.max_value_bytes)
    app.router.add_get("/kv/{key:.+}", api.get)
    app.router.add_put("/kv/{key:.+}", api.put)
    app.router.add_post("/kv/{key:.+}", api.put)
    app.router.add_delete("/kv/{key:.+}", api.delete)
    for path in ("/kv", "/kv/"):
        app.router.add_route("*", path, api.empty_key)
    app.router.add_get("/health", api.health)
    app.router.add_get("/status", api.status)
    app.router.add_get("/metrics", api.metrics)
    app.router.add_get("/openapi.json", api.openapi)
    app.router.add_post("/debug/delay", api.debug_delay)
    add_admin_routes(app, node)
    return app
