"""MerkleTree: incremental maintenance equals a full build, rehash stays on dirty paths, persistence."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from antientropy.merkle import MerkleTree, level_sizes

KEYS = st.binary(min_size=1, max_size=12)
DIGESTS = st.binary(min_size=16, max_size=16)
SHAPES = st.sampled_from([(1, 2), (7, 2), (64, 4), (100, 8), (1024, 32), (1024, 64)])
# A write: key, new digest or None (delete).
OPS = st.lists(st.tuples(KEYS, st.none() | DIGESTS), max_size=120)


def all_nodes(tree: MerkleTree) -> list[list[bytes]]:
    return [[tree.node(lv, i) for i in range(tree.level_size(lv))] for lv in range(tree.depth + 1)]


def apply(tree: MerkleTree, state: dict[bytes, bytes], key: bytes, digest: bytes | None) -> None:
    tree.update(key, state.get(key), digest)
    if digest is None:
        state.pop(key, None)
    else:
        state[key] = digest


@settings(max_examples=60, deadline=None)
@given(shape=SHAPES, ops=OPS)
def test_incremental_updates_equal_full_build(shape: tuple[int, int], ops: list[tuple[bytes, bytes | None]]) -> None:
    segments, fanout = shape
    tree = MerkleTree(segments, fanout)
    state: dict[bytes, bytes] = {}
    for key, digest in ops:
        apply(tree, state, key, digest)
        if random.Random(len(state)).random() < 0.2:
            tree.rehash()  # interleave rehashes with writes: must not matter
    built = MerkleTree.build(state.items(), segments, fanout)
    assert tree == built
    assert all_nodes(tree) == all_nodes(built)


@settings(max_examples=40, deadline=None)
@given(items=st.dictionaries(KEYS, DIGESTS, max_size=80), seed=st.integers(0, 2**32))
def test_build_is_order_independent(items: dict[bytes, bytes], seed: int) -> None:
    pairs = list(items.items())
    random.Random(seed).shuffle(pairs)
    assert MerkleTree.build(pairs, 64, 4).root() == MerkleTree.build(sorted(items.items()), 64, 4).root()


@settings(max_examples=40, deadline=None)
@given(
    shape=SHAPES,
    base=st.dictionaries(KEYS, DIGESTS, max_size=60),
    ops=st.lists(st.tuples(KEYS, st.none() | DIGESTS), min_size=1, max_size=20),
)
def test_rehash_touches_only_dirty_paths(
    shape: tuple[int, int], base: dict[bytes, bytes], ops: list[tuple[bytes, bytes | None]]
) -> None:
    segments, fanout = shape
    tree = MerkleTree.build(base.items(), segments, fanout)
    before = all_nodes(tree)
    state = dict(base)
    touched: set[int] = set()
    for key, digest in ops:
        if state.get(key) != digest:
            touched.add(tree.segment_for(key))
        apply(tree, state, key, digest)
    assert tree.dirty_segments == len(touched)
    # The ancestors of the touched segments, level by level: exactly the nodes rehash may recompute.
    ancestors: list[set[int]] = []
    frontier = touched
    for _ in range(tree.depth):
        frontier = {i // fanout for i in frontier}
        ancestors.append(frontier)
    assert tree.rehash() == sum(len(a) for a in ancestors)
    assert tree.rehash() == 0
    after = all_nodes(tree)
    for level in range(tree.depth):
        on_path = ancestors[tree.depth - 1 - level]
        for i, (old, new) in enumerate(zip(before[level], after[level])):
            if i not in on_path:
                assert old == new, f"node ({level}, {i}) off the dirty paths changed"
    assert tree == MerkleTree.build(state.items(), segments, fanout)


def test_one_write_rehashes_one_path() -> None:
    tree = MerkleTree.build(((b"k%d" % i, b"d" * 16) for i in range(5000)), 1024, 32)
    tree.update(b"k1", b"d" * 16, b"e" * 16)
    assert tree.dirty_segments == 1
    assert tree.rehash() == 2  # one level-1 node and the root
    assert tree.inner_hashes_computed == 33 + 2  # the full build hashed 32 + 1 inner nodes


def test_same_digest_update_is_a_noop() -> None:
    tree = MerkleTree.build([(b"a", b"1" * 16)], 64, 4)
    tree.update(b"a", b"1" * 16, b"1" * 16)
    assert tree.dirty_segments == 0


def test_delete_everything_returns_to_empty_root() -> None:
    empty = MerkleTree(1024, 32).root()
    tree = MerkleTree(1024, 32)
    for i in range(100):
        tree.update(b"k%d" % i, None, b"v" * 16)
    assert tree.root() != empty
    for i in range(100):
        tree.update(b"k%d" % i, b"v" * 16, None)
    assert tree.root() == empty


def test_duplicate_insert_is_visible_not_cancelled() -> None:
    # With XOR a double-applied insert would vanish; the sum keeps it visible (see the module docstring).
    empty = MerkleTree(16, 4)
    tree = MerkleTree(16, 4)
    tree.update(b"k", None, b"v" * 16)
    tree.update(b"k", None, b"v" * 16)
    assert tree.root() != empty.root()
    assert tree.root() != MerkleTree.build([(b"k", b"v" * 16)], 16, 4).root()
    seg = tree.segment_for(b"k")
    assert tree.rebuild_segment(seg, [(b"k", b"v" * 16)]) is True
    assert tree == MerkleTree.build([(b"k", b"v" * 16)], 16, 4)
    assert tree.rebuild_segment(seg, [(b"k", b"v" * 16)]) is False


@pytest.mark.parametrize(
    ("segments", "fanout", "sizes"),
    [(1024, 32, (1, 32, 1024)), (1024, 64, (1, 16, 1024)), (1000, 32, (1, 32, 1000)), (1, 32, (1,)),
     (33, 32, (1, 2, 33))],
)
def test_shape(segments: int, fanout: int, sizes: tuple[int, ...]) -> None:
    assert level_sizes(segments, fanout) == sizes
    tree = MerkleTree(segments, fanout)
    assert tree.depth == len(sizes) - 1
    last = tree.level_size(tree.depth - 1) - 1 if tree.depth else 0
    if tree.depth:
        # The last parent may have fewer than `fanout` children.
        assert len(tree.children_hashes(tree.depth - 1, last)) == segments - last * fanout


def test_single_segment_root_is_the_segment() -> None:
    tree = MerkleTree.build([(b"a", b"1" * 16)], 1, 32)
    assert tree.depth == 0
    assert tree.root() == tree.segment_hash(0)


def test_invalid_shapes_rejected() -> None:
    with pytest.raises(ValueError):
        MerkleTree(0, 32)
    with pytest.raises(ValueError):
        MerkleTree(1024, 1)


@settings(max_examples=30, deadline=None)
@given(items=st.dictionaries(KEYS, DIGESTS, max_size=50), shape=SHAPES)
def test_serialization_roundtrip(items: dict[bytes, bytes], shape: tuple[int, int]) -> None:
    tree = MerkleTree(*shape)
    for k, d in items.items():
        tree.update(k, None, d)  # left dirty on purpose: leaves are always current
    loaded = MerkleTree.from_bytes(tree.to_bytes())
    assert loaded == tree
    assert (loaded.num_segments, loaded.fanout) == shape
    assert all_nodes(loaded) == all_nodes(tree)


def test_serialization_detects_corruption() -> None:
    data = MerkleTree.build([(b"a", b"1" * 16)], 64, 4).to_bytes()
    assert len(data) == 11 + 64 * 16 + 16
    flipped = bytearray(data)
    flipped[40] ^= 1
    with pytest.raises(ValueError, match="checksum"):
        MerkleTree.from_bytes(bytes(flipped))
    with pytest.raises(ValueError):
        MerkleTree.from_bytes(data[:-1])
    with pytest.raises(ValueError):
        MerkleTree.from_bytes(b"")
