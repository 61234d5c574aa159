"""The agreement part of the tombstone reaping rule (antientropy/reaping.py), pure: which candidates every
member's answers allow to be removed."""

from __future__ import annotations

import pytest

from antientropy.reaping import KeyCheck, agreed

T, OTHER = b"t" * 16, b"o" * 16
KEYS = [b"a", b"b", b"c"]
CANDIDATES = {k: T for k in KEYS}
PRIMARIES = {"n1", "n2", "n3"}


def same(n: int = 3) -> list[KeyCheck]:
    return [KeyCheck(T, False) for _ in range(n)]


def test_keys_every_member_confirms_are_agreed() -> None:
    answers = {"n1": same(), "n2": same(), "n3": same()}
    assert agreed(KEYS, CANDIDATES, answers, PRIMARIES) == KEYS


def test_a_primary_with_another_digest_or_nothing_stored_vetoes_that_key_only() -> None:
    n2 = same()
    n2[1] = KeyCheck(OTHER, False)  # still has the value, or a different tombstone
    n3 = same()
    n3[2] = KeyCheck(None, False)  # missed the key altogether: a stale replica could hand it back
    answers = {"n1": same(), "n2": n2, "n3": n3}
    assert agreed(KEYS, CANDIDATES, answers, PRIMARIES) == [b"a"]


def test_a_member_that_is_no_primary_may_hold_anything_but_a_hint() -> None:
    n4 = [KeyCheck(OTHER, False), KeyCheck(None, False), KeyCheck(None, True)]
    answers = {"n1": same(), "n2": same(), "n3": same(), "n4": n4}
    assert agreed(KEYS, CANDIDATES, answers, PRIMARIES) == [b"a", b"b"]


@pytest.mark.parametrize("holder", ["n1", "n2", "n4"])
def test_a_hint_held_by_any_member_vetoes_the_key(holder: str) -> None:
    answers = {"n1": same(), "n2": same(), "n3": same(), "n4": same()}
    answers[holder] = [KeyCheck(T, k == 0) for k in range(3)]
    assert agreed(KEYS, CANDIDATES, answers, PRIMARIES) == [b"b", b"c"]


def test_checks_round_trip_the_wire_and_refuse_a_bad_digest() -> None:
    c = KeyCheck(T, True)
    back = KeyCheck.from_wire(c.to_wire())
    assert (back.digest, back.hinted) == (T, True)
    assert KeyCheck.from_wire([None, 0]).digest is None
    with pytest.raises(ValueError):
        KeyCheck.from_wire(["not bytes", False])
    with pytest.raises(ValueError):
        KeyCheck.from_wire([T])
