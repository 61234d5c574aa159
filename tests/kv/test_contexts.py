"""Client contexts (docs/causality.md): a write answers with what its request's context covered plus its own
dot, never the key's merged clock; contexts with a dot cloud travel in tokens; and a property test over the
versioning core: no write is lost unless its writer's context covered it."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynamostore.kv import versioning as v
from dynamostore.kv.context import ContextCodec, InvalidContext

Ctx = tuple[dict[str, int], tuple[v.Dot, ...]]


def dot_of(state: v.VersionSet, actor: str) -> v.Dot:
    return (actor, state.clock[actor])


def test_a_blind_writes_answer_covers_its_own_dot_only() -> None:
    alice = v.update(None, {}, "a", b"alice", "t", 1)
    bob = v.update(alice, {}, "a", b"bob", "t", 2)  # blind, same coordinator: (a, 2)
    assert v.written_context({}, (), ("a", 2)) == ({}, (("a", 2),))
    clock, dots = v.written_context({}, (), ("a", 2))
    assert not v.context_covers(clock, dots, ("a", 1))  # alice was not read
    # bob's writer writes again with that answer: alice stays
    bob2 = v.update(bob, clock, "a", b"bob-v2", "t", 3, dots)
    assert sorted(s.value for s in bob2.live if s.value) == [b"alice", b"bob-v2"]


def test_a_careful_writers_answer_stays_a_plain_vector() -> None:
    s = v.update(None, {}, "a", b"1", "t", 1)
    s = v.update(s, {}, "b", b"2", "t", 1)
    read = dict(s.clock)  # {"a": 1, "b": 1}
    s = v.update(s, read, "a", b"3", "t", 2)
    assert v.written_context(read, (), dot_of(s, "a")) == ({"a": 2, "b": 1}, ())


def test_compact_context_folds_runs_and_drops_covered_dots() -> None:
    assert v.compact_context({"a": 1}, [("a", 3), ("a", 2), ("b", 1), ("a", 1), ("c", 5)]) == (
        {"a": 3, "b": 1}, (("c", 5),))
    assert v.compact_context({}, []) == ({}, ())


def test_a_cloud_dot_supersedes_what_it_names_and_extends_the_clock_only_when_adjacent() -> None:
    s = v.update(None, {}, "a", b"1", "t", 1)  # (a,1)
    s = v.update(s, {}, "a", b"2", "t", 1)  # (a,2), concurrent with (a,1)
    new = v.update(s, {}, "b", b"3", "t", 2, (("a", 2),))
    assert {x.dot for x in new.siblings} == {("a", 1), ("b", 1)} and new.clock["a"] == 2
    # a replica that has not seen (a,2) records it when the clock reaches right below it...
    other = v.update(v.update(None, {}, "a", b"1", "t", 1), {}, "c", b"x", "t", 1, (("a", 2),))
    assert other.clock["a"] == 2
    # ...and otherwise cannot record it: (a,5) arriving later survives as a sibling (never a lost write)
    gap = v.update(None, {}, "c", b"x", "t", 1, (("a", 5),))
    assert gap.clock.get("a", 0) == 0


def test_tokens_carry_a_dot_cloud_and_old_tokens_still_decode() -> None:
    codec = ContextCodec(b"secret")
    token = codec.encode(b"k", {"a": 3}, (("b", 7), ("c", 1)))
    assert codec.decode_context(b"k", token) == ({"a": 3}, (("b", 7), ("c", 1)))
    plain = codec.encode(b"k", {"a": 3})
    assert codec.decode_context(b"k", plain) == ({"a": 3}, ()) and codec.decode(b"k", plain) == {"a": 3}
    with pytest.raises(InvalidContext):
        codec.decode(b"k", token)  # a vector-only reader never silently drops the cloud
    with pytest.raises(InvalidContext):
        codec.decode_context(b"other", token)
    assert len(token) - len(plain) < 24  # a dot costs its actor's bytes and a counter


# --- the property test ---------------------------------------------------------------------------------

REPLICAS = ["a", "b", "c"]


@dataclass(frozen=True)
class Held:
    """A context a client holds, and the dots its holder saw (read, or wrote itself)."""

    clock: dict[str, int]
    dots: tuple[v.Dot, ...]
    saw: frozenset[v.Dot]


@given(st.data())
@settings(max_examples=400, deadline=None)
def test_no_write_is_lost_unless_its_writers_context_covered_it(data: st.DataObject) -> None:
    """Random interleavings of reads, writes with the contexts reads and writes returned, blind writes,
    deletes and replica merges. After every replica has exchanged everything, each write survives unless a
    later write's context covered it, and a context covers a write only if its holder read it or wrote it.
    Every write's answer covers exactly its request's context plus its own dot."""
    replicas: dict[str, v.VersionSet | None] = {r: None for r in REPLICAS}
    held: list[Held] = []
    written: set[v.Dot] = set()
    superseded: set[v.Dot] = set()  # dots some writer's context covered (that writer saw them)
    for step in range(data.draw(st.integers(1, 30))):
        action = data.draw(st.sampled_from(["read", "write", "write", "delete", "merge"]))
        if action == "read":
            state = replicas[data.draw(st.sampled_from(REPLICAS))]
            if state is not None:
                held.append(Held(dict(state.clock), (), frozenset(s.dot for s in state.siblings)))
        elif action in ("write", "delete"):
            coord = data.draw(st.sampled_from(REPLICAS))
            ctx = data.draw(st.sampled_from(held)) if held and data.draw(st.booleans()) else Held({}, (), frozenset())
            # a context covers only what its holder saw (or what had been superseded already)
            assert all(d in ctx.saw or d in superseded or d not in written for d in _covered(ctx, written))
            value = None if action == "delete" else f"w{step}".encode()
            new = v.update(replicas[coord], ctx.clock, coord, value, "t", step, ctx.dots)
            replicas[coord] = new
            dot = dot_of(new, coord)
            assert dot not in written  # a dot names one write
            written.add(dot)
            superseded |= ctx.saw
            clock, dots = v.written_context(ctx.clock, ctx.dots, dot)
            for d in written:
                assert v.context_covers(clock, dots, d) == (v.context_covers(ctx.clock, ctx.dots, d) or d == dot)
            held.append(Held(clock, dots, ctx.saw | {dot}))
        else:
            x, y = data.draw(st.sampled_from(REPLICAS)), data.draw(st.sampled_from(REPLICAS))
            replicas[x] = replicas[y] = v.sync(replicas[x], replicas[y])
    final = v.sync_all(replicas.values())
    survivors = {s.dot for s in final.siblings} if final is not None else set()
    assert written - superseded <= survivors, f"lost: {sorted(written - superseded - survivors)}"
    assert survivors <= written


def _covered(ctx: Held, written: set[v.Dot]) -> list[v.Dot]:
    return [d for d in written if v.context_covers(ctx.clock, ctx.dots, d)]
