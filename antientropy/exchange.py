"""The Merkle exchange between two replicas of one partition, as a sans-IO state machine.

The initiator A drives; the responder B is stateless (``answer`` handles each request on its own, so B
keeps nothing per exchange and can serve many). One round = one request and its response:

1. ``RootRequest`` carries A's root and tree shape. B answers ``RootResponse(equal=True)`` (done: one round,
   a few dozen bytes) or its root's child hashes.
2. ``ChildrenRequest(level, indices)``: A batches every node of one level whose hash differed and asks for
   their children. Repeated down to the segment level (depth 2 for 1024 segments / fanout 32).
3. ``BucketsRequest``: for each differing segment B sends its (key, digest) items -- or, when the segment
   holds more than ``LEAF_ITEMS`` items, the hashes of ``SUB_FANOUT`` sub-buckets (a virtual level split
   by further bits of the key hash, bits the segment function does not use) and A descends again. This
   keeps the cost per differing key roughly constant as a segment grows: without it, a 1M-key partition
   with 1024 segments would ship ~1000 items for every differing key.

Cost therefore follows the number of differing keys: rounds = depth + 1 + sub-levels (logarithmic in the
keys per segment), bytes ~ (fanout + SUB_FANOUT) hashes + a few items per differing key.

The result lists the keys that differ and which side needs what. Digests do not say which version is newer,
so for ``digest_mismatch`` keys both sides need the causally merged version; the driver fetches B's
versions of ``initiator_needs``, merges, stores, and pushes the merge for ``responder_needs``.

Live writes during an exchange are fine: each round compares the current trees; a key written mid-exchange
is either reported (and the merge is a no-op) or caught by the next exchange.

Responder CPU: a split segment is scanned and hashed once per round by a stateless responder; a driver
that keeps a ``SegmentCache`` for the session (as ``run_exchange`` does) scans and hashes it once.

Every message has a msgpack encoding (``encode``/``decode``); byte counts in the result are the sizes of
those encodings, so they are what the driver would put on the wire.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
import msgpack

from antientropy.merkle import HASH_BYTES, MerkleTree, int_to_hash, item_hash
from ring.hashing import key_hash

PROTOCOL_VERSION = 1
SUB_BITS = 4
SUB_FANOUT = 1 << SUB_BITS
#: Sub-bucket levels use key-hash bits 32..63; segment_of uses the low 32 bits, partitions the top ones.
_SUB_SHIFT = 32
MAX_SUB_DEPTH = 32 // SUB_BITS
#: A bucket with at most this many items (on the responder) is sent as items rather than split.
LEAF_ITEMS = 16
_MASK = (1 << (8 * HASH_BYTES)) - 1

SegmentItems = Callable[[int], Mapping[bytes, bytes]]

# -- messages ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RootRequest:
    partition: int
    num_segments: int
    fanout: int
    root: bytes
    version: int = PROTOCOL_VERSION


@dataclass(frozen=True)
class ChildrenRequest:
    """Ask for the child hashes of each listed node at ``level``."""

    partition: int
    level: int
    indices: tuple[int, ...]


@dataclass(frozen=True)
class BucketRef:
    """A segment, or a sub-bucket of it: keys whose first ``depth`` sub-indices equal ``prefix``."""

    segment: int
    depth: int = 0
    prefix: int = 0


@dataclass(frozen=True)
class BucketsRequest:
    partition: int
    buckets: tuple[BucketRef, ...]


@dataclass(frozen=True)
class RootResponse:
    partition: int
    equal: bool
    children: tuple[bytes, ...] = ()  # the root's child hashes when not equal (empty if depth == 0)


@dataclass(frozen=True)
class ChildrenResponse:
    partition: int
    level: int
    children: tuple[tuple[bytes, ...], ...]  # aligned with the request's indices


@dataclass(frozen=True)
class BucketReply:
    """Either the bucket's items (sorted by key) or its SUB_FANOUT sub-bucket hashes (b"" = empty)."""

    items: tuple[tuple[bytes, bytes], ...] | None = None
    children: tuple[bytes, ...] | None = None


@dataclass(frozen=True)
class BucketsResponse:
    partition: int
    replies: tuple[BucketReply, ...]  # aligned with the request's buckets


@dataclass(frozen=True)
class Refused:
    """The responder cannot compare (tree shape or protocol mismatch, malformed request)."""

    partition: int
    reason: str


Request = RootRequest | ChildrenRequest | BucketsRequest
Response = RootResponse | ChildrenResponse | BucketsResponse | Refused
Message = Request | Response


