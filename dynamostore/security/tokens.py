"""Client API tokens: the pure model (no clock, no randomness, no I/O: both come in as arguments).

A token is `dst_<id>_<secret>`: `id` is a short public handle (listing, revoking), `secret` 32 random bytes
in base64url, so a token carries 256 bits that nobody can guess. It is shown once, when created; every node
keeps only its SHA-256 (in the replicated membership state, `ring.membership.ApiToken`). A fast hash is
right for high-entropy random tokens (a slow password hash defends guessable secrets, which these are not);
the comparison is constant-time.

Roles, as operators of etcd (read, write, readwrite), Cassandra (SELECT, MODIFY) or Garage (read, write,
owner) know them: `read` (GET and HEAD of keys, status and metrics when they need a token), `write` (PUT,
POST and DELETE of keys), `admin` (everything, `/admin/*` included). A token holds one or more; `admin`
implies the others. Clients send `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from ring.tokens import ApiToken

PREFIX = "dst"
BOOTSTRAP_ID = "bootstrap"  # the id of the admin token named (by its hash) in the cluster file
SECRET_BYTES = 32
_ID = re.compile(r"[A-Za-z0-9-]{1,32}")


# Permissions as bits of a plain int (checked on every request: an int AND, no enum arithmetic).
READ = 1
WRITE = 2
ADMIN = 4
ALL = READ | WRITE | ADMIN
ROLE_NAMES: dict[str, int] = {"read": READ, "write": WRITE, "admin": ADMIN}


class TokenError(ValueError):
    """A token request that cannot be honoured (bad role, bad id, expiry in the past)."""


def mask_of(roles: Iterable[str]) -> int:
    """The permissions a set of role names grants (admin: all of them); unknown names grant nothing."""
    mask = 0
    for r in roles:
        mask |= ROLE_NAMES.get(r, 0)
    return ALL if mask & ADMIN else mask


def names_of(mask: int) -> str:
    return ", ".join(n for n, r in ROLE_NAMES.items() if mask & r) or "none"


def parse_roles(roles: Iterable[str]) -> tuple[str, ...]:
    """Validate role names (comma-separated lists allowed): a sorted tuple without repeats."""
    out: set[str] = set()
    for item in roles:
        for r in item.split(","):
            r = r.strip().lower()
            if not r:
                continue
            if r not in ROLE_NAMES:
                raise TokenError(f"unknown role {r!r}: roles are {', '.join(ROLE_NAMES)}")
            out.add(r)
    if not out:
        raise TokenError(f"a token needs at least one role ({', '.join(ROLE_NAMES)})")
    return tuple(sorted(out))


_SHA256 = hashlib.sha256()  # copied per token: cheaper than constructing one (OpenSSL 3 fetches per construction)


def digest(token: str) -> bytes:
    h = _SHA256.copy()
    h.update(token.encode("utf-8", "surrogateescape"))
    return h.digest()


def format_token(token_id: str, secret: bytes) -> str:
    return f"{PREFIX}_{token_id}_{base64.urlsafe_b64encode(secret).rstrip(b'=').decode('ascii')}"


def make_token(token_id: str, secret: bytes, *, name: str, roles: Iterable[str], created_at: int,
               expires_at: int | None = None) -> tuple[str, ApiToken]:
    """The token to show once, and the record every node keeps (its hash only)."""
    if not _ID.fullmatch(token_id):
        raise TokenError(f"token id {token_id!r} is not 1-32 letters, digits or dashes")
    if len(secret) < 16:
        raise TokenError("a token secret has at least 128 bits")
    if expires_at is not None and expires_at <= created_at:
        raise TokenError("a token must expire after it is created")
    token = format_token(token_id, secret)
    return token, ApiToken(token_id, name, parse_roles(roles), digest(token), created_at, expires_at)


def token_id(token: str) -> str | None:
    """The id a token names (its second field), or None when it is not shaped like one of ours."""
    parts = token.split("_", 2)  # ids hold no underscore; the base64url secret may
    return parts[1] if len(parts) == 3 and parts[0] == PREFIX and parts[1] else None


def bootstrap_record(sha256_hex: str) -> ApiToken:
    """The admin token the cluster file names by its SHA-256 (hex), as it enters the membership state."""
    try:
        raw = bytes.fromhex(sha256_hex)
    except ValueError as exc:
        raise TokenError("bootstrap_token_sha256 is not hex") from exc
    if len(raw) != 32:
        raise TokenError("bootstrap_token_sha256 is the 64 hex digits of a SHA-256")
    return ApiToken(BOOTSTRAP_ID, "bootstrap admin token (cluster file)", ("admin",), raw, 0)


# --- checking requests ------------------------------------------------------------------------------------


class Principal:
    """Who a request's token says it is (a plain class: made once per token, see TokenChecker)."""

    __slots__ = ("id", "name", "mask")

    def __init__(self, id: str, name: str, mask: int) -> None:
        self.id = id
        self.name = name
        self.mask = mask


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request is not authenticated (answered 401 with this reason)."""

    reason: str


def authenticate(tokens: Mapping[str, ApiToken], header: str | None, now: float) -> Principal | Refusal:
    """Check an `Authorization` header against the known tokens at unix time `now`."""
    if header is None:
        return Refusal("this endpoint needs a token: send Authorization: Bearer <token>")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token:
        return Refusal("the Authorization header must be 'Bearer <token>'")
    token = token.strip()
    tid = token_id(token)
    rec = tokens.get(tid) if tid is not None else None
    # Hash and compare even for an unknown id, so an unknown token costs the same time as a wrong one.
    expected = rec.sha256 if rec is not None else b"\x00" * 32
    if not hmac.compare_digest(digest(token), expected) or rec is None:
        return Refusal("unknown or invalid token")
    if rec.revoked_at is not None:  # whatever the clocks say: revoked is revoked once the node applied it
        return Refusal(f"token {rec.id} was revoked")
    if rec.expires_at is not None and now >= rec.expires_at:
        return Refusal(f"token {rec.id} has expired")
    return Principal(rec.id, rec.name, mask_of(rec.roles))


class TokenChecker:
    """`authenticate` for a request path: the same answers, cheaper for a token seen before.

    A token that passed is remembered (at most `max_entries`, with its record) so that the next request
    carrying it costs a dict lookup and the expiry check, not a SHA-256 and a comparison; the memory is
    dropped whenever the set of tokens changes (a new table: a token added or revoked), so a revocation is
    seen at once. Only tokens that passed are remembered: a stream of invalid ones cannot grow it."""

    __slots__ = ("_tokens", "_table", "_passed", "max_entries")

    def __init__(self, tokens: Callable[[], Mapping[str, ApiToken]], max_entries: int = 4096) -> None:
        self._tokens = tokens
        self._table: Mapping[str, ApiToken] | None = None
        self._passed: dict[str, tuple[ApiToken, Principal]] = {}
        self.max_entries = max_entries

    def check(self, header: str | None, now: float) -> Principal | Refusal:
        table = self._tokens()
        if table is not self._table:
            self._table = table
            self._passed = {}
        if header is not None:
            hit = self._passed.get(header)
            if hit is not None:
                rec, who = hit
                if rec.expires_at is None or now < rec.expires_at:
                    return who
                del self._passed[header]
        result = authenticate(table, header, now)
        if header is not None and isinstance(result, Principal) and len(self._passed) < self.max_entries:
            self._passed[header] = (table[result.id], result)
        return result


def describe(rec: ApiToken, now: float) -> dict[str, object]:
    """A token as `GET /admin/tokens` lists it: never its hash."""
    state = ("revoked" if rec.revoked_at is not None else
             "expired" if rec.expires_at is not None and now >= rec.expires_at else "active")
    return {"id": rec.id, "name": rec.name, "roles": list(rec.roles), "created_at": rec.created_at,
            "expires_at": rec.expires_at, "revoked_at": rec.revoked_at, "state": state}
