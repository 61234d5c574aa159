"""The exchange protocol: the walk finds exactly the keys that differ; messages encode honestly."""

from __future__ import annotations

import msgpack
import pytest
from ae_support import Replica
from hypothesis import given, settings
from hypothesis import strategies as st

from antientropy import exchange as ex
from antientropy.exchange import (
    BucketRef,
    BucketReply,
    BucketsRequest,
    BucketsResponse,
    ChildrenRequest,
    ChildrenResponse,
    ExchangeError,
    ExchangeInitiator,
    Refused,
    RootRequest,
    RootResponse,
    answer,
    decode,
    encode,
    run_exchange,
)

# A small key pool so the two maps overlap; few digests so equal digests happen too.
KEYS = st.sampled_from([b"k%d" % i for i in range(400)])
DIGESTS = st.sampled_from([bytes([i]) * 16 for i in range(3)])
MAPS = st.dictionaries(KEYS, DIGESTS, max_size=300)
# (segments, fanout): includes shapes where segments hold far more than LEAF_ITEMS and get split.
SHAPES = st.sampled_from([(1, 2), (2, 2), (7, 2), (64, 4), (1024, 32)])


def expected(a: dict[bytes, bytes], b: dict[bytes, bytes]) -> tuple[set[bytes], set[bytes], set[bytes]]:
    return (
        set(b) - set(a),
        set(a) - set(b),
        {k for k in set(a) & set(b) if a[k] != b[k]},
    )


def exchange(a: Replica, b: Replica, cached: bool = True) -> ex.ExchangeResult:
    return run_exchange(
        a.tree, a.segment_items, b.tree, b.segment_items, partition=5, responder_session_cache=cached
    )


@settings(max_examples=80, deadline=None)
@given(a=MAPS, b=MAPS, shape=SHAPES, cached=st.booleans())
def test_walk_finds_exactly_the_differing_keys(
    a: dict[bytes, bytes], b: dict[bytes, bytes], shape: tuple[int, int], cached: bool
) -> None:
    ra, rb = Replica.of(a, *shape), Replica.of(b, *shape)
    result = exchange(ra, rb, cached)
    only_b, only_a, mismatch = expected(a, b)
    assert result.missing_on_initiator == only_b
    assert result.missing_on_responder == only_a
    assert result.digest_mismatch == mismatch
    assert result.differing_keys == only_a | only_b | mismatch
    assert result.initiator_needs == only_b | mismatch
    assert result.responder_needs == only_a | mismatch
    assert result.in_sync == (a == b)
    assert result.stale_local_segments == ()
    # The initiator scans only segments that differ, each at most once.
    assert len(ra.scans) == len(set(ra.scans)) == result.segments_differing


@settings(max_examples=25, deadline=None)
@given(a=MAPS, shape=SHAPES)
def test_equal_replicas_take_one_small_round(a: dict[bytes, bytes], shape: tuple[int, int]) -> None:
    ra, rb = Replica.of(a, *shape), Replica.of(a, *shape)
    result = exchange(ra, rb)
    assert result.in_sync
    assert result.rounds == 1
    assert result.bytes_sent + result.bytes_received < 64
    assert ra.scans == [] and rb.scans == []


def test_rounds_follow_tree_depth() -> None:
    a = {b"k%d" % i: b"a" * 16 for i in range(1000)}
    b = dict(a)
    b[b"k7"] = b"b" * 16
    result = exchange(Replica.of(a), Replica.of(b))
    # root (gives level 1) + level-1 children (gives segments) + the segment's items.
    assert result.rounds == 3
    assert result.digest_mismatch == {b"k7"}
    assert result.segments_differing == 1


def test_descent_to_the_deepest_sub_bucket(monkeypatch: pytest.MonkeyPatch) -> None:
    # With LEAF_ITEMS = 0 the responder splits every non-empty bucket down to MAX_SUB_DEPTH.
    monkeypatch.setattr(ex, "LEAF_ITEMS", 0)
    a = {b"k%d" % i: b"a" * 16 for i in range(300)}
    b = dict(a)
    b[b"k3"] = b"b" * 16
    ra, rb = Replica.of(a, 4, 2), Replica.of(b, 4, 2)
    result = exchange(ra, rb)
    assert result.digest_mismatch == {b"k3"}
    assert result.rounds == ra.tree.depth + ex.MAX_SUB_DEPTH + 1
    seg = ra.tree.segment_for(b"k3")
    assert ra.scans == [seg]  # the initiator scans the segment once for all sub-levels
    assert rb.scans == [seg]  # so does a responder given a session cache...
    rb.scans.clear()
    exchange(ra, rb, cached=False)
    assert rb.scans == [seg] * (ex.MAX_SUB_DEPTH + 1)  # ...while a stateless one rescans every round


def test_stale_local_leaf_is_reported() -> None:
    a = {b"k%d" % i: b"a" * 16 for i in range(50)}
    ra, rb = Replica.of(a), Replica.of(a)
    ra.tree.update(b"k1", None, b"a" * 16)  # bookkeeping bug: the insert applied twice
    result = exchange(ra, rb)
    seg = ra.tree.segment_for(b"k1")
    assert result.in_sync  # storage agrees, only A's tree is wrong
    assert result.stale_local_segments == (seg,)
    ra.tree.rebuild_segment(seg, ra.segment_items(seg).items())
    assert exchange(ra, rb).rounds == 1


