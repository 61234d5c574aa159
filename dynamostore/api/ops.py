"""Operations endpoints: /health, /health/ready, /status, /metrics, /openapi.json, and fault injection for tests.

`/health` is liveness: the process answers HTTP. `/health/ready` is readiness: the node can serve reads, writes
and admin changes right now (`ready_reasons`, a pure rule over a snapshot of the node's facts). A node
answers /health as soon as its listener is up, which is before its Raft log has applied the founding entry
or learnt a leader: an admin change sent then is refused ("the cluster is not bootstrapped"), so tests,
`dynamostore cluster` and load balancers wait on readiness instead.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dynamostore.api.errors import BadRequest, error
from dynamostore.api.server import Request, Response, json_response
from dynamostore.metrics import NodeMetrics

Delay = Callable[[str, float], bool]
"""Delay this node's internal messages to a peer by so many seconds; False for an unknown peer."""


@dataclass(frozen=True)
class ReadyFacts:
    """What readiness is decided from, read from the node at the time of the probe."""

    store_usable: bool          # storage is open and its writer has not failed
    membership_applied: bool    # this node's Raft log has applied the founding entry (the cluster exists here)
    raft_leader: str | None     # the Raft leader this node knows of (admin changes go through it)
    ring_known: bool            # this node has a ring to place keys with
    member_status: str | None   # this node's status in the applied membership (None: not a member)


SERVING = ("active", "joining", "leaving")


def ready_reasons(f: ReadyFacts) -> list[str]:
    """Why the node is not ready for reads, writes and admin changes; empty when it is."""
    out: list[str] = []
    if not f.store_usable:
        out.append("storage is closed or its writer failed")
    if not f.membership_applied:
        out.append("the membership log has not applied the cluster's founding entry yet")
    if f.raft_leader is None:
        out.append("no Raft leader known")
    if not f.ring_known:
        out.append("no ring yet (not a member of the cluster)")
    if f.member_status not in SERVING:
        out.append(f"this node's membership status is {f.member_status or 'none'}")
    return out


class OpsApi:
    def __init__(self, node_id: str, status: Callable[[], dict[str, Any]], metrics: NodeMetrics,
                 spec: dict[str, Any], delay: Delay | None,
                 facts: Callable[[], ReadyFacts] | None = None) -> None:
        self.node_id = node_id
        self.status_of = status
        self.registry = metrics
        self.spec = spec
        self.delay = delay  # None: fault injection is off (`testing_faults = false`)
        self.facts = facts  # None: readiness is not wired (a test's ops API): never ready

    async def health(self, request: Request) -> Response:
        return json_response({"status": "ok", "node": self.node_id})

    async def ready(self, request: Request) -> Response:
        """200 {"ready": true} when the node can take reads, writes and admin changes; else 503 with reasons."""
        if self.facts is None:
            reasons = ["readiness is not wired on this node"]
            leader: str | None = None
        else:
            f = self.facts()
            reasons, leader = ready_reasons(f), f.raft_leader
        doc: dict[str, Any] = {"ready": not reasons, "node": self.node_id, "raft_leader": leader}
        if reasons:
            doc |= {"error": "not_ready", "reason": "; ".join(reasons), "reasons": reasons}
        return json_response(doc, status=200 if not reasons else 503)

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