class ExchangeError(Exception):
    """The exchange cannot continue (refused, or a response that does not fit the request)."""


# -- wire encoding -----------------------------------------------------------------------------------

_TAGS: dict[type, int] = {
    RootRequest: 1,
    ChildrenRequest: 2,
    BucketsRequest: 3,
    RootResponse: 4,
    ChildrenResponse: 5,
    BucketsResponse: 6,
    Refused: 7,
}


def _fields(msg: Message) -> list[object]:
    if isinstance(msg, RootRequest):
        return [msg.partition, msg.num_segments, msg.fanout, msg.root, msg.version]
    if isinstance(msg, ChildrenRequest):
        return [msg.partition, msg.level, list(msg.indices)]
    if isinstance(msg, BucketsRequest):
        return [msg.partition, [[b.segment, b.depth, b.prefix] for b in msg.buckets]]
    if isinstance(msg, RootResponse):
        return [msg.partition, msg.equal, list(msg.children)]
    if isinstance(msg, ChildrenResponse):
        return [msg.partition, msg.level, [list(c) for c in msg.children]]
    if isinstance(msg, BucketsResponse):
        out: list[object] = []
        for r in msg.replies:
            if r.items is not None:
                out.append([0, [x for kd in r.items for x in kd]])  # flat [k, d, k, d, ...]
            else:
                out.append([1, list(r.children or ())])
        return [msg.partition, out]
    return [msg.partition, msg.reason]


def encode(msg: Message) -> bytes:
    data: bytes = msgpack.packb([_TAGS[type(msg)], *_fields(msg)], use_bin_type=True)
    return data


def _int(x: object) -> int:
    if type(x) is not int:
        raise TypeError(f"expected an integer, got {type(x).__name__}")
    return x


def _bin(x: object) -> bytes:
    if type(x) is not bytes:
        raise TypeError(f"expected bytes, got {type(x).__name__}")
    return x


def _list(x: object) -> list[Any]:
    if type(x) is not list:
        raise TypeError(f"expected an array, got {type(x).__name__}")
    return x


def decode(data: bytes) -> Message:
    """Inverse of ``encode``, strict about types. Raises ExchangeError on anything malformed."""
    try:
        tag, *f = _list(msgpack.unpackb(data, raw=False, strict_map_key=True))
        if tag == 1:
            return RootRequest(_int(f[0]), _int(f[1]), _int(f[2]), _bin(f[3]), _int(f[4]))
        if tag == 2:
            return ChildrenRequest(_int(f[0]), _int(f[1]), tuple(_int(i) for i in _list(f[2])))
        if tag == 3:
            refs = tuple(BucketRef(_int(s), _int(d), _int(p)) for s, d, p in map(_list, _list(f[1])))
            return BucketsRequest(_int(f[0]), refs)
        if tag == 4:
            if type(f[1]) is not bool:
                raise TypeError("expected a boolean")
            return RootResponse(_int(f[0]), f[1], tuple(_bin(h) for h in _list(f[2])))
        if tag == 5:
            kids = tuple(tuple(_bin(h) for h in _list(c)) for c in _list(f[2]))
            return ChildrenResponse(_int(f[0]), _int(f[1]), kids)
        if tag == 6:
            replies = []
            for kind, body in map(_list, _list(f[1])):
                flat = [_bin(x) for x in _list(body)]
                if kind == 0:
                    replies.append(BucketReply(items=tuple(zip(flat[0::2], flat[1::2], strict=True))))
                elif kind == 1:
                    replies.append(BucketReply(children=tuple(flat)))
                else:
                    raise ValueError(f"unknown bucket reply kind {kind!r}")
            return BucketsResponse(_int(f[0]), tuple(replies))
        if tag == 7:
            if type(f[1]) is not str:
                raise TypeError("expected a string")
            return Refused(_int(f[0]), f[1])
    except (ValueError, TypeError, IndexError, msgpack.UnpackException) as exc:
        raise ExchangeError(f"malformed exchange message: {exc}") from exc
    raise ExchangeError(f"unknown exchange message tag {tag!r}")


# -- sub-buckets (the virtual levels below a segment) -------------------------------------------------


def _sub_bits(h: int) -> int:
    return (h >> _SUB_SHIFT) & 0xFFFF_FFFF


