"""Membership administration over HTTP, staged the way Riak operators know: join, leave, remove, replace,
then plan (which partitions move where) and commit. Every change is proposed to the Raft group and takes
effect when committed; unsafe requests are refused with a reason (409) before or when they are applied.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from dynamostore.api.server import Request, Response, json_response
from dynamostore.cluster.membership import MembershipError
from dynamostore.views import Liveness, Membership
from handoff.transfer import moves
from ring.membership import (
    ClearStaged,
    Command,
    Commit,
    MemberInfo,
    MembershipState,
    StageJoin,
    StageLeave,
    StageRemove,
    StageReplace,
    plan,
    validate_commit,
)

Ping = Callable[[MemberInfo], Awaitable[None]]
"""Reach a member at its address (a staged newcomer is not in the address book yet); raises if it can't."""


class AdminError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def _member(doc: Any) -> MemberInfo:
    try:
        return MemberInfo(
            id=str(doc["id"]),
            http_host=str(doc.get("http_host", "127.0.0.1")),
            http_port=int(doc["http_port"]),
            rpc_host=str(doc.get("rpc_host", doc.get("http_host", "127.0.0.1"))),
            rpc_port=int(doc["rpc_port"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise AdminError(400, 'a member is {"id", "http_port", "rpc_port", optional "http_host", "rpc_host"}') from exc


def describe(state: MembershipState) -> dict[str, Any]:
    return {
        "epoch": state.epoch,
        "members": {m: {"status": i.status.value, "http": f"{i.http_host}:{i.http_port}",
                        "rpc": f"{i.rpc_host}:{i.rpc_port}"} for m, i in sorted(state.members.items())},
        "voters": list(state.voters),
        "transfers_pending": [[t.partition, t.source, t.target] for t in state.transfers],
        # per move still pending: its source, every pending owner and the streams left (they hold no reads yet)
        "moves": moves(state) if state.ring is not None else [],
        "staged": [_change(c) for c in state.staged],
        "owners": list(state.ring.owners) if state.ring else [],
    }


def _change(c: Any) -> dict[str, Any]:
    kind = type(c).__name__.removeprefix("Stage").lower()
    out: dict[str, Any] = {"change": kind}
    if hasattr(c, "member") and c.member is not None:
        out["member"] = c.member.id
    for f in ("id", "old", "dead"):
        if hasattr(c, f):
            out[f] = getattr(c, f)
    return out


class AdminApi:
    def __init__(self, membership: Membership, liveness: Liveness, ping: Ping) -> None:
        self.membership = membership
        self.liveness = liveness
        self.ping = ping

    async def _state(self) -> MembershipState:
        try:
            return await self.membership.read_barrier()
        except MembershipError as exc:
            raise AdminError(503, str(exc)) from exc

    async def _propose(self, cmd: Command) -> Response:
        try:
            res = await self.membership.propose(cmd)
        except MembershipError as exc:
            raise AdminError(503, str(exc)) from exc
        if not res.ok:
            raise AdminError(409, res.reason)
        return json_response({"ok": True, "epoch": res.epoch, "state": describe(await self._state())})

    async def members(self, request: Request) -> Response:
        st = await self._state()
        return json_response({**describe(st), "raft": self.membership.raft_status()})

    async def join(self, request: Request) -> Response:
        m = _member(await _json(request))
        return await self._propose(StageJoin(m))

    async def leave(self, request: Request) -> Response:
        return await self._propose(StageLeave(_id(await _json(request))))

    async def remove(self, request: Request) -> Response:
        node_id = _id(await _json(request))
        if node_id in self.liveness.up_set():
            raise AdminError(409, f"{node_id} is up: use leave for a live node (remove is for a dead one)")
        return await self._propose(StageRemove(node_id))

    async def replace(self, request: Request) -> Response:
        doc = await _json(request)
        old = str(doc.get("old", ""))
        dead = old not in self.liveness.up_set()
        return await self._propose(StageReplace(old, _member(doc.get("new", {})), dead))

    async def clear(self, request: Request) -> Response:
        return await self._propose(ClearStaged())

    async def plan(self, request: Request) -> Response:
        st = await self._state()
        p = plan(st)
        return json_response({
            "epoch": st.epoch,
            "changes": [_change(c) for c in p.changes],
            "moves": p.moves(),
            "partitions_moving": len(p.transfers),
            "errors": validate_commit(st, await self._reachable(st)),
        })

    async def _reachable(self, st: MembershipState) -> set[str]:
        """Members this node sees up, plus staged newcomers that answer a ping at their address."""
        reachable = self.liveness.up_set()
        for c in st.staged:
            m = getattr(c, "member", None)
            if m is not None and m.id not in reachable:
                try:
                    await self.ping(m)
                    reachable.add(m.id)
                except Exception:  # noqa: BLE001 - unreachable is the answer
                    pass
        return reachable

    async def commit(self, request: Request) -> Response:
        st = await self._state()
        errors = validate_commit(st, await self._reachable(st))
        if errors:
            raise AdminError(409, "; ".join(errors))
        return await self._propose(Commit(st.epoch))


async def _json(request: Request) -> Any:
    try:
        return await request.json()
    except ValueError as exc:  # http_server.InvalidJSON
        raise AdminError(400, "the body must be JSON") from exc


def _id(doc: Any) -> str:
    if not isinstance(doc, dict) or not isinstance(doc.get("id"), str):
        raise AdminError(400, 'expected JSON {"id": "<node id>"}')
    return str(doc["id"])


def admin_routes(api: AdminApi) -> dict[tuple[str, str], Callable[[Request], Awaitable[Response]]]:
    return {
        ("GET", "/admin/members"): api.members,
        ("GET", "/admin/plan"): api.plan,
        ("POST", "/admin/join"): api.join,
        ("POST", "/admin/leave"): api.leave,
        ("POST", "/admin/remove"): api.remove,
        ("POST", "/admin/replace"): api.replace,
        ("POST", "/admin/clear"): api.clear,
        ("POST", "/admin/commit"): api.commit,
    }
