"""The token model and the route policy: pure, no clock (time is an argument), no randomness (given bytes)."""

from __future__ import annotations

import hashlib

import pytest

from dynamostore.security import tokens as tk
from dynamostore.security.authz import Policy
from ring.tokens import ApiToken

NOW = 1_700_000_000
SECRET = bytes(range(32))


def table(*recs: ApiToken) -> dict[str, ApiToken]:
    return {r.id: r for r in recs}


def test_a_token_is_shown_once_and_only_its_hash_is_kept() -> None:
    token, rec = tk.make_token("abc123", SECRET, name="ci", roles=["write", "read"], created_at=NOW)
    assert token.startswith("dst_abc123_") and len(token) > 40
    assert rec.sha256 == hashlib.sha256(token.encode()).digest()
    assert token not in repr(rec) and token.split("_", 2)[2] not in repr(rec)
    assert rec.roles == ("read", "write") and rec.expires_at is None and rec.revoked_at is None
    assert tk.token_id(token) == "abc123"


@pytest.mark.parametrize("header, reason", [
    (None, "needs a token"),
    ("", "must be 'Bearer <token>'"),
    ("Basic dXNlcjpwYXNz", "must be 'Bearer <token>'"),
    ("Bearer", "must be 'Bearer <token>'"),
    ("Bearer not-one-of-ours", "unknown or invalid"),
    ("Bearer dst_nosuch_AAAA", "unknown or invalid"),
])
def test_requests_without_a_valid_token_are_refused_with_a_reason(header: str | None, reason: str) -> None:
    _, rec = tk.make_token("abc123", SECRET, name="", roles=["read"], created_at=NOW)
    who = tk.authenticate(table(rec), header, NOW)
    assert isinstance(who, tk.Refusal) and reason in who.reason


def test_the_right_id_with_a_wrong_secret_is_refused() -> None:
    token, rec = tk.make_token("abc123", SECRET, name="", roles=["read"], created_at=NOW)
    forged = token[:-1] + ("A" if token[-1] != "A" else "B")
    assert isinstance(tk.authenticate(table(rec), f"Bearer {forged}", NOW), tk.Refusal)
    assert isinstance(tk.authenticate(table(rec), f"Bearer {token}", NOW), tk.Principal)
    assert isinstance(tk.authenticate(table(rec), f"bearer  {token} ", NOW), tk.Principal)  # scheme is case-blind


def test_expired_and_revoked_tokens_are_refused() -> None:
    token, rec = tk.make_token("t1", SECRET, name="", roles=["read"], created_at=NOW, expires_at=NOW + 60)
    assert isinstance(tk.authenticate(table(rec), f"Bearer {token}", NOW + 59), tk.Principal)
    who = tk.authenticate(table(rec), f"Bearer {token}", NOW + 60)
    assert isinstance(who, tk.Refusal) and "expired" in who.reason
    revoked = ApiToken(rec.id, rec.name, rec.roles, rec.sha256, rec.created_at, None, revoked_at=NOW + 10)
    # revoked is revoked whatever this node's clock says (it may run behind the proposer's)
    who = tk.authenticate(table(revoked), f"Bearer {token}", NOW)
    assert isinstance(who, tk.Refusal) and "revoked" in who.reason


def test_roles_grant_permissions_and_admin_implies_all() -> None:
    assert tk.mask_of(["read"]) == tk.READ
    assert tk.mask_of(["read", "write"]) == tk.READ | tk.WRITE
    assert tk.mask_of(["admin"]) == tk.ALL
    assert tk.mask_of(["unknown"]) == 0
    assert tk.parse_roles(["Write,read", "read"]) == ("read", "write")
    with pytest.raises(tk.TokenError, match="unknown role"):
        tk.parse_roles(["root"])
    with pytest.raises(tk.TokenError, match="at least one role"):
        tk.parse_roles([" , "])


def test_make_token_refuses_bad_ids_short_secrets_and_past_expiry() -> None:
    with pytest.raises(tk.TokenError):
        tk.make_token("has_underscore", SECRET, name="", roles=["read"], created_at=NOW)
    with pytest.raises(tk.TokenError):
        tk.make_token("ok", b"short", name="", roles=["read"], created_at=NOW)
    with pytest.raises(tk.TokenError):
        tk.make_token("ok", SECRET, name="", roles=["read"], created_at=NOW, expires_at=NOW)


