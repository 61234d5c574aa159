"""`GET /debug/kv/{key}`: every stored copy of one key, and why it has the siblings it has.

The node asks every node that may hold the key, at once, over the internal RPC method `kv.inspect` (answered
by each node's local replica, see node.py): the key's primaries and fallbacks, which on a ring of a few
nodes is every member, so a node holding a hint for the key is always asked. Itself it asks directly.
`kv.inspect.inspect` compares the answers. Nothing is written: this is a read-only view for operators,
and it reads each node's own copy (no quorum, no read repair).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dynamostore.api.errors import BadRequest
from dynamostore.api.server import Request, Response, json_response
from dynamostore.kv.inspect import NodeRecords, inspect
from dynamostore.kv.replica import KeyRef
from dynamostore.net.rpc import RpcRemoteError, RpcTimeout, RpcUnavailable
from dynamostore.views import Liveness, Peers, Placement

INSPECT_TIMEOUT = 2.0
PREFIX = "/debug/kv/"

LocalInspect = Callable[[bytes], Awaitable[NodeRecords]]
"""This node's own records of a key (what it answers to `kv.inspect`)."""


class DebugApi:
    def __init__(self, *, placement: Placement, liveness: Liveness, peers: Peers, local: LocalInspect,
                 locate: Callable[[bytes], KeyRef], max_key_bytes: int) -> None:
        self.placement = placement
        self.liveness = liveness
        self.peers = peers
        self.local = local
        self.locate = locate
        self.max_key_bytes = max_key_bytes

    def _key(self, request: Request) -> bytes:
        raw = request.path[len(PREFIX):] if request.path.startswith(PREFIX) else ""
        if not raw:
            raise BadRequest("the key is empty: GET /debug/kv/{key}")
        key = raw.encode("utf-8", "surrogateescape")
        if len(key) > self.max_key_bytes:
            raise BadRequest(f"the key is {len(key)} bytes, longer than the limit of {self.max_key_bytes}")
        return key

    async def kv(self, request: Request) -> Response:
        key = self._key(request)
        ref = self.locate(key)
        ring = self.placement.ring
        if ring is None:
            primaries: list[str] = []
            fallbacks: list[str] = []
        else:
            primaries, fallbacks = ring.preference_list(ref.partition, self.placement.n_val)
        # Every node of the preference list (fallbacks included), and any other known member: one of them
        # may hold a hint for the key from an earlier ring.
        me = self.placement.node_id
        nodes = list(dict.fromkeys([*primaries, *fallbacks, *self.placement.members(), me]))
        answers = await asyncio.gather(*(self._ask(n, key) for n in nodes))
        doc = inspect(key, ref.partition, ref.segment, primaries, fallbacks, self.liveness.up_set(),
                      dict(zip(nodes, answers)))
        doc["asked_by"] = me
        return json_response(doc)

    async def _ask(self, node: str, key: bytes) -> NodeRecords | str:
        if node == self.placement.node_id:
            return await self.local(key)
        try:
            return NodeRecords.from_wire(await self.peers.call(node, "kv.inspect", [key], INSPECT_TIMEOUT))
        except RpcUnavailable:
            return "unreachable"
        except RpcTimeout:
            return f"no answer within {INSPECT_TIMEOUT:g} s"
        except RpcRemoteError as exc:
            return f"error: {exc}"
        except (ValueError, TypeError, KeyError) as exc:
            return f"malformed answer: {exc}"


def debug_routes(api: DebugApi) -> dict[str, dict[str, Callable[[Request], Awaitable[Response]]]]:
    """Routes by path prefix and method."""
    return {PREFIX: {"GET": api.kv}}
