"""Dotted version vector sets: siblings, replacement, tombstones, merge laws, and a causal oracle."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynamostore.kv.context import ContextCodec, InvalidContext
from dynamostore.kv.versioning import (
    EMPTY,
    VersionSet,
    canonical,
    causal,
    covers,
    decode,
    digest,
    digest_raw,
    digest_wire,
    encode,
    reap_tombstones,
    same_version,
    supersedes,
    sync,
    sync_all,
    update,
)


def values(state: VersionSet) -> list[bytes | None]:
    return [s.value for s in state.siblings]


def test_same_context_same_coordinator_keeps_both_writes_as_siblings() -> None:
    # The lost-update case plain per-node vector clocks get wrong.
    base = update(None, {}, "n1", b"v0", "text/plain", 1)
    ctx = dict(base.clock)
    a = update(base, ctx, "n1", b"alice", "text/plain", 2)
    b = update(a, ctx, "n1", b"bob", "text/plain", 3)
    assert sorted(v for v in values(b) if v) == [b"alice", b"bob"]


def test_write_with_context_of_all_siblings_replaces_them() -> None:
    s = update(None, {}, "n1", b"a", "t", 1)
    s = update(s, {}, "n2", b"b", "t", 2)
    assert len(s.siblings) == 2
    s = update(s, dict(s.clock), "n3", b"merged", "t", 3)
    assert values(s) == [b"merged"]


def test_write_without_context_is_concurrent_with_everything() -> None:
    s = update(None, {}, "n1", b"a", "t", 1)
    s = update(s, {}, "n1", b"b", "t", 2)
    assert values(s) == [b"a", b"b"]


def test_delete_is_a_tombstone_that_carries_causality() -> None:
    s = update(None, {}, "n1", b"a", "t", 1)
    d = update(s, dict(s.clock), "n2", None, "", 2)
    assert d.is_deleted and len(d.siblings) == 1 and d.siblings[0].is_tombstone
    # A replica that still holds the old value merges with the tombstone: the value does not come back.
    assert sync(s, d).is_deleted
    # A write concurrent with the delete survives next to it.
    c = update(s, {}, "n3", b"concurrent", "t", 3)
    merged = sync(c, d)
    assert [x.value for x in merged.live] == [b"concurrent"]


def test_replica_sync_drops_superseded_and_keeps_concurrent() -> None:
    r1 = update(None, {}, "n1", b"x", "t", 1)
    r2 = sync(None, r1)
    r1 = update(r1, dict(r1.clock), "n1", b"y", "t", 2)  # supersedes x
    r2 = update(r2, {}, "n2", b"z", "t", 3)  # concurrent with everything
    merged = sync(r1, r2)
    assert sorted(values(merged)) == [b"y", b"z"]  # type: ignore[type-var]


def test_tombstones_are_reaped_only_when_old_and_fully_deleted() -> None:
    s = update(None, {}, "n1", b"a", "t", 1)
    d = update(s, dict(s.clock), "n1", None, "", 100)
    assert reap_tombstones(d, before_ms=50) is d
    assert reap_tombstones(d, before_ms=101) is None
    assert reap_tombstones(s, before_ms=10_000) is s


def test_encode_decode_round_trip_and_digest() -> None:
    s = update(update(None, {}, "n1", b"\x00bin", "application/octet-stream", 5), {}, "n2", None, "", 6)
    assert decode(encode(s)) == s
    assert digest(s) == digest(decode(encode(s)))
    assert digest(s) != digest(update(s, {}, "n1", b"more", "t", 7))
    assert digest(None) is None


# --- algebraic laws over random histories ------------------------------------------------------------

NODES = ["n1", "n2", "n3"]


@st.composite
def states(draw: st.DrawFn) -> VersionSet:
    s: VersionSet = EMPTY
    history = [s]
    for i in range(draw(st.integers(0, 6))):
        base = draw(st.sampled_from(history))
        ctx = dict(draw(st.sampled_from(history)).clock) if draw(st.booleans()) else {}
        node = draw(st.sampled_from(NODES))
        value = None if draw(st.integers(0, 4)) == 0 else f"v{i}".encode()
        s = update(sync(base, s) if draw(st.booleans()) else base, ctx, node, value, "t", i)
        history.append(s)
    return s


@given(states(), states())
@settings(max_examples=200, deadline=None)
def test_sync_is_commutative(a: VersionSet, b: VersionSet) -> None:
    assert same_version(sync(a, b), sync(b, a))


@given(states(), states(), states())
@settings(max_examples=200, deadline=None)
def test_sync_is_associative(a: VersionSet, b: VersionSet, c: VersionSet) -> None:
    assert same_version(sync(sync(a, b), c), sync(a, sync(b, c)))


@given(states())
@settings(max_examples=100, deadline=None)
def test_sync_is_idempotent(a: VersionSet) -> None:
    assert same_version(sync(a, a), a)


@given(states(), st.sampled_from([None, "n1.7", "n2.1f"]), st.sampled_from(NODES), st.booleans())
@settings(max_examples=200, deadline=None)
def test_digests_agree_however_taken_and_differ_exactly_between_versions(
    a: VersionSet, actor: str | None, node: str, with_context: bool
) -> None:
    stored = encode(VersionSet(a.clock, a.siblings, actor))  # what storage holds: with the local actor
    assert digest(a) == digest_raw(stored) == digest_wire(encode(a, local=False))
    assert digest(sync(a, decode(stored))) == digest(a)  # the same version, however it was reached
    later = update(a, dict(a.clock) if with_context else {}, node, b"w", "t", 99)  # a write with a new dot
    assert digest(later) != digest(a)


@given(states(), states())
@settings(max_examples=300, deadline=None)
def test_supersedes_says_exactly_when_a_merge_is_the_incoming_copy(a: VersionSet, b: VersionSet) -> None:
    assert supersedes(b, a) == same_version(sync(a, b), b)
    assert supersedes(a, a)


@given(states())
@settings(max_examples=100, deadline=None)
def test_decoded_states_are_canonical_and_reordered_ones_are_not(a: VersionSet) -> None:
    assert canonical(decode(encode(a)))
    if len(a.siblings) > 1:
        assert not canonical(VersionSet(a.clock, tuple(reversed(a.siblings))))
    if len(a.clock) > 1:
        decoded = decode(encode(a))
        assert not canonical(VersionSet(dict(reversed(decoded.clock.items())), decoded.siblings))


def test_causal_strips_the_local_actor_and_survives_bad_records() -> None:
    s = update(None, {}, "n1", b"v", "t", 1)
    mine = VersionSet(s.clock, s.siblings, "n1.7")
    wire = encode(s, local=False)
    assert causal(encode(mine)) == wire and causal(wire) == wire
    with pytest.raises(Exception):
        causal(encode(mine)[:-3])  # truncated
    assert causal(encode(mine) + b"\x01\x02") == wire  # trailing bytes are ignored...
    assert causal(encode(mine)) == wire  # ...and neither they nor the truncated record linger


@given(st.data())
@settings(max_examples=300, deadline=None)
def test_no_write_is_lost_unless_a_later_context_saw_it(data: st.DataObject) -> None:
    """Oracle: after replicas exchange everything, the surviving dots are exactly the writes that no
    other write's context covered (and nothing else). Writes go through random coordinators, read
    contexts from random replicas, and replicas gossip at random."""
    replicas: dict[str, VersionSet | None] = {n: None for n in NODES}
    writes: list[tuple[tuple[str, int], dict[str, int]]] = []
    for step in range(data.draw(st.integers(1, 25))):
        action = data.draw(st.sampled_from(["write", "write", "gossip"]))
        if action == "write":
            coord = data.draw(st.sampled_from(NODES))
            reader = data.draw(st.sampled_from(NODES))
            seen = replicas[reader]
            ctx = dict(seen.clock) if (seen is not None and data.draw(st.booleans())) else {}
            value = None if data.draw(st.integers(0, 5)) == 0 else f"w{step}".encode()
            new = update(replicas[coord], ctx, coord, value, "t", step)
            replicas[coord] = new
            dot = max((s.dot for s in new.siblings if s.dot[0] == coord), key=lambda d: d[1])
            writes.append((dot, ctx))
        else:
            a, b = data.draw(st.sampled_from(NODES)), data.draw(st.sampled_from(NODES))
            merged = sync(replicas[a], replicas[b])
            replicas[a] = replicas[b] = merged
    final = sync_all(replicas.values())
    expected = {dot for dot, _ in writes if not any(covers(ctx, dot) for _, ctx in writes)}
    assert final is not None
    assert {s.dot for s in final.siblings} == expected


def test_context_token_round_trip_and_tamper_evidence() -> None:
    codec = ContextCodec(b"secret")
    token = codec.encode(b"k", {"n1": 3, "n2": 1})
    assert codec.decode(b"k", token) == {"n1": 3, "n2": 1}
    with pytest.raises(InvalidContext):
        codec.decode(b"other-key", token)
    with pytest.raises(InvalidContext):
        ContextCodec(b"other-secret").decode(b"k", token)
    body, mac = token.split(".")
    flipped = ("A" if body[0] != "A" else "B") + body[1:]
    for bad in [f"{flipped}.{mac}", "garbage", "a.b.c", "!!!.???", "", "x" * 20000]:
        with pytest.raises(InvalidContext):
            codec.decode(b"k", bad)