def test_bootstrap_record_is_an_admin_token_named_by_its_hash() -> None:
    token = tk.format_token(tk.BOOTSTRAP_ID, SECRET)
    rec = tk.bootstrap_record(hashlib.sha256(token.encode()).hexdigest())
    who = tk.authenticate(table(rec), f"Bearer {token}", NOW)
    assert isinstance(who, tk.Principal) and who.mask == tk.ALL and who.id == "bootstrap"
    with pytest.raises(tk.TokenError):
        tk.bootstrap_record("abcd")
    with pytest.raises(tk.TokenError):
        tk.bootstrap_record("zz" * 32)


def test_describe_never_shows_the_hash() -> None:
    _, rec = tk.make_token("t1", SECRET, name="n", roles=["read"], created_at=NOW, expires_at=NOW + 5)
    d = tk.describe(rec, NOW + 10)
    assert d["state"] == "expired" and "sha256" not in d and rec.sha256.hex() not in str(d)


# --- which route needs what --------------------------------------------------------------------------------


@pytest.mark.parametrize("method, path, query, need", [
    ("GET", "/health", "", None),
    ("GET", "/openapi.json", "", None),
    ("GET", "/kv/k", "", tk.READ),
    ("HEAD", "/kv/k", "", tk.READ),
    ("PUT", "/kv/k", "", tk.WRITE),
    ("POST", "/kv/k", "", tk.WRITE),
    ("DELETE", "/kv/k", "", tk.WRITE),
    ("PUT", "/kv/k", "returnbody=true", tk.WRITE | tk.READ),
    ("PUT", "/kv", "", tk.WRITE),
    ("GET", "/status", "", tk.READ),
    ("GET", "/metrics", "", tk.READ),
    ("POST", "/admin/remove", "", tk.ADMIN),
    ("GET", "/admin/tokens", "", tk.ADMIN),
    ("POST", "/debug/delay", "", tk.ADMIN),
    ("GET", "/status/history", "since=3", tk.READ),
    ("GET", "/ui", "", None),
    ("GET", "/ui/app.js", "", None),
    ("GET", "/debug/kv/k", "", tk.READ),
    ("POST", "/debug/kv/k", "", tk.ADMIN),
    ("GET", "/uix", "", tk.ADMIN),
    ("GET", "/kvx", "", tk.ADMIN),  # not a key route: an unlisted path is closed
    ("GET", "/something/new", "", tk.ADMIN),
])
def test_policy_table(method: str, path: str, query: str, need: int | None) -> None:
    assert Policy().required(method, path, query) == need


def test_status_and_metrics_access_is_configurable() -> None:
    p = Policy(status_access="open", metrics_access="admin")
    assert p.required("GET", "/status", "") is None and p.required("GET", "/status/history", "") is None
    assert p.required("GET", "/metrics", "") == tk.ADMIN
    with pytest.raises(ValueError):
        Policy(status_access="everyone")


def test_the_checker_remembers_passed_tokens_but_sees_revocation_and_expiry_at_once() -> None:
    token, rec = tk.make_token("t1", SECRET, name="", roles=["read"], created_at=NOW, expires_at=NOW + 60)
    tables = [table(rec)]
    checker = tk.TokenChecker(lambda: tables[-1], max_entries=2)
    header = f"Bearer {token}"
    assert isinstance(checker.check(header, NOW), tk.Principal)
    assert isinstance(checker.check(header, NOW + 1), tk.Principal)  # remembered
    who = checker.check(header, NOW + 60)
    assert isinstance(who, tk.Refusal) and "expired" in who.reason  # expiry checked on every request
    tables.append(table(ApiToken(rec.id, rec.name, rec.roles, rec.sha256, rec.created_at, None, NOW + 2)))
    who = checker.check(header, NOW + 3)  # a new table (the revocation applied): forgotten at once
    assert isinstance(who, tk.Refusal) and "revoked" in who.reason
    for i in range(10):  # wrong tokens are never remembered, so they cannot grow the memory
        assert isinstance(checker.check(f"Bearer dst_t1_{i}", NOW), tk.Refusal)
    assert len(checker._passed) == 0
    assert isinstance(checker.check(None, NOW), tk.Refusal)
