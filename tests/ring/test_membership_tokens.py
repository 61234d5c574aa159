"""API tokens in the replicated membership state: added and revoked in log order, never the ring epoch,
refused deterministically, encoded so that a cluster without tokens keeps the encoding older nodes read."""

from __future__ import annotations

import msgpack
import pytest

from ring.membership import (
    AddToken,
    ApiToken,
    Bootstrap,
    MemberInfo,
    MembershipState,
    RevokeToken,
    apply,
    apply_bytes,
    decode_command,
    decode_state,
    encode_command,
    encode_state,
)


def tok(i: str, roles: tuple[str, ...] = ("read",), **kw: object) -> ApiToken:
    return ApiToken(i, f"token {i}", roles, bytes([len(i)]) * 32, 100, **kw)  # type: ignore[arg-type]


def boot(*tokens: ApiToken) -> MembershipState:
    members = tuple(MemberInfo(f"n{k}", "127.0.0.1", 8000 + k, "127.0.0.1", 9000 + k) for k in range(1, 4))
    s, r = apply(MembershipState(), Bootstrap(members, 8, 3, (), tokens))
    assert r.ok, r.reason
    return s


def test_bootstrap_tokens_and_add_revoke_without_a_new_epoch() -> None:
    s = boot(tok("bootstrap", ("admin",)))
    assert set(s.tokens) == {"bootstrap"} and s.epoch == 1
    s, r = apply(s, AddToken(tok("t1")))
    assert r.ok and s.epoch == 1 and set(s.tokens) == {"bootstrap", "t1"}
    s, r = apply(s, RevokeToken("bootstrap", 500))
    assert r.ok and s.tokens["bootstrap"].revoked_at == 500 and s.epoch == 1


@pytest.mark.parametrize("cmd, reason", [
    (AddToken(tok("t1")), "already exists"),
    (AddToken(tok("bootstrap", ("admin",))), "already exists"),
    (AddToken(tok("bad id")), "letters, digits or dashes"),
    (AddToken(ApiToken("t2", "", ("read",), b"short", 100)), "32 bytes"),
    (AddToken(ApiToken("t2", "", (), b"x" * 32, 100)), "at least one role"),
    (AddToken(ApiToken("t2", "", ("read",), b"x" * 32, 100, expires_at=100)), "expire after"),
    (RevokeToken("nosuch", 1), "no token"),
    (RevokeToken("t0", 1), "already revoked"),
])
def test_refusals_leave_the_state_unchanged(cmd: object, reason: str) -> None:
    s = boot(tok("bootstrap", ("admin",)))
    s, _ = apply(s, AddToken(tok("t1")))
    s, _ = apply(s, AddToken(tok("t0")))
    s, _ = apply(s, RevokeToken("t0", 7))
    after, r = apply(s, cmd)  # type: ignore[arg-type]
    assert not r.ok and reason in r.reason and after == s


def test_tokens_committed_before_the_bootstrap_entry_survive_it() -> None:
    """A token made right at start-up can reach the log before the leader's Bootstrap entry."""
    s, r = apply(MembershipState(), AddToken(tok("early")))
    assert r.ok and set(s.tokens) == {"early"} and not s.initialized
    members = (MemberInfo("n1", "h", 1, "h", 2),)
    s, r = apply(s, Bootstrap(members, 8, 1, (), (tok("bootstrap", ("admin",)),)))
    assert r.ok and s.initialized and set(s.tokens) == {"early", "bootstrap"}


def test_codecs_round_trip_tokens() -> None:
    s = boot(tok("bootstrap", ("admin",)))
    s, _ = apply(s, AddToken(tok("t1", ("read", "write"), expires_at=200)))
    s, _ = apply(s, RevokeToken("t1", 150))
    assert decode_state(encode_state(s)) == s
    for cmd in (AddToken(tok("t9")), RevokeToken("t9", 3), Bootstrap((), 8, 3, (), (tok("b", ("admin",)),))):
        assert decode_command(encode_command(cmd)) == cmd


def test_without_tokens_the_encodings_are_those_older_nodes_read() -> None:
    """A cluster that never used tokens writes exactly the version-1 layouts (9 state fields, 4 bootstrap
    arguments), so nodes of the previous release still read its snapshots and log during an upgrade."""
    s = boot()
    assert len(msgpack.unpackb(encode_state(s))) == 1 + 9
    members = tuple(s.members.values())
    assert len(msgpack.unpackb(encode_command(Bootstrap(members, 8, 3)))) == 1 + 5
    # and what an older node wrote is read here
    assert decode_state(encode_state(s)).tokens == {}


def test_garbage_tokens_are_refused_not_raised() -> None:
    s = boot()
    bad = msgpack.packb([1, "token_add", ["t1", "n", "read", b"x" * 32, 1, None, None]])  # roles not a list
    after, r = apply_bytes(s, bad)
    assert not r.ok and after == s
    with pytest.raises(ValueError):
        decode_state(msgpack.packb([1, 1, [], None, 3, [], [], [], [], 0, [], "extra"]))
