"""Which permission each HTTP route needs: pure, decided from the method, path and query string alone.

`/health` and `/health/ready` are always open (load balancers and `dynamostore cluster` probe them);
`/openapi.json` and the console's files (`/ui`, `/ui/...`) are open (they hold no data: the console's page
asks for a token and sends it with every request it makes). `/status`, `/status/history` and `/metrics` need the permission the operator
configured (`[security] status_access`, `metrics_access`: "open", "read" or "admin"; default "read", so a
Prometheus scraper gets a read token). Keys: GET and HEAD need read, and so does the key inspector
(`/debug/kv/...`, which shows what a read would); PUT, POST and DELETE need write (and read as well when
`returnbody` asks for the stored value back). `/admin/*` and the rest of `/debug/*` need admin, and so does any
path not listed here: an endpoint added later is closed until someone decides otherwise.
"""

from __future__ import annotations

from dynamostore.security.tokens import ADMIN, READ, WRITE

ACCESS_LEVELS: dict[str, int | None] = {"open": None, "read": READ, "admin": ADMIN}

_UNLISTED = ADMIN


class Policy:
    """`required(method, path, query)`: the permission bits a request needs (tokens.READ, ...), None when open."""

    __slots__ = ("_exact",)

    def __init__(self, status_access: str = "read", metrics_access: str = "read") -> None:
        for name, level in (("status_access", status_access), ("metrics_access", metrics_access)):
            if level not in ACCESS_LEVELS:
                raise ValueError(f"{name} must be one of {', '.join(ACCESS_LEVELS)}, not {level!r}")
        self._exact: dict[str, int | None] = {
            "/health": None,
            "/health/ready": None,
            "/openapi.json": None,
            "/status": ACCESS_LEVELS[status_access],
            "/status/history": ACCESS_LEVELS[status_access],
            "/metrics": ACCESS_LEVELS[metrics_access],
            "/ui": None,
        }

    def required(self, method: str, path: str, query_string: str) -> int | None:
        if path.startswith("/kv/") or path == "/kv":
            if method == "GET" or method == "HEAD":
                return READ
            if query_string and "returnbody" in query_string:  # the answer carries the stored value
                return WRITE | READ
            return WRITE
        need = self._exact.get(path, _UNLISTED)
        if need is _UNLISTED and path.startswith("/ui/"):
            return None
        if need is _UNLISTED and path.startswith("/debug/kv/") and (method == "GET" or method == "HEAD"):
            return READ
        return need
