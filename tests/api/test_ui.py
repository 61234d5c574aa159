"""The console's HTTP side on the node's real route table and server: static files with their types, ETags and
security headers, nothing outside the console's folder, `/status/history` and its bad input. The page itself is
tested in a real browser (test_ui_browser.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest

from dynamostore.api.routes import build_server
from dynamostore.api.server import HttpServer, Request, Response, json_response
from dynamostore.api.ui import ConsoleApi, console_routes, load_assets
from dynamostore.metrics import NodeMetrics
from tests.api.test_http_server import read_response


async def _unused(request: Request) -> Response:
    return json_response({"unused": True})


@pytest.fixture
async def console() -> AsyncIterator[tuple[int, list[int]]]:
    asked: list[int] = []

    def history(since: int) -> dict[str, Any]:
        asked.append(since)
        return {"seq": 3, "samples": [{"seq": 3}] if since < 3 else []}

    stub = SimpleNamespace(get=_unused, put=_unused, delete=_unused, empty_key=_unused,
                           limits=SimpleNamespace(max_value_bytes=1024))
    ops = SimpleNamespace(health=_unused, ready=_unused, status=_unused, metrics=_unused, openapi=_unused,
                          debug_delay=_unused)
    exact, prefixed = console_routes(ConsoleApi(history))
    server: HttpServer = build_server(stub, ops, {}, NodeMetrics("n1"), extra=exact,  # type: ignore[arg-type]
                                      prefixed=prefixed)
    await server.start("127.0.0.1", 0)
    try:
        yield server.port, asked
    finally:
        await server.stop()


async def _get(port: int, target: str, headers: dict[str, str] | None = None,
               method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    writer.write(f"{method} {target} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode())
    try:
        return await read_response(reader, head=method == "HEAD")
    finally:
        writer.close()


async def test_the_console_is_served_with_its_types_etags_and_a_strict_policy(console: tuple[int, list[int]]) -> None:
    port, _ = console
    status, hd, body = await _get(port, "/ui")
    assert status == 200 and hd["content-type"] == "text/html; charset=utf-8" and b"/ui/app.js" in body
    csp = hd["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert hd["cache-control"] == "no-cache" and hd["x-content-type-options"] == "nosniff"
    assert (await _get(port, "/ui/"))[2] == body
    for name, ctype in [("app.js", "text/javascript"), ("style.css", "text/css"),
                        ("vendor/uPlot.iife.min.js", "text/javascript"), ("vendor/LICENSE-uPlot.txt", "text/plain")]:
        status, hd, data = await _get(port, "/ui/" + name)
        assert status == 200 and hd["content-type"].startswith(ctype) and data, name
    status, hd, data = await _get(port, "/ui/app.js")
    again = await _get(port, "/ui/app.js", {"If-None-Match": hd["etag"]})
    assert again[0] == 304 and again[2] == b""
    head = await _get(port, "/ui/app.js", method="HEAD")
    assert head[0] == 200 and head[1]["content-length"] == str(len(data))


@pytest.mark.parametrize("target", ["/ui/../node.py", "/ui/%2e%2e/node.py", "/ui/..%2Fnode.py", "/ui/vendor/",
                                    "/ui//etc/passwd", "/ui/nothing.js", "/ui/%2Fetc%2Fpasswd", "/ui.py"])
async def test_nothing_outside_the_console_folder_is_served(console: tuple[int, list[int]], target: str) -> None:
    status, hd, body = await _get(console[0], target)
    assert status == 404 and json.loads(body)["error"] == "not_found", (target, body)


async def test_history_answers_the_samples_after_a_number_and_refuses_a_bad_one(console: tuple[int, list[int]]) -> None:
    port, asked = console
    status, _, body = await _get(port, "/status/history?since=1")
    assert status == 200 and json.loads(body)["samples"] == [{"seq": 3}]
    assert (await _get(port, "/status/history"))[0] == 200
    status, _, body = await _get(port, "/status/history?since=abc")
    assert status == 400 and "since" in json.loads(body)["reason"]
    assert asked == [1, 0]
    assert (await _get(port, "/ui", method="POST"))[0] == 405


def test_every_file_of_the_console_ships_as_package_data() -> None:
    """What pyproject.toml's package-data globs take (ui/*.html, *.js, *.css, *.png, vendor/*) covers every file
    the console has, so an installed node serves the same page as a checkout."""
    import fnmatch
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    setuptools = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    globs = setuptools["package-data"]["dynamostore.api"]
    for name in load_assets():
        assert any(fnmatch.fnmatch("ui/" + name, g) for g in globs), name
