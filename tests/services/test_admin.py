"""Membership administration over HTTP (api/admin.py) and its refusals, driven through the node's real routing
table (`api.routes.build_server`) with `api.server.Request` objects. The membership is a fake of
`views.Membership` that applies proposals with the real rules (`ring.membership.apply`); liveness and the
newcomers' ping are fakes too."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dynamostore.api.admin import AdminApi, admin_routes
from dynamostore.api.ops import OpsApi
from dynamostore.api.routes import build_server
from dynamostore.api.server import HttpServer, Request, Response
from dynamostore.cluster.membership import MembershipError
from dynamostore.config import LimitSettings
from dynamostore.metrics import NodeMetrics
from ring.membership import Command, MemberInfo, MembershipState, Result, StageJoin, StageRemove, apply
from tests.services.fakes import FakeLiveness, membership

NODES = ["n1", "n2", "n3", "n4"]


class FakeMembership:
    """`views.Membership`: linearizable reads and proposals of a state kept here; `down` makes both fail as
    they do without a Raft leader."""

    def __init__(self, state: MembershipState) -> None:
        self.state = state
        self.proposed: list[Command] = []
        self.down = False

    async def read_barrier(self, timeout: float = 5.0) -> MembershipState:
        if self.down:
            raise MembershipError("no linearizable read of the membership: no Raft leader")
        return self.state

    async def propose(self, cmd: Command, timeout: float = 10.0) -> Result:
        if self.down:
            raise MembershipError("membership change not committed within 10s: no Raft leader")
        self.proposed.append(cmd)
        self.state, res = apply(self.state, cmd)
        return res

    def raft_status(self) -> dict[str, Any]:
        return {"leader": None if self.down else "n1"}


class NoKeys:
    """The key routes, which no admin request may reach."""

    limits = LimitSettings()

    async def get(self, request: Request) -> Response:
        raise AssertionError(f"an admin request reached the key routes: {request.path}")

    put = delete = empty_key = get


class Admin:
    def __init__(self) -> None:
        self.membership = FakeMembership(membership(NODES, 8, 3))
        self.liveness = FakeLiveness("n1", NODES)
        self.reachable: set[str] = set()
        metrics = NodeMetrics("n1")
        ops = OpsApi("n1", dict, metrics, {}, None)
        admin = AdminApi(self.membership, self.liveness, self.ping)
        self.server: HttpServer = build_server(NoKeys(), ops, admin_routes(admin), metrics)

    async def ping(self, m: MemberInfo) -> None:
        if m.id not in self.reachable:
            raise ConnectionRefusedError(f"{m.id} does not answer")

    async def request(self, method: str, path: str, body: Any = None, raw: bytes | None = None
                      ) -> tuple[int, dict[str, Any]]:
        data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
        req = Request(method, path, "", {"content-type": "application/json"}, True, len(data))
        req.body = data
        resp = await self.server.handler(req)
        return resp.status, json.loads(resp.body)


@pytest.fixture
def admin() -> Admin:
    return Admin()


def newcomer(node: str = "n5") -> dict[str, Any]:
    return {"id": node, "http_port": 8005, "rpc_port": 9005}


async def test_removing_a_node_seen_up_is_refused(admin: Admin) -> None:
    status, body = await admin.request("POST", "/admin/remove", {"id": "n4"})
    assert status == 409 and body["error"] == "refused" and "n4 is up: use leave" in body["reason"]
    assert admin.membership.proposed == []
    admin.liveness.set_down("n4", 0.0)
    status, body = await admin.request("POST", "/admin/remove", {"id": "n4"})
    assert status == 200 and body["ok"] and admin.membership.proposed == [StageRemove("n4")]


async def test_a_commit_that_needs_an_unreachable_node_is_refused_with_the_reason(admin: Admin) -> None:
    status, _ = await admin.request("POST", "/admin/join", newcomer())
    assert status == 200 and isinstance(admin.membership.proposed[0], StageJoin)
    status, body = await admin.request("POST", "/admin/commit")
    assert status == 409 and body["error"] == "refused" and "n5 is not reachable" in body["reason"]
    assert len(admin.membership.proposed) == 1  # the commit was never proposed
    _, plan = await admin.request("GET", "/admin/plan")
    assert plan["errors"] == ["n5 is not reachable"]
    admin.reachable.add("n5")  # the newcomer answers its ping now
    status, body = await admin.request("POST", "/admin/commit")
    assert status == 200 and body["state"]["epoch"] == 2 and body["state"]["transfers_pending"]


@pytest.mark.parametrize(("path", "raw"), [
    ("/admin/remove", b"{not json"),
    ("/admin/remove", b'{"node": "n4"}'),
    ("/admin/leave", b'["n4"]'),
    ("/admin/join", b'{"id": "n5"}'),
    ("/admin/join", b'{"id": "n5", "http_port": "eighty", "rpc_port": 9005}'),
    ("/admin/replace", b'{"old": "n4", "new": {"id": "n5"}}'),
])
async def test_malformed_bodies_are_400_and_change_nothing(admin: Admin, path: str, raw: bytes) -> None:
    before = admin.membership.state
    status, body = await admin.request("POST", path, raw=raw)
    assert status == 400 and set(body) == {"error", "reason"} and body["reason"]
    assert admin.membership.proposed == [] and admin.membership.state is before


async def test_a_proposal_the_membership_rules_refuse_is_409_with_their_reason(admin: Admin) -> None:
    status, body = await admin.request("POST", "/admin/leave", {"id": "n9"})
    assert status == 409 and "unknown member 'n9'" in body["reason"]
    status, body = await admin.request("POST", "/admin/join", {**newcomer("n2")})
    assert status == 409 and "already exists" in body["reason"]


async def test_without_a_raft_leader_every_admin_request_is_503(admin: Admin) -> None:
    admin.membership.down = True
    for method, path, body in [("GET", "/admin/members", None), ("GET", "/admin/plan", None),
                               ("POST", "/admin/join", newcomer()), ("POST", "/admin/commit", None)]:
        status, answer = await admin.request(method, path, body)
        assert status == 503 and answer["error"] == "admin" and "Raft leader" in answer["reason"], (path, answer)


async def test_members_describes_the_committed_state(admin: Admin) -> None:
    status, body = await admin.request("GET", "/admin/members")
    assert status == 200 and body["epoch"] == 1 and sorted(body["members"]) == NODES
    assert body["raft"] == {"leader": "n1"} and len(body["owners"]) == 8
