"""Client API tokens as the replicated membership state keeps them: records, the two commands that change
them, the rules of applying those, and their msgpack layout. Pure and deterministic, like the rest of the
state machine (`ring.membership` wires them in); no clock (times come in the commands), no randomness.

Every node keeps a token's SHA-256, never the token itself (it is shown once, when created). A revoked token
stays in the table with the time it was revoked, so its id is never reused and listing shows it. Token
changes do not change the ring epoch: they are not part of placement.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

_ID = re.compile(r"[A-Za-z0-9-]{1,32}")


@dataclass(frozen=True, slots=True)
class ApiToken:
    """``roles`` are role names (the node's access control gives them meaning); times are unix seconds from
    the proposer's clock."""

    id: str
    name: str
    roles: tuple[str, ...]
    sha256: bytes
    created_at: int
    expires_at: int | None = None
    revoked_at: int | None = None


@dataclass(frozen=True, slots=True)
class AddToken:
    """A new API token (its id must be new: ids of revoked tokens are not reused)."""

    token: ApiToken


@dataclass(frozen=True, slots=True)
class RevokeToken:
    """Revoke the token ``id`` as of ``at`` (unix seconds); it stays listed, refused from then on."""

    id: str
    at: int


def problem(t: ApiToken) -> str | None:
    """Why a token record cannot enter the state, or None."""
    if not _ID.fullmatch(t.id):
        return f"token id {t.id!r} is not 1-32 letters, digits or dashes"
    if len(t.sha256) != 32:
        return "a token's hash is 32 bytes (SHA-256)"
    if not t.roles or len(set(t.roles)) != len(t.roles) or not all(_ID.fullmatch(r) for r in t.roles):
        return "a token needs at least one role, each named once"
    if t.expires_at is not None and t.expires_at <= t.created_at:
        return "a token must expire after it was created"
    return None


def apply_token(tokens: Mapping[str, ApiToken], cmd: AddToken | RevokeToken) -> dict[str, ApiToken] | str:
    """The new token table, or why the command is refused (the table is then unchanged)."""
    out = dict(tokens)
    if isinstance(cmd, AddToken):
        why = problem(cmd.token)
        if why is not None:
            return why
        if cmd.token.id in out:
            return f"token id {cmd.token.id!r} already exists"
        out[cmd.token.id] = cmd.token
        return out
    old = out.get(cmd.id)
    if old is None:
        return f"no token with id {cmd.id!r}"
    if old.revoked_at is not None:
        return f"token {cmd.id!r} is already revoked"
    out[cmd.id] = replace(old, revoked_at=cmd.at)
    return out


def founding_tokens(tokens: Mapping[str, ApiToken], founding: tuple[ApiToken, ...]) -> dict[str, ApiToken] | str:
    """The table after a Bootstrap entry carrying `founding`: tokens committed before it (a token made right at
    start-up can reach the log first) stay as they are, a revocation included."""
    for t in founding:
        why = problem(t)
        if why is not None:
            return why
    if len({t.id for t in founding}) != len(founding):
        return "bootstrap tokens need unique ids"
    return {**{t.id: t for t in founding}, **tokens}


# ---- encoding (ValueError/TypeError on garbage: the membership codec turns them into CommandError) ----------


def token_out(t: ApiToken) -> list[Any]:
    return [t.id, t.name, list(t.roles), t.sha256, t.created_at, t.expires_at, t.revoked_at]


def _int(v: Any, optional: bool = False) -> int | None:
    if v is None and optional:
        return None
    if not isinstance(v, int) or isinstance(v, bool):
        raise ValueError(f"expected an integer, got {v!r}")
    return v


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError(f"expected a string, got {v!r}")
    return v


def token_in(v: Any) -> ApiToken:
    i, name, roles, digest, created, expires, revoked = v
    if not isinstance(digest, bytes) or not isinstance(roles, list):
        raise ValueError("token fields have the wrong types")
    created_at = _int(created)
    assert created_at is not None
    return ApiToken(_str(i), _str(name), tuple(_str(r) for r in roles), digest, created_at,
                    _int(expires, optional=True), _int(revoked, optional=True))


def command_out(c: AddToken | RevokeToken) -> list[Any]:
    if isinstance(c, AddToken):
        return ["token_add", token_out(c.token)]
    return ["token_revoke", c.id, c.at]


def command_in(kind: str, args: list[Any]) -> AddToken | RevokeToken | None:
    """The token command of kind `kind`, or None when `kind` is not one."""
    if kind == "token_add":
        return AddToken(token_in(args[0]))
    if kind == "token_revoke":
        at = _int(args[1])
        assert at is not None
        return RevokeToken(_str(args[0]), at)
    return None
