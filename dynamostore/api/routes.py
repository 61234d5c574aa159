"""The HTTP routing table of a node: exact-path routes, the key routes by prefix, a few other prefix routes
(the console's files, the key inspector), the mapping of errors to statuses, and the request counters and
latencies (metrics.RequestStats)."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from dynamostore.api.admin import AdminApi, AdminError, admin_routes
from dynamostore.api.errors import BadRequest, error
from dynamostore.api.kv import KvApi
from dynamostore.api.ops import OpsApi
from dynamostore.api.server import HttpServer, InvalidJSON, Request, Response
from dynamostore.kv.coordinator import Unavailable
from dynamostore.metrics import NodeMetrics

log = logging.getLogger(__name__)

ADMIN_BODY_LIMIT = 64 * 1024  # admin and debug bodies are small JSON documents


def _too_large(size: int | None, limit: int) -> Response:
    got = f"{size} bytes" if size is not None else "a larger body"
    return error(413, "value_too_large", f"the value is {got}, over the limit of {limit} bytes", limit=limit)


Handler = Callable[[Request], Awaitable[Response]]


def build_server(api: KvApi, ops: OpsApi, admin: AdminApi, metrics: NodeMetrics,
                 extra: dict[tuple[str, str], Handler] | None = None,
                 prefixed: dict[str, dict[str, Handler]] | None = None) -> HttpServer:
    """Our own dispatch on dynamostore.api.server: exact-path routes (`extra` adds some by (method, path)),
    the key routes by prefix, other routes by prefix (`prefixed`: prefix -> method -> handler; looked at only
    when no exact route matched, so a key request never pays for them), the error mapping below, and the
    request counters and latencies (metrics.RequestStats)."""
    limit = api.limits.max_value_bytes
    kv: dict[str, Handler] = {"GET": api.get, "HEAD": api.get, "PUT": api.put, "POST": api.put,
                              "DELETE": api.delete}
    routes: dict[str, dict[str, Handler]] = {
        "/health": {"GET": ops.health},
        "/status": {"GET": ops.status},
        "/metrics": {"GET": ops.metrics},
        "/openapi.json": {"GET": ops.openapi},
        "/debug/delay": {"POST": ops.debug_delay},
        "/kv": {m: api.empty_key for m in kv},
        "/kv/": {m: api.empty_key for m in kv},
    }
    for (method, path), handler in (admin_routes(admin) | (extra or {})).items():
        routes.setdefault(path, {})[method] = handler
    prefixes = sorted((prefixed or {}).items(), key=lambda kv: -len(kv[0]))  # the longest prefix first

    def by_prefix(path: str) -> dict[str, Handler] | None:
        for prefix, methods in prefixes:
            if path.startswith(prefix):
                return methods
        return None

    async def not_found(request: Request) -> Response:
        return error(404, "not_found", f"no such endpoint: {request.path}")

    stats = metrics.requests

    def record(request: Request, status: int, start: float) -> None:
        path = request.path
        if path.startswith("/kv/") and len(path) > 4:
            stats.observe(request.method, status, time.perf_counter() - start)
        else:
            stats.observe(path.split("/", 2)[1] if path[:1] == "/" else path, status, None)

    async def dispatch(request: Request) -> Response:
        path = request.path
        start = time.perf_counter()
        try:
            methods = kv if path.startswith("/kv/") and len(path) > 4 else routes.get(path)
            if methods is None and prefixes:
                methods = by_prefix(path)
            if methods is None:
                handler: Handler = not_found
            elif request.method in methods:
                handler = methods[request.method]
            else:
                handler = _method_not_allowed
            resp = await handler(request)
        except BadRequest as bad:
            resp = error(400, "bad_request", str(bad))
        except AdminError as refused:
            resp = error(refused.status, "refused" if refused.status == 409 else "admin", str(refused))
        except Unavailable as unavailable:
            resp = error(503, "unavailable", str(unavailable))
        except InvalidJSON as invalid:
            resp = error(400, "bad_request", str(invalid))
        except Exception:  # noqa: BLE001 - a bug must answer 500 with JSON and keep the node serving
            log.exception("unhandled error for %s %s", request.method, request.path)
            resp = error(500, "internal", "internal error; see the node's log")
        record(request, resp.status, start)
        return resp

    def body_limit(method: str, path: str) -> int:
        return limit if path.startswith("/kv") else ADMIN_BODY_LIMIT

    def too_large(request: Request, size: int | None, cap: int) -> Response:
        # answered by the server before the body is read (or as soon as a chunked one passes the cap)
        resp = _too_large(size, cap)
        record(request, resp.status, time.perf_counter())
        return resp

    return HttpServer(dispatch, body_limit=body_limit, too_large=too_large, shutdown_timeout=3.0)


async def _method_not_allowed(request: Request) -> Response:
    return error(405, "method_not_allowed", "405: Method Not Allowed")
