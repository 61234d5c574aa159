"""Quorum levels and the pure put/get tallies."""

from __future__ import annotations

import pytest

from dynamostore.kv.quorum import GetTally, PutTally, QuorumError, Reply, parse_quorum
from dynamostore.kv.versioning import VersionSet, causal, decode, encode, update


@pytest.mark.parametrize(
    ("raw", "n", "want"),
    [("ONE", 3, 1), ("two", 3, 2), ("THREE", 3, 3), ("QUORUM", 3, 2), ("QUORUM", 5, 3), ("ALL", 5, 5), ("2", 3, 2)],
)
def test_parse_quorum_levels(raw: str, n: int, want: int) -> None:
    assert parse_quorum(raw, n, "w") == want


@pytest.mark.parametrize("raw", ["FOUR", "-1", "2.5", "", "x", "4", "\u00b9", "\u0661"])
def test_parse_quorum_rejects_bad_or_too_large(raw: str) -> None:
    with pytest.raises(QuorumError):
        parse_quorum(raw, 3, "w")


def test_put_tally_succeeds_at_w() -> None:
    t = PutTally(w=2, dw=0, pw=0, targets=3)
    t.add_ack("n1", primary=True, durable=False)
    assert not t.done()
    t.add_ack("n2", primary=False, durable=False)
    assert t.satisfied() and t.outcome().ok and t.outcome().hinted == 1


def test_put_tally_fails_fast_when_quorum_is_impossible() -> None:
    t = PutTally(w=2, dw=0, pw=0, targets=3)
    t.add_ack("n1", primary=True, durable=False)
    t.add_error("n2", "unavailable")
    assert not t.done()
    t.add_error("n3", "timeout")
    assert t.impossible()
    out = t.outcome()
    assert not out.ok and "required w=2" in out.reason and "1 acknowledged" in out.reason and "n3: timeout" in out.reason


def test_put_tally_requires_durable_and_primary_counts() -> None:
    t = PutTally(w=1, dw=2, pw=2, targets=3)
    t.add_ack("n1", primary=True, durable=True)
    t.add_ack("f1", primary=False, durable=True)
    assert not t.satisfied()  # dw met, but only one primary
    t.add_ack("n2", primary=True, durable=False)
    assert t.satisfied()


def test_get_tally_reconciles_and_plans_repair_of_primaries_only() -> None:
    old = update(None, {}, "n1", b"old", "t", 1)
    new = update(old, dict(old.clock), "n1", b"new", "t", 2)
    t = GetTally(r=2, pr=0, targets=3)
    t.add_reply(Reply("n1", True, new))
    t.add_reply(Reply("n2", True, old))
    assert t.satisfied()
    out = t.outcome()
    assert out.ok and out.state is not None and [s.value for s in out.state.siblings] == [b"new"]
    t.add_reply(Reply("f1", False, None))
    assert t.repairs() == ["n2"]
    assert t.repairs(include_fallbacks=True) == ["n2", "f1"]


def test_get_tally_not_found_counts_as_an_answer_but_pr_needs_primaries() -> None:
    t = GetTally(r=2, pr=2, targets=3)
    t.add_reply(Reply("n1", True, None))
    t.add_reply(Reply("f1", False, None))
    assert not t.satisfied()
    t.add_error("n3", "unavailable")
    assert t.impossible()
    assert "pr=2" in t.outcome().reason


def test_get_tally_equal_bytes_decode_once_and_need_no_repair() -> None:
    state = update(None, {}, "n1.1", b"v", "t", 1)
    raw = encode(state, local=False)
    t = GetTally(r=3, pr=0, targets=3)
    replies = [Reply(n, True, raw=raw) for n in ("n1", "n2", "n3")]
    for r in replies:
        t.add_reply(r)
    out = t.outcome()
    assert out.ok and out.state == state and t.repairs() == []
    # only the first copy was decoded: the others were compared as bytes
    assert [r._state is not None for r in replies] == [True, False, False]


def test_get_tally_differing_bytes_reconcile_and_repair_the_stale_copy() -> None:
    old = update(None, {}, "n1.1", b"old", "t", 1)
    new = update(old, dict(old.clock), "n1.1", b"new", "t", 2)
    t = GetTally(r=2, pr=0, targets=3)
    t.add_reply(Reply("n1", True, raw=encode(old, local=False)))
    t.add_reply(Reply("n2", True, raw=encode(new, local=False)))
    out = t.outcome()
    assert out.state is not None and [s.value for s in out.state.siblings] == [b"new"]
    assert t.repairs() == ["n1"]
    t.add_reply(Reply("n3", True, raw=None))  # a copy that is missing is stale too, and the merge is redone
    assert t.repairs() == ["n1", "n3"] and t.merged() == out.state


def test_causal_bytes_drop_only_the_local_actor() -> None:
    minted = update(None, {}, "n1.7", b"v", "t", 1)
    state = VersionSet(minted.clock, minted.siblings, local_actor="n1.7")
    stored = encode(state)
    assert causal(stored) == encode(state, local=False) != stored
    assert decode(causal(stored)) == state and decode(causal(stored)).local_actor is None
    assert causal(encode(state, local=False)) == encode(state, local=False)