class SegmentCache:
    """Scans of one replica's segments for the duration of one exchange.

    One storage scan per segment (the initiator keeps one for the whole exchange; the responder makes a
    fresh one per request unless the driver passes one to ``answer`` for the session), plus derived values
    computed at most once each: sub-bucket bits per key, item hashes (lazily, only for keys that are
    needed), and the grouping of a segment's keys into the sub-buckets of one depth. Grouping once per
    (segment, depth) keeps a round linear in the segment size however many of its buckets it asks for."""

    def __init__(self, segment_items: SegmentItems) -> None:
        self._scan = segment_items
        self._items: dict[int, Mapping[bytes, bytes]] = {}
        self._subs: dict[int, dict[bytes, int]] = {}
        self._hashes: dict[int, dict[bytes, int]] = {}
        self._groups: dict[tuple[int, int], dict[int, dict[bytes, bytes]]] = {}

    def items(self, segment: int) -> Mapping[bytes, bytes]:
        got = self._items.get(segment)
        if got is None:
            got = self._items[segment] = self._scan(segment)
        return got

    def subs(self, segment: int) -> dict[bytes, int]:
        got = self._subs.get(segment)
        if got is None:
            got = self._subs[segment] = {k: _sub_bits(key_hash(k)) for k in self.items(segment)}
        return got

    def bucket(self, ref: BucketRef) -> Mapping[bytes, bytes]:
        if ref.depth == 0:
            return self.items(ref.segment)
        groups = self._groups.get((ref.segment, ref.depth))
        if groups is None:
            mask = (1 << (SUB_BITS * ref.depth)) - 1
            subs = self.subs(ref.segment)
            groups = self._groups[(ref.segment, ref.depth)] = {}
            for k, d in self.items(ref.segment).items():
                groups.setdefault(subs[k] & mask, {})[k] = d
        return groups.get(ref.prefix, {})

    def _hash(self, memo: dict[bytes, int], key: bytes, digest: bytes) -> int:
        h = memo.get(key)
        if h is None:
            h = memo[key] = item_hash(key, digest)
        return h

    def sub_hashes(self, ref: BucketRef, items: Mapping[bytes, bytes]) -> list[bytes]:
        """Hashes of the SUB_FANOUT children of bucket ``ref`` holding ``items``; b"" for empty ones."""
        subs = self.subs(ref.segment)
        memo = self._hashes.setdefault(ref.segment, {})
        shift = SUB_BITS * ref.depth
        acc = [0] * SUB_FANOUT
        used = [False] * SUB_FANOUT
        for k, d in items.items():
            c = (subs[k] >> shift) & (SUB_FANOUT - 1)
            acc[c] += self._hash(memo, k, d)
            used[c] = True
        return [int_to_hash(a & _MASK) if u else b"" for a, u in zip(acc, used)]

    def segment_sum(self, segment: int) -> int:
        memo = self._hashes.setdefault(segment, {})
        return sum(self._hash(memo, k, d) for k, d in self.items(segment).items()) & _MASK


# -- responder ---------------------------------------------------------------------------------------


def answer(tree: MerkleTree, request: Request, segment_items: SegmentItems | SegmentCache) -> Response:
    """The responder's whole side: a pure function of its tree, its storage scan and the request.

    ``segment_items`` is the storage scan, or a ``SegmentCache`` over it that the driver keeps for the
    rounds of one exchange session, so that a segment walked down through sub-buckets is scanned and
    hashed once rather than once per round (its answers then reflect the first scan, which is fine:
    the next exchange catches anything written since).
    """
    p = request.partition
    if isinstance(request, RootRequest):
        if request.version != PROTOCOL_VERSION:
            return Refused(p, f"protocol version {request.version} != {PROTOCOL_VERSION}")
        if (request.num_segments, request.fanout) != (tree.num_segments, tree.fanout):
            return Refused(
                p,
                f"tree shape {request.num_segments}/{request.fanout} != "
                f"{tree.num_segments}/{tree.fanout}",
            )
        if request.root == tree.root():
            return RootResponse(p, equal=True)
        kids = tuple(tree.children_hashes(0, 0)) if tree.depth > 0 else ()
        return RootResponse(p, equal=False, children=kids)
    if isinstance(request, ChildrenRequest):
        if not 0 <= request.level < tree.depth:
            return Refused(p, f"level {request.level} out of range")
        size = tree.level_size(request.level)
        if any(not 0 <= i < size for i in request.indices):
            return Refused(p, "node index out of range")
        return ChildrenResponse(
            p, request.level, tuple(tuple(tree.children_hashes(request.level, i)) for i in request.indices)
        )
    cache = segment_items if isinstance(segment_items, SegmentCache) else SegmentCache(segment_items)
    replies: list[BucketReply] = []
    for ref in request.buckets:
        if not 0 <= ref.segment < tree.num_segments or not 0 <= ref.depth <= MAX_SUB_DEPTH:
            return Refused(p, f"bucket {ref} out of range")
        items = cache.bucket(ref)
        if len(items) <= LEAF_ITEMS or ref.depth == MAX_SUB_DEPTH:
            replies.append(BucketReply(items=tuple(sorted(items.items()))))
        else:
            replies.append(BucketReply(children=tuple(cache.sub_hashes(ref, items))))
    return BucketsResponse(p, tuple(replies))


