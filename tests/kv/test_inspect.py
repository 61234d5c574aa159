"""The key inspector's analysis (kv/inspect.py): every stored copy decoded, compared with the causal merge of all
of them, and the siblings explained. Pure: states are built with versioning.update as coordinators build them."""

from __future__ import annotations

from dynamostore.kv import versioning as v
from dynamostore.kv.inspect import NodeRecords, coordinator_of, inspect

PRIMARIES = ["n1", "n2", "n3"]
FALLBACKS = ["n4"]
UP = {"n1", "n2", "n3", "n4"}


def _raw(state: v.VersionSet) -> bytes:
    return v.encode(state)


def _two_siblings() -> tuple[v.VersionSet, v.VersionSet, v.VersionSet]:
    """Two writes with the same (empty) context through n1 and n2: a on n1, b on n2, and their merge."""
    a = v.update(None, {}, "n1.1", b"alice", "text/plain", 1_000)
    b = v.update(None, {}, "n2.7", b"bob", "text/plain", 2_000)
    return a, b, v.sync(a, b)


def test_two_concurrent_writes_through_different_coordinators_are_explained_with_both_dots() -> None:
    a, b, both = _two_siblings()
    answers: dict[str, NodeRecords | str] = {
        "n1": NodeRecords(_raw(both), [], "aa"), "n2": NodeRecords(_raw(both), [], "aa"),
        "n3": NodeRecords(_raw(both), [], "aa"), "n4": NodeRecords(None, [], None),
    }
    doc = inspect(b"cart", 7, 300, PRIMARIES, FALLBACKS, UP, answers)
    assert doc["primaries_agree"] is True
    assert [s["dot"] for s in doc["merged"]["siblings"]] == [["n1.1", 1], ["n2.7", 1]]
    assert [s["coordinator"] for s in doc["merged"]["siblings"]] == ["n1", "n2"]
    assert doc["merged"]["live"] == 2
    text = " ".join(doc["explanation"])
    assert "2 siblings" in text and "n1.1:1" in text and "n2.7:1" in text
    assert "different coordinators (n1, n2)" in text and "All primaries hold the same version" in text
    roles = {c["node"]: c["role"] for c in doc["copies"]}
    assert roles == {"n1": "primary 1", "n2": "primary 2", "n3": "primary 3", "n4": "fallback 1"}
    sib = doc["copies"][0]["record"]["siblings"][0]
    assert sib["size"] == 5 and sib["preview"] == "alice" and sib["tombstone"] is False


def test_a_primary_that_missed_a_write_lacks_its_dot_and_the_hint_that_holds_it_is_named() -> None:
    a, b, both = _two_siblings()
    answers: dict[str, NodeRecords | str] = {
        "n1": NodeRecords(_raw(both), [], "aa"),
        "n2": NodeRecords(_raw(both), [], "aa"),
        "n3": NodeRecords(_raw(a), [], "bb"),  # was down when b was written
        "n4": NodeRecords(None, [("n3", _raw(b))], None),  # the fallback kept b for n3
    }
    doc = inspect(b"cart", 7, 300, PRIMARIES, FALLBACKS, UP, answers)
    assert doc["primaries_agree"] is False
    n3 = next(c for c in doc["copies"] if c["node"] == "n3")
    assert n3["missing"] == ["n2.7:1"] and n3["current"] is False and n3["leaf"] == "bb"
    hint = next(c for c in doc["copies"] if c["kind"] == "hint")
    assert hint["node"] == "n4" and hint["target"] == "n3"
    assert [s["dot"] for s in hint["record"]["siblings"]] == [["n2.7", 1]]
    text = " ".join(doc["explanation"])
    assert "Primary n3 lacks n2.7:1; n4 hold(s) a hint for it" in text
    assert "Merkle leaves" in text


def test_writes_through_one_coordinator_without_context_and_a_concurrent_delete() -> None:
    s1 = v.update(None, {}, "n1.1", b"x", "text/plain", 1)
    s2 = v.update(s1, {}, "n1.1", b"y", "text/plain", 2)  # no context: a sibling of x
    s3 = v.update(s2, {}, "n1.1", None, "text/plain", 3)  # a delete without context: a tombstone beside them
    doc = inspect(b"k", 0, 0, ["n1"], [], {"n1"}, {"n1": NodeRecords(_raw(s3), [], None)})
    text = " ".join(doc["explanation"])
    assert "All were written through n1" in text and "tombstone(s) survive beside the values" in text
    assert doc["merged"]["tombstones"] == 1 and doc["merged"]["live"] == 2


def test_unreachable_nodes_absent_keys_and_bad_records_are_reported_not_raised() -> None:
    doc = inspect(b"k", 0, 0, PRIMARIES, [], UP, {"n1": NodeRecords(None), "n2": "unreachable",
                                                   "n3": NodeRecords(b"\xc1garbage")})
    assert doc["merged"] is None and doc["primaries_agree"] is False
    text = " ".join(doc["explanation"])
    assert "Could not ask n2" in text and "Undecodable record on n3" in text and "No node holds this key" in text
    assert next(c for c in doc["copies"] if c["node"] == "n2")["error"] == "unreachable"


def test_records_survive_the_wire_and_a_malformed_answer_is_refused() -> None:
    rec = NodeRecords(b"data", [("n3", b"hint")], "ff")
    assert NodeRecords.from_wire(rec.to_wire()) == rec
    for bad in ([1, [], None], [None, [], 5], "x", [None, [["n3"]], None]):
        try:
            NodeRecords.from_wire(bad)
        except (TypeError, ValueError):
            continue
        raise AssertionError(f"accepted {bad!r}")


def test_coordinator_of_an_actor() -> None:
    assert coordinator_of("n12.3f") == "n12" and coordinator_of("node.a.b.1") == "node.a.b"
    assert coordinator_of("x") == "x"
