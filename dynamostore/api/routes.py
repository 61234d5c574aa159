"""The HTTP routing table of a node: exact-path routes, the key routes by prefix, a few other prefix routes
(the console's files, the key inspector), the mapping of errors to statuses, the request counters and
latencies (metrics.RequestStats), and, when clients need tokens, the gate that checks each request's token
against the permission its route needs (security.authz) as soon as its head is read: 401 without a valid
token (unknown, expired, revoked), 403 when the token lacks the role."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from dynamostore.api.admin import AdminError
from dynamostore.api.errors import BadRequest, error
from dynamostore.api.server import Gate, HttpServer, InvalidJSON, Request, Response
from dynamostore.api.tokens import TokenApi, token_routes
from dynamostore.config import LimitSettings, ListenerSettings
from dynamostore.kv.coordinator import Unavailable
from dynamostore.metrics import NodeMetrics
from dynamostore.security.authz import Policy
from dynamostore.security.tokens import Principal, TokenChecker, names_of
from ring.tokens import ApiToken

log = logging.getLogger(__name__)

ADMIN_BODY_LIMIT = 64 * 1024  # admin and debug bodies are small JSON documents


def _too_large(size: int | None, limit: int) -> Response:
    got = f"{size} bytes" if size is not None else "a larger body"
    return error(413, "value_too_large", f"the value is {got}, over the limit of {limit} bytes", limit=limit)


Handler = Callable[[Request], Awaitable[Response]]


# What the routing table takes from the key and ops APIs: their handlers, nothing else. Protocols, not the
# classes (api.kv.KvApi, api.ops.OpsApi), so that tests of the routing, admin and console routes can pass
# stand-ins to the compiled build_server; the handlers are looked up once, when the table is built.
class KeyHandlers(Protocol):
    @property
    def limits(self) -> LimitSettings: ...
    async def get(self, request: Request) -> Response: ...
    async def put(self, request: Request) -> Response: ...
    async def delete(self, request: Request) -> Response: ...
    async def empty_key(self, request: Request) -> Response: ...


class OpsHandlers(Protocol):
    async def health(self, request: Request) -> Response: ...
    async def ready(self, request: Request) -> Response: ...
    async def status(self, request: Request) -> Response: ...
    async def metrics(self, request: Request) -> Response: ...
    async def openapi(self, request: Request) -> Response: ...
    async def debug_delay(self, request: Request) -> Response: ...


@dataclass(frozen=True)
class Access:
    """Client authentication: which permission each route needs, and the tokens known right now."""

    policy: Policy
    tokens: Callable[[], Mapping[str, ApiToken]]


def build_server(api: KeyHandlers, ops: OpsHandlers, admin: Mapping[tuple[str, str], Handler], metrics: NodeMetrics,
                 extra: dict[tuple[str, str], Handler] | None = None,
                 prefixed: dict[str, dict[str, Handler]] | None = None, tokens: TokenApi | None = None,
                 access: Access | None = None, listeners: ListenerSettings | None = None) -> HttpServer:
    """Our own dispatch on dynamostore.api.server: exact-path routes (`extra` adds some by (method, path)),
    the key routes by prefix, other routes by prefix (`prefixed`: prefix -> method -> handler; looked at only
    when no exact route matched, so a key request never pays for them), the error mapping below, and the
    request counters and latencies (metrics.RequestStats). `tokens`: the token admin endpoints; `access`:
    tokens required (None: none); `listeners`: timeouts and the connection cap."""
    limit = api.limits.max_value_bytes
    kv: dict[str, Handler] = {"GET": api.get, "HEAD": api.get, "PUT": api.put, "POST": api.put,
                              "DELETE": api.delete}
    routes: dict[str, dict[str, Handler]] = {
        "/health": {"GET": ops.health},
        "/health/ready": {"GET": ops.ready},
        "/status": {"GET": ops.status},
        "/metrics": {"GET": ops.metrics},
        "/openapi.json": {"GET": ops.openapi},
        "/debug/delay": {"POST": ops.debug_delay},
        "/kv": {m: api.empty_key for m in kv},
        "/kv/": {m: api.empty_key for m in kv},
    }
    token_api = token_routes(tokens) if tokens is not None else {}
    for (method, path), handler in (dict(admin) | (extra or {}) | token_api).items():
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

    gate = make_gate(access.policy, access.tokens, record) if access is not None else None
    lst = listeners or ListenerSettings()
    return HttpServer(dispatch, body_limit=body_limit, too_large=too_large, shutdown_timeout=3.0, gate=gate,
                      keepalive_timeout=lst.idle_timeout_s, header_timeout=lst.header_timeout_s,
                      body_timeout=lst.body_timeout_s, max_connections=lst.max_http_connections)


def make_gate(policy: Policy, tokens: Callable[[], Mapping[str, ApiToken]],
              record: Callable[[Request, int, float], None]) -> Gate:
    """The server's gate: None lets a request through; a refusal is its answer (and is counted)."""
    required = policy.required
    check = TokenChecker(tokens).check

    def gate(request: Request) -> Response | None:
        need = required(request.method, request.path, request.query_string)
        if need is None:
            return None
        who = check(request.headers.get("authorization"), time.time())
        if isinstance(who, Principal):
            if not need & ~who.mask:
                return None
            resp = error(403, "forbidden", f"token {who.id} has the roles {names_of(who.mask)}; {request.method} "
                                           f"{request.path} needs {names_of(need)}")
        else:
            resp = error(401, "unauthorized", who.reason)
            resp.headers["WWW-Authenticate"] = 'Bearer realm="dynamostore"'
        record(request, resp.status, time.perf_counter())
        return resp

    return gate


async def _method_not_allowed(request: Request) -> Response:
    return error(405, "method_not_allowed", "405: Method Not Allowed")
