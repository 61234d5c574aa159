"""Operations endpoints: /health, /status, /metrics, /openapi.json, and fault injection for tests."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from dynamostore.api.errors import BadRequest, error
from dynamostore.api.server import Request, Response, json_response
from dynamostore.metrics import NodeMetrics

Delay = Callable[[str, float], bool]
"""Delay this node's internal messages to a peer by so many seconds; False for an unknown peer."""


class OpsApi:
    def __init__(self, node_id: str, status: Callable[[], dict[str, Any]], metrics: NodeMetrics,
                 spec: dict[str, Any], delay: Delay | None) -> None:
        self.node_id = node_id
        self.status_of = status
        self.registry = metrics
        self.spec = spec
        self.delay = delay  # None: fault injection is off (`testing_faults = false`)

    async def health(self, request: Request) -> Response:
        return json_response({"status": "ok", "node": self.node_id})

    async def status(self, request: Request) -> Response:
        return json_response(self.status_of(), dumps=lambda o: json.dumps(o, default=str))

    async def metrics(self, request: Request) -> Response:
        return Response(self.registry.render(), headers={"Content-Type": "text/plain; version=0.0.4"})

    async def openapi(self, request: Request) -> Response:
        return json_response(self.spec)

    async def debug_delay(self, request: Request) -> Response:
        """Fault injection for benchmarks and tests: delay this node's internal messages to one peer.

        Only with `testing_faults = true` in the settings; a production node answers 404."""
        if self.delay is None:
            return error(404, "not_found", "fault injection is disabled (set testing_faults = true)")
        try:
            doc = await request.json()  # InvalidJSON is a ValueError
            peer, ms = str(doc["peer"]), float(doc["ms"])
        except (ValueError, KeyError, TypeError) as exc:
            raise BadRequest('expected JSON {"peer": "<node id>", "ms": <delay>}') from exc
        if not 0 <= ms <= 60_000 or not self.delay(peer, ms / 1000):
            raise BadRequest(f"unknown peer {peer!r} or delay out of range (0..60000 ms)")
        return json_response({"peer": peer, "ms": ms})
