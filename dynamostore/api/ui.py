"""The operator console at `/ui`: static files shipped in the package, and the time series it draws.

The files under `dynamostore/api/ui/` (HTML, JavaScript, CSS and the vendored chart library, no build step)
are read once when the node starts and served from memory, each with its content type, an ETag (a 304 when
the browser has it) and `Cache-Control: no-cache` (the browser revalidates, so a node upgraded in place never
serves a stale script). Only names found in that folder are served: a request for anything else, `..`
included, is a 404 without touching the file system. The page itself polls the node's JSON endpoints
(`/status`, `/status/history`, `/admin/plan`, `/debug/kv/{key}`); `/status/history` is served here, from
the node's sampler (services/history.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

from dynamostore.api.errors import BadRequest
from dynamostore.api.server import Request, Response, json_response

PREFIX = "/ui/"

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
    ".md": "text/plain; charset=utf-8",
}
# Scripts and styles only from this node; fetches only to it; never framed (the page has admin buttons).
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "frame-ancestors 'none'; base-uri 'none'; form-action 'none'")


class Asset:
    __slots__ = ("body", "content_type", "etag")

    def __init__(self, body: bytes, content_type: str) -> None:
        self.body = body
        self.content_type = content_type
        self.etag = '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'


def load_assets(root: Traversable | None = None) -> dict[str, Asset]:
    """Every file under the console's folder with a known type, by its path relative to it ("app.js",
    "vendor/uPlot.iife.min.js")."""
    base = root if root is not None else resources.files("dynamostore.api").joinpath("ui")
    out: dict[str, Asset] = {}

    def walk(folder: Traversable, prefix: str) -> None:
        for entry in folder.iterdir():
            name = prefix + entry.name
            if entry.is_dir():
                walk(entry, name + "/")
                continue
            ext = "." + entry.name.rsplit(".", 1)[-1] if "." in entry.name else ""
            ctype = CONTENT_TYPES.get(ext.lower(), "text/plain; charset=utf-8" if entry.name.isupper() else None)
            if ctype is not None:  # LICENSE files are served as text; anything unknown is not served
                out[name] = Asset(entry.read_bytes(), ctype)

    walk(base, "")
    if "index.html" not in out:
        raise FileNotFoundError("the console's index.html is missing from the package (dynamostore/api/ui/)")
    return out


Handler = Callable[[Request], Awaitable[Response]]
History = Callable[[int], dict[str, Any]]
"""The samples after a sequence number (services.history.HistoryService.document)."""


class ConsoleApi:
    def __init__(self, history: History, assets: dict[str, Asset] | None = None) -> None:
        self.history_of = history
        self.assets = assets if assets is not None else load_assets()

    async def index(self, request: Request) -> Response:
        return self._serve(request, "index.html")

    async def asset(self, request: Request) -> Response:
        name = request.path[len(PREFIX):]
        return self._serve(request, name or "index.html")

    def _serve(self, request: Request, name: str) -> Response:
        a = self.assets.get(name)
        if a is None:
            return json_response({"error": "not_found", "reason": f"no such console file: {name}"}, status=404)
        headers = {"ETag": a.etag, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
        if name.endswith(".html"):
            headers["Content-Security-Policy"] = CSP
            headers["Referrer-Policy"] = "no-referrer"
        if request.headers.get("if-none-match") == a.etag:
            return Response(b"", 304, headers)
        return Response(a.body, 200, headers, a.content_type)

    async def history(self, request: Request) -> Response:
        raw = request.query.get("since", "0") if request.query_string else "0"
        try:
            since = int(raw)
        except ValueError:
            raise BadRequest(f"since must be an integer sample number, not {raw!r}") from None
        return json_response(self.history_of(since))


def console_routes(api: ConsoleApi) -> tuple[dict[tuple[str, str], Handler], dict[str, dict[str, Handler]]]:
    """(exact routes by (method, path), routes by path prefix and method) of the console."""
    exact: dict[tuple[str, str], Handler] = {
        ("GET", "/ui"): api.index, ("HEAD", "/ui"): api.index, ("GET", "/status/history"): api.history,
    }
    return exact, {PREFIX: {"GET": api.asset, "HEAD": api.asset}}
