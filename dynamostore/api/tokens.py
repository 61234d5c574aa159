"""API tokens over HTTP (admin only, like everything under /admin): create, list, revoke.

A token change is a membership command: proposed to the Raft group, applied by every node in log order, so
all nodes accept and refuse the same tokens (a node applies it within a heartbeat or so of the commit). The
node that takes the request draws the token's id and secret from `secrets`, proposes only its SHA-256, and
shows the token in its answer, once; nothing else ever holds it.

    GET  /admin/tokens                  {"tokens": [{id, name, roles, created_at, expires_at, revoked_at, state}]}
    POST /admin/tokens                  {"name", "roles": ["read", "write", "admin"], "ttl_s"?} -> {"token", ...}
    POST /admin/tokens/revoke           {"id"}
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from dynamostore.api.admin import AdminError
from dynamostore.api.server import Request, Response, json_response
from dynamostore.cluster.membership import MembershipError
from dynamostore.security import tokens as tk
from dynamostore.views import Membership
from ring.membership import Command
from ring.tokens import AddToken, ApiToken, RevokeToken

MAX_TTL_S = 10 * 365 * 86400


class TokenApi:
    def __init__(self, membership: Membership) -> None:
        self.membership = membership

    async def _propose(self, cmd: Command) -> None:
        try:
            res = await self.membership.propose(cmd)
        except MembershipError as exc:
            raise AdminError(503, str(exc)) from exc
        if not res.ok:
            raise AdminError(409, res.reason)

    async def _tokens(self) -> dict[str, ApiToken]:
        try:
            return dict((await self.membership.read_barrier()).tokens)  # as of now, linearizably
        except MembershipError as exc:
            raise AdminError(503, str(exc)) from exc

    async def list(self, request: Request) -> Response:
        now = time.time()
        toks = sorted((await self._tokens()).values(), key=lambda t: (t.created_at, t.id))
        return json_response({"tokens": [tk.describe(t, now) for t in toks]})

    async def create(self, request: Request) -> Response:
        doc = await _json(request)
        name = doc.get("name", "")
        raw_roles = doc.get("roles")
        ttl = doc.get("ttl_s")
        if not isinstance(name, str) or len(name) > 200:
            raise AdminError(400, '"name" is a string of at most 200 characters')
        if isinstance(raw_roles, str):
            raw_roles = [raw_roles]
        if not isinstance(raw_roles, list) or not all(isinstance(r, str) for r in raw_roles):
            raise AdminError(400, '"roles" is a list of role names: "read", "write", "admin"')
        if ttl is not None and (not isinstance(ttl, int) or isinstance(ttl, bool) or not 1 <= ttl <= MAX_TTL_S):
            raise AdminError(400, f'"ttl_s" is a number of seconds from 1 to {MAX_TTL_S} (or absent: no expiry)')
        now = int(time.time())
        try:
            token, rec = tk.make_token(secrets.token_hex(6), secrets.token_bytes(tk.SECRET_BYTES), name=name,
                                       roles=raw_roles, created_at=now, expires_at=now + ttl if ttl else None)
        except tk.TokenError as exc:
            raise AdminError(400, str(exc)) from exc
        await self._propose(AddToken(rec))
        # the only time the token itself is shown
        return json_response({"token": token, **tk.describe(rec, now)}, status=201)

    async def revoke(self, request: Request) -> Response:
        doc = await _json(request)
        tid = doc.get("id")
        if not isinstance(tid, str) or not tid:
            raise AdminError(400, 'expected JSON {"id": "<token id>"}')
        await self._propose(RevokeToken(tid, int(time.time())))
        rec = (await self._tokens()).get(tid)
        return json_response({"ok": True, **({"token": tk.describe(rec, time.time())} if rec else {})})


async def _json(request: Request) -> dict[str, Any]:
    try:
        doc = await request.json()
    except ValueError as exc:
        raise AdminError(400, "the body must be JSON") from exc
    if not isinstance(doc, dict):
        raise AdminError(400, "the body must be a JSON object")
    return doc


def token_routes(api: TokenApi) -> dict[tuple[str, str], Callable[[Request], Awaitable[Response]]]:
    return {
        ("GET", "/admin/tokens"): api.list,
        ("POST", "/admin/tokens"): api.create,
        ("POST", "/admin/tokens/revoke"): api.revoke,
    }