# -- initiator ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExchangeResult:
    """What differs between A (initiator) and B (responder), and what the exchange cost."""

    missing_on_initiator: frozenset[bytes]  # B has the key, A does not
    missing_on_responder: frozenset[bytes]  # A has the key, B does not
    digest_mismatch: frozenset[bytes]  # both have it, with different version digests
    rounds: int
    bytes_sent: int
    bytes_received: int
    segments_differing: int = 0
    #: A's own leaves that disagree with A's storage scan: fix with MerkleTree.rebuild_segment. A segment
    #: written between A's tree update and its scan can show up here too; rebuilding it is harmless.
    stale_local_segments: tuple[int, ...] = field(default=())

    @property
    def differing_keys(self) -> frozenset[bytes]:
        return self.missing_on_initiator | self.missing_on_responder | self.digest_mismatch

    @property
    def initiator_needs(self) -> frozenset[bytes]:
        """Keys A must fetch from B (then merge causally with what A has, if anything)."""
        return self.missing_on_initiator | self.digest_mismatch

    @property
    def responder_needs(self) -> frozenset[bytes]:
        """Keys B must receive from A: A's version, or the merge for digest mismatches."""
        return self.missing_on_responder | self.digest_mismatch

    @property
    def in_sync(self) -> bool:
        return not (self.missing_on_initiator or self.missing_on_responder or self.digest_mismatch)