def test_shape_mismatch_is_refused() -> None:
    ra, rb = Replica(1024, 32), Replica(1024, 64)
    ra.put(b"x", b"1" * 16)
    init = ExchangeInitiator(ra.tree, ra.segment_items, partition=1)
    response = answer(rb.tree, init.start(), rb.segment_items)
    assert isinstance(response, Refused)
    with pytest.raises(ExchangeError, match="refused"):
        init.receive(response)
    assert init.done
    with pytest.raises(ExchangeError, match="failed"):
        _ = init.result


def test_protocol_misuse_is_an_error() -> None:
    r = Replica()
    init = ExchangeInitiator(r.tree, r.segment_items, partition=1)
    with pytest.raises(ExchangeError):
        init.receive(RootResponse(1, True))
    init.start()
    with pytest.raises(ExchangeError):
        init.start()
    with pytest.raises(ExchangeError):
        _ = init.result
    with pytest.raises(ExchangeError, match="partition"):
        init.receive(RootResponse(2, True))


def test_mismatched_response_is_an_error() -> None:
    r = Replica()
    r.put(b"x", b"1" * 16)
    init = ExchangeInitiator(r.tree, r.segment_items, partition=1)
    init.start()
    with pytest.raises(ExchangeError):
        init.receive(ChildrenResponse(1, 0, ()))


def test_responder_validates_ranges() -> None:
    r = Replica()
    assert isinstance(answer(r.tree, ChildrenRequest(0, 2, (0,)), r.segment_items), Refused)
    assert isinstance(answer(r.tree, ChildrenRequest(0, 1, (32,)), r.segment_items), Refused)
    assert isinstance(answer(r.tree, BucketsRequest(0, (BucketRef(1024),)), r.segment_items), Refused)
    assert isinstance(answer(r.tree, RootRequest(0, 1024, 32, b"", version=99), r.segment_items), Refused)


MESSAGES = [
    RootRequest(3, 1024, 32, b"r" * 16),
    ChildrenRequest(3, 1, (0, 5, 31)),
    BucketsRequest(3, (BucketRef(7), BucketRef(9, 2, 0x3A))),
    RootResponse(3, True),
    RootResponse(3, False, tuple(bytes([i]) * 16 for i in range(32))),
    ChildrenResponse(3, 1, ((b"a" * 16, b"b" * 16), (b"c" * 16,))),
    BucketsResponse(
        3,
        (
            BucketReply(items=((b"k1", b"d" * 16), (b"k2", b"e" * 16))),
            BucketReply(items=()),
            BucketReply(children=tuple(b"" if i % 2 else b"h" * 16 for i in range(16))),
        ),
    ),
    Refused(3, "tree shape differs"),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: type(m).__name__)
def test_encoding_roundtrip(msg: ex.Message) -> None:
    assert decode(encode(msg)) == msg


@pytest.mark.parametrize("data", [b"", b"\xc1", b"\x93\x63\x01\x02", b"\x92\x02\x01", b"\x01"])
def test_decode_rejects_garbage(data: bytes) -> None:
    with pytest.raises(ExchangeError):
        decode(data)


def test_byte_counts_are_encoded_sizes() -> None:
    a = {b"k%d" % i: b"a" * 16 for i in range(100)}
    b = {**a, b"extra": b"b" * 16}
    ra, rb = Replica.of(a), Replica.of(b)
    init = ExchangeInitiator(ra.tree, ra.segment_items, partition=0)
    sent = received = 0
    req: ex.Request | None = init.start()
    while req is not None:
        sent += len(encode(req))
        resp = answer(rb.tree, req, rb.segment_items)
        received += len(encode(resp))
        req = init.receive(resp)
    assert (init.result.bytes_sent, init.result.bytes_received) == (sent, received)
    assert init.result.missing_on_initiator == {b"extra"}


@pytest.mark.parametrize(
    "fields",
    [
        [1, 0, 1024, 32, 5, 1],  # root hash not bytes (bytes(5) would silently be 5 zero bytes)
        [1, 0, b"1024", 32, b"r", 1],  # integer sent as bytes
        [6, 0, [[2, []]]],  # unknown bucket reply kind
        [4, 0, 1, []],  # equal flag not a boolean
        [9, 0],  # unknown tag
    ],
)
def test_decode_is_strict_about_types(fields: list[object]) -> None:
    with pytest.raises(ExchangeError):
        decode(msgpack.packb(fields, use_bin_type=True))


def test_writes_during_the_exchange_are_tolerated() -> None:
    base = {b"k%d" % i: b"a" * 16 for i in range(2000)}
    ra, rb = Replica.of(base), Replica.of(base)
    rb.put(b"k1", b"b" * 16)
    before = {b"k1"}
    init = ExchangeInitiator(ra.tree, ra.segment_items, partition=0)
    req: ex.Request | None = init.start()
    rounds = 0
    while req is not None:
        resp = answer(rb.tree, req, rb.segment_items)
        rounds += 1
        if rounds == 1:
            # Writes land on both replicas between rounds: a new key on B, and k1 made equal again.
            rb.put(b"late", b"c" * 16)
            ra.put(b"k1", b"b" * 16)
        req = init.receive(resp)
    # Whatever the walk saw is a subset of what differed at some point; nothing is invented.
    assert init.result.differing_keys <= before | {b"late"}
    # The next exchange sees the state as it is now.
    assert exchange(ra, rb).differing_keys == {b"late"}