class ExchangeInitiator:
    """A's side. ``start()`` gives the first request; ``receive(response)`` the next one or None when done.

    ``segment_items(seg)`` scans A's storage for one segment (key -> digest); it is called at most once
    per segment per exchange, and only for segments that differ.
    """

    def __init__(self, tree: MerkleTree, segment_items: SegmentItems, partition: int) -> None:
        self._tree = tree
        self._local = SegmentCache(segment_items)
        self._partition = partition
        self._pending: Request | None = None
        self._started = False
        self._done = False
        self._failed = False
        self._rounds = 0
        self._sent = 0
        self._received = 0
        self._segments_differing = 0
        self._stale: list[int] = []
        self._missing_here: set[bytes] = set()
        self._missing_there: set[bytes] = set()
        self._mismatch: set[bytes] = set()

    @property
    def done(self) -> bool:
        return self._done

    def start(self) -> Request:
        if self._started:
            raise ExchangeError("exchange already started")
        self._started = True
        t = self._tree
        return self._send(RootRequest(self._partition, t.num_segments, t.fanout, t.root()))

    def receive(self, response: Response, wire_size: int | None = None) -> Request | None:
        """Consume the response to the pending request. ``wire_size``: its encoded size if already known."""
        req = self._pending
        if req is None:
            raise ExchangeError("no request is pending")
        self._pending = None
        self._rounds += 1
        self._received += wire_size if wire_size is not None else len(encode(response))
        if isinstance(response, Refused):
            raise self._fail(f"responder refused: {response.reason}")
        if response.partition != self._partition:
            raise self._fail("response for another partition")
        if isinstance(req, RootRequest) and isinstance(response, RootResponse):
            if response.equal:
                self._finish()
                return None
            if self._tree.depth == 0:
                self._segments_differing = 1
                return self._next_buckets([BucketRef(0)])
            return self._descend(0, (0,), (response.children,))
        if isinstance(req, ChildrenRequest) and isinstance(response, ChildrenResponse):
            if response.level != req.level or len(response.children) != len(req.indices):
                raise self._fail("children response does not match the request")
            return self._descend(req.level, req.indices, response.children)
        if isinstance(req, BucketsRequest) and isinstance(response, BucketsResponse):
            if len(response.replies) != len(req.buckets):
                raise self._fail("buckets response does not match the request")
            return self._on_buckets(req.buckets, response.replies)
        raise self._fail(f"unexpected {type(response).__name__} for {type(req).__name__}")

    @property
    def result(self) -> ExchangeResult:
        if not self._done:
            raise ExchangeError("exchange not finished")
        if self._failed:
            raise ExchangeError("exchange failed: no result")
        return ExchangeResult(
            missing_on_initiator=frozenset(self._missing_here),
            missing_on_responder=frozenset(self._missing_there),
            digest_mismatch=frozenset(self._mismatch),
            rounds=self._rounds,
            bytes_sent=self._sent,
            bytes_received=self._received,
            segments_differing=self._segments_differing,
            stale_local_segments=tuple(sorted(self._stale)),
        )

    # -- steps --

    def _send(self, req: Request) -> Request:
        self._pending = req
        self._sent += len(encode(req))
        return req

    def _finish(self) -> None:
        self._done = True

    def _fail(self, why: str) -> ExchangeError:
        self._done = self._failed = True
        return ExchangeError(why)

    def _descend(
        self, level: int, indices: tuple[int, ...], theirs: tuple[tuple[bytes, ...], ...]
    ) -> Request | None:
        """Compare B's children of ``indices`` (at ``level``) with ours; ask for the next level."""
        differing: list[int] = []
        for parent, their_kids in zip(indices, theirs):
            ours = self._tree.children_hashes(level, parent)
            if len(ours) != len(their_kids):
                raise self._fail("child count differs: trees have different shapes")
            start = self._tree.children(level, parent).start
            differing.extend(start + j for j, (a, b) in enumerate(zip(ours, their_kids)) if a != b)
        if not differing:
            self._finish()  # changed between rounds, or a hash collision: nothing to do now
            return None
        if level + 1 == self._tree.depth:
            self._segments_differing += len(differing)
            return self._next_buckets([BucketRef(s) for s in differing])
        return self._send(ChildrenRequest(self._partition, level + 1, tuple(differing)))

    def _next_buckets(self, refs: list[BucketRef]) -> Request | None:
        if not refs:
            self._finish()
            return None
        return self._send(BucketsRequest(self._partition, tuple(refs)))

    def _on_buckets(self, refs: tuple[BucketRef, ...], replies: tuple[BucketReply, ...]) -> Request | None:
        follow: list[BucketRef] = []
        for ref, reply in zip(refs, replies):
            ours = self._local.bucket(ref)
            if ref.depth == 0 and int_to_hash(self._local.segment_sum(ref.segment)) != self._tree.segment_hash(ref.segment):
                self._stale.append(ref.segment)
            if reply.items is not None:
                self._diff_items(ours, dict(reply.items))
            elif reply.children is not None and len(reply.children) == SUB_FANOUT:
                mine = self._local.sub_hashes(ref, ours)
                for c, (a, b) in enumerate(zip(mine, reply.children)):
                    if a != b:
                        prefix = ref.prefix | (c << (SUB_BITS * ref.depth))
                        follow.append(BucketRef(ref.segment, ref.depth + 1, prefix))
            else:
                raise self._fail("malformed bucket reply")
        return self._next_buckets(follow)

    def _diff_items(self, ours: Mapping[bytes, bytes], theirs: Mapping[bytes, bytes]) -> None:
        for k, d in theirs.items():
            mine = ours.get(k)
            if mine is None:
                self._missing_here.add(k)
            elif mine != d:
                self._mismatch.add(k)
        self._missing_there.update(k for k in ours if k not in theirs)


def run_exchange(
    tree_a: MerkleTree,
    items_a: SegmentItems,
    tree_b: MerkleTree,
    items_b: SegmentItems,
    partition: int = 0,
    *,
    responder_session_cache: bool = True,
) -> ExchangeResult:
    """Wire an initiator to a responder in memory, through the real encoding. For tests and benchmarks."""
    initiator = ExchangeInitiator(tree_a, items_a, partition)
    responder: SegmentItems | SegmentCache = SegmentCache(items_b) if responder_session_cache else items_b
    request: Request | None = initiator.start()
    while request is not None:
        decoded = decode(encode(request))
        assert not isinstance(decoded, (RootResponse, ChildrenResponse, BucketsResponse, Refused))
        wire = encode(answer(tree_b, decoded, responder))
        response = decode(wire)
        assert isinstance(response, (RootResponse, ChildrenResponse, BucketsResponse, Refused))
        request = initiator.receive(response, wire_size=len(wire))
    return initiator.result
