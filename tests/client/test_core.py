"""The client's sans-IO core without processes: requests, answers (both sibling formats, as the server renders
them), error mapping, the retry policy of one call, and update()'s read-modify-write steps."""

from __future__ import annotations

import base64
import json
import random
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dynamostore.client import core
from dynamostore.client.base import ClientCore, Operation
from dynamostore.client.core import Answer, Call, Failure, Request, Timing, retryable
from dynamostore.client.errors import BadRequest, Conflict, NotFound, QuorumError, ServerError, UncertainWrite, Unreachable
from dynamostore.client.objects import Object, Sibling, WriteResult
from dynamostore.client.routing import RoutingTable
from dynamostore.kv.coordinator import _unreachable
from dynamostore.api.kv import _multipart
from dynamostore.kv.quorum import GetTally, PutTally
from dynamostore.kv import versioning as v
from ring.placement import Role, Target

from tests.client.test_routing import status_doc

# --- requests --------------------------------------------------------------------------------------------


def test_a_read_carries_read_options_and_a_write_write_options() -> None:
    opts = {"r": 2, "w": "all", "dw": 1, "pr": 1, "pw": 2, "sloppy": False, "level": "quorum"}
    get = core.build("GET", "a/b c%", opts, auth="Bearer t")  # type: ignore[arg-type]
    assert get.target == "/kv/a%2Fb%20c%25?pr=1"
    assert get.headers == {"X-Consistency-Level": "quorum", "X-Read-Quorum": "2", "X-Sloppy-Quorum": "false",
                           "Authorization": "Bearer t", "Accept": "application/json"}
    put = core.build("PUT", "k", opts, body=b"v", content_type="text/plain", context="CTX",  # type: ignore[arg-type]
                     returnbody=True)
    assert put.target == "/kv/k?pw=2&returnbody=true"
    assert put.headers == {"X-Consistency-Level": "quorum", "X-Write-Quorum": "all", "X-Durable-Writes": "1",
                           "X-Sloppy-Quorum": "false", "X-Context": "CTX", "Content-Type": "text/plain",
                           "Accept": "application/json"}
    assert put.body == b"v"


def test_bad_keys_and_quorums_are_refused_before_anything_is_sent() -> None:
    with pytest.raises(ValueError, match="empty"):
        core.build("GET", "", {})
    with pytest.raises(TypeError):
        core.build("GET", b"bytes", {})  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        core.build("GET", "k", {"r": True})
    with pytest.raises(ValueError):
        core.build("PUT", "k", {"w": -1}, body=b"")


def test_a_write_result_is_not_a_context() -> None:
    """A write's answer never stands in for a read: put(context=WriteResult) is refused."""
    wr = WriteResult("k", core.Info("n1"))
    with pytest.raises(TypeError, match="Object from a read"):
        core.context_of(wr)  # type: ignore[arg-type]
    assert core.context_of(Object("k", (), "CTX")) == "CTX"


# --- answers ---------------------------------------------------------------------------------------------


def _sibling_of(value: bytes, ctype: str, n: int) -> v.Sibling:
    return v.Sibling((f"n{n}.1", n + 1), value, ctype, 0)


values = st.lists(st.tuples(st.binary(max_size=64), st.sampled_from(["text/plain; charset=utf-8",
                                                                     "application/octet-stream",
                                                                     "application/json"])),
                  min_size=2, max_size=5)


@given(values)
def test_multipart_siblings_decode_exactly_as_the_server_renders_them(vals: list[tuple[bytes, str]]) -> None:
    live = [_sibling_of(val, ct, i) for i, (val, ct) in enumerate(vals)]
    body, ctype = _multipart(live)
    got = core.decode_siblings(Answer(300, {"content-type": ctype}, body))
    assert got == tuple(Sibling(val, ct, f"n{i}.1:{i + 1}") for i, (val, ct) in enumerate(vals))


@given(values)
def test_json_siblings_decode(vals: list[tuple[bytes, str]]) -> None:
    doc = {"siblings": [{"value": base64.b64encode(val).decode(), "content_type": ct, "dot": f"n{i}:1"}
                        for i, (val, ct) in enumerate(vals)], "context": "C"}
    got = core.decode_siblings(Answer(300, {"content-type": "application/json"}, json.dumps(doc).encode()))
    assert [(s.value, s.content_type, s.dot) for s in got] == [(val, ct, f"n{i}:1") for i, (val, ct) in enumerate(vals)]


def test_malformed_siblings_are_a_server_error_not_a_traceback() -> None:
    with pytest.raises(ServerError, match="malformed JSON"):
        core.decode_siblings(Answer(300, {"content-type": "application/json"}, b'{"siblings": [{"value": "@@"}]}'))
    with pytest.raises(ServerError, match="unknown format"):
        core.decode_siblings(Answer(300, {}, b"x"))


def _three_siblings() -> Answer:
    body, ctype = _multipart([_sibling_of(b"a", "text/plain", 1), _sibling_of(b"b", "text/plain", 2),
                              _sibling_of(b"a", "text/plain", 3)])
    return Answer(300, {"content-type": ctype, "x-context": "CTX", "x-coordinator": "n2", "x-replies": "2"}, body)


def test_a_resolver_sees_every_distinct_sibling_and_the_context_is_the_reads() -> None:
    seen: list[tuple[Sibling, ...]] = []

    def resolver(sibs: tuple[Sibling, ...]) -> Sibling:
        seen.append(sibs)
        return Sibling(b"".join(s.value for s in sibs), "text/plain")

    obj = core.read_object("k", _three_siblings(), "n2", resolver)
    assert [s.value for s in seen[0]] == [b"a", b"b"]  # the two equal siblings are one value
    assert len(obj.siblings) == 3 and obj.value == b"ab" and obj.context == "CTX"
    assert obj.info.coordinator == "n2" and obj.info.replies == 2


def test_distinct_siblings_without_a_resolver_are_a_conflict_equal_ones_are_not() -> None:
    obj = core.read_object("k", _three_siblings(), "n2", None)
    assert obj.conflicted
    with pytest.raises(Conflict) as exc:
        obj.value
    assert [s.value for s in exc.value.siblings] == [b"a", b"b"] and exc.value.object is obj
    twice = Object("k", (Sibling(b"x", "t", "n1:1"), Sibling(b"x", "t", "n2:1")), "C")
    assert not twice.conflicted and twice.value == b"x"


def test_a_single_value_and_absence() -> None:
    obj = core.read_object("k", Answer(200, {"content-type": "text/plain", "x-context": "C"}, b"v"), "n1", None)
    assert obj.exists and obj.value == b"v" and obj.content_type == "text/plain" and obj.context == "C"
    gone = Answer(404, {"x-context": "TOMB"}, b'{"error": "not_found", "reason": "no value"}')
    with pytest.raises(NotFound) as nf:
        core.read_object("k", gone, "n1", None)
    assert nf.value.context == "TOMB"
    absent = core.read_object("k", gone, "n1", None, missing_ok=True)
    assert not absent.exists and absent.context == "TOMB"
    with pytest.raises(NotFound):
        absent.value


def test_a_plain_write_gives_no_object_returnbody_gives_a_read() -> None:
    h = {"x-coordinator": "n1", "x-acks": "2", "x-hinted": "1", "x-durable": "0", "x-context": "W"}
    plain = core.write_result("k", Answer(204, h, b""), "n1", None)
    assert plain.object is None and plain.info.replies == 2 and plain.info.hinted == 1
    body = core.write_result("k", Answer(200, {**h, "content-type": "text/plain"}, b"v"), "n1", None)
    assert body.object is not None and body.object.value == b"v" and body.object.context == "W"


def _error(status: int, reason: str, **extra: object) -> Answer:
    return Answer(status, {"content-type": "application/json", "x-coordinator": "n3"},
                  json.dumps({"error": "e", "reason": reason, **extra}).encode())


def test_quorum_counts_are_read_from_every_kind_of_503_the_server_sends() -> None:
    """The reasons are made by the server's own code (tallies, coordinator), not copied by hand."""
    put = PutTally(w=3, dw=0, pw=0, targets=3)
    put.add_error("n2", "down")
    assert core.quorum_counts({"reason": put.outcome(True).reason}) == (3, 0)
    get = GetTally(r=2, pr=0, targets=2)
    get.add_error("n2", "down")
    assert core.quorum_counts({"reason": get.outcome().reason}) == (2, 0)
    unreachable = _unreachable("w", 3, 3, [Target("n1", Role.PRIMARY)], [])
    assert core.quorum_counts({"reason": unreachable}) == (3, 1)
    forward = "could not reach a coordinator for this key (required w=2, 1 replicas reachable): n2: x"
    assert core.quorum_counts({"reason": forward}) == (2, 1)
    assert core.quorum_counts({"reason": "something else"}) == (None, None)
    assert core.quorum_counts({"reason": "x", "required": 2, "answered": 1}) == (2, 1)


def test_error_answers_map_to_exceptions() -> None:
    with pytest.raises(QuorumError) as q:
        core.raise_for(_error(503, "timed out: required r=2, 1 answered (1 primary) of 3 contacted"))
    assert (q.value.required, q.value.answered, q.value.coordinator) == (2, 1, "n3")
    with pytest.raises(Conflict, match="409"):
        core.raise_for(_error(409, "too many siblings"))
    with pytest.raises(BadRequest) as bad:
        core.raise_for(_error(400, "X-Read-Quorum = 5 is larger than N = 3"))
    assert bad.value.status == 400
    with pytest.raises(ServerError):
        core.raise_for(Answer(500, {}, b"not json"))


# --- the retry policy ------------------------------------------------------------------------------------


def test_retry_decisions() -> None:
    for method in ("GET", "PUT", "DELETE"):
        assert retryable(method, Failure.NOT_SENT, retry_writes=False)  # nothing reached a node
        for status in (200, 204, 300, 400, 404, 409, 500):
            assert not retryable(method, status, retry_writes=True)
    for failure in (Failure.TIMEOUT, Failure.BROKEN, 503):
        assert retryable("GET", failure, retry_writes=False)
        assert retryable("PUT", failure, retry_writes=True)
        assert not retryable("PUT", failure, retry_writes=False)
        assert not retryable("DELETE", failure, retry_writes=False)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _table(clock: Clock) -> RoutingTable:
    t = RoutingTable(["http://seed:1"], rng=random.Random(1))
    assert t.load(status_doc(), clock.now)
    return t


def _answer(status: int, coordinator: str = "n1") -> Answer:
    return Answer(status, {"x-coordinator": coordinator, "content-type": "application/json"},
                  b'{"error": "unavailable", "reason": "timed out: required w=2, 1 acknowledged"}')


def _call(request: Request, clock: Clock, **kw: object) -> Call:
    table = _table(clock)
    return Call(request, b"k", table, clock.now, timing=Timing(deadline=5, attempt_timeout=2, connect_timeout=0.5),
                **kw)  # type: ignore[arg-type]


PUT = Request("PUT", "/kv/k", {"X-Context": "C"}, b"v")
GET = Request("GET", "/kv/k", {})


def test_a_refused_write_goes_to_the_next_node_byte_for_byte() -> None:
    clock = Clock()
    call = _call(PUT, clock, retry_writes=False)
    first = call.next_attempt(clock.now)
    assert first is not None
    call.failed(first, Failure.NOT_SENT, "refused", clock.now)
    second = call.next_attempt(clock.now)
    assert second is not None and second.node != first.node
    assert second.request.body == b"v" and second.request.headers["X-Context"] == "C"
    call.answered(second, Answer(204, {"x-coordinator": second.node or ""}, b""), clock.now)
    assert call.next_attempt(clock.now) is None and call.answer().status == 204
    assert not call.routing.is_up(first.node or "", clock.now)  # believed down for a while


def test_a_write_that_may_have_been_applied_is_resent_only_when_allowed() -> None:
    clock = Clock()
    strict = _call(PUT, clock, retry_writes=False)
    a = strict.next_attempt(clock.now)
    assert a is not None
    with pytest.raises(UncertainWrite):
        strict.failed(a, Failure.TIMEOUT, "", clock.now)
    with pytest.raises(UncertainWrite):
        s2 = _call(PUT, clock, retry_writes=False)
        b = s2.next_attempt(clock.now)
        assert b is not None
        s2.answered(b, _answer(503), clock.now)
    retried = _call(PUT, clock, retry_writes=True)
    c = retried.next_attempt(clock.now)
    assert c is not None
    retried.failed(c, Failure.BROKEN, "reset", clock.now)
    d = retried.next_attempt(clock.now)
    assert d is not None and d.node != c.node and d.request == c.request


def test_a_read_tries_every_node_then_reports_the_last_quorum_error() -> None:
    clock = Clock()
    call = _call(GET, clock, retry_writes=False)
    tried = []
    while (a := call.next_attempt(clock.now)) is not None:
        tried.append(a.node or "")
        call.answered(a, _answer(503, a.node or ""), clock.now)
    assert sorted(tried) == ["n1", "n2", "n3", "n4", "n5"]  # the whole preference list, once each
    # A 503 is an answer: the nodes are up (their quorum was not); the ring is read again soon.
    assert all(call.routing.is_up(n, clock.now) for n in ["n1", "n2", "n3", "n4", "n5"])
    assert call.routing.needs_refresh(clock.now + 1)
    with pytest.raises(QuorumError) as q:
        call.answer()
    assert (q.value.required, q.value.answered) == (2, 1)


def test_a_final_answer_is_not_retried() -> None:
    clock = Clock()
    call = _call(GET, clock, retry_writes=True)
    a = call.next_attempt(clock.now)
    assert a is not None
    call.answered(a, Answer(404, {}, b"{}"), clock.now)
    assert call.next_attempt(clock.now) is None and call.answer().status == 404


def test_the_deadline_bounds_the_call_and_the_servers_timeout() -> None:
    clock = Clock()
    call = _call(PUT, clock, retry_writes=True)
    a = call.next_attempt(clock.now)
    assert a is not None and a.timeout == 2 and "X-Timeout-Ms" not in a.request.headers
    clock.now += 2
    call.failed(a, Failure.TIMEOUT, "", clock.now)
    clock.now += 1.5  # 1.5 s left of 5: the server is asked to answer within what remains
    b = call.next_attempt(clock.now)
    assert b is not None and b.timeout == pytest.approx(1.5) and b.request.headers["X-Timeout-Ms"] == "1450"
    clock.now += 1.5
    call.failed(b, Failure.TIMEOUT, "", clock.now)
    assert call.next_attempt(clock.now) is None
    with pytest.raises(Unreachable) as exc:
        call.answer()
    assert exc.value.maybe_applied and len(exc.value.attempts) == 2


def test_a_calls_timeout_goes_to_the_server_and_stretches_the_attempt() -> None:
    clock = Clock()
    call = _call(GET, clock, retry_writes=True, server_timeout=4.0)
    a = call.next_attempt(clock.now)
    assert a is not None and a.timeout == 4.5 and a.request.headers["X-Timeout-Ms"] == "4000"


# --- update(): read, apply once, write with the read's context, merge concurrent changes ------------------


def _run(steps: object, answer: Callable[[Operation[object]], object]) -> object:
    gen = steps
    op = next(gen)  # type: ignore[call-overload]
    while True:
        try:
            op = gen.send(answer(op))  # type: ignore[attr-defined]
        except StopIteration as done:
            return done.value


def _state(status: int, ctx: str, *vals: bytes) -> Answer:
    if status == 200:
        return Answer(200, {"content-type": "text/plain", "x-context": ctx}, vals[0])
    body, ctype = _multipart([_sibling_of(x, "text/plain", i) for i, x in enumerate(vals)])
    return Answer(300, {"content-type": ctype, "x-context": ctx}, body)


def test_update_writes_fns_result_with_the_reads_context_and_merges_a_concurrent_change() -> None:
    c = ClientCore("http://seed:1")
    calls: list[bytes | None] = []
    sent: list[tuple[str, str | None, bytes | None]] = []

    def fn(cur: bytes | None) -> bytes:
        calls.append(cur)
        return (cur or b"") + b"+me"

    answers = iter([_state(200, "R1", b"base"),  # the read
                    _state(300, "S2", b"base+me", b"base+them"),  # our write, and a concurrent one
                    _state(200, "S3", b"merged")])

    def answer(op: Operation[object]) -> object:
        sent.append((op.request.method, op.request.headers.get("X-Context"), op.request.body))
        return op.parse(next(answers), "n1")

    merge = lambda sibs: Sibling(b"merged", "text/plain")  # noqa: E731
    out = _run(c.update_steps("k", fn, {}, resolver=merge, content_type=None, max_resolutions=3), answer)
    assert calls == [b"base"]  # fn ran once: the concurrent change was merged, not redone
    assert sent == [("GET", None, None), ("PUT", "R1", b"base+me"), ("PUT", "S2", b"merged")]
    assert isinstance(out, Object) and out.value == b"merged"


def test_update_without_a_resolver_reports_the_concurrent_change() -> None:
    c = ClientCore("http://seed:1")
    answers = iter([Answer(404, {"x-context": "T"}, b"{}"), _state(300, "S", b"mine", b"theirs")])
    sent: list[str | None] = []

    def answer(op: Operation[object]) -> object:
        sent.append(op.request.headers.get("X-Context"))
        return op.parse(next(answers), "n1")

    with pytest.raises(Conflict, match="changed concurrently") as exc:
        _run(c.update_steps("k", lambda cur: b"mine", {}, resolver=None, content_type=None, max_resolutions=3),
             answer)
    assert sent == [None, "T"]  # an absent key's tombstone context is carried too
    assert exc.value.object is not None and exc.value.object.context == "S"


def test_token_and_tls_options_are_passed_through() -> None:
    """The server's TLS and tokens come later (issue 17): the options exist and reach every request now."""
    import ssl

    ctx = ssl.create_default_context()
    c = ClientCore(["https://a:1", "https://b:2"], token="s3cret", ssl=ctx)
    assert c.ssl is ctx
    assert c.get_op("k", {}).request.headers["Authorization"] == "Bearer s3cret"
    assert all(a.request.headers["Authorization"] == "Bearer s3cret" and a.url.startswith("https://")
               for a in c.status_attempts())
    with pytest.raises(ValueError, match="https"):
        ClientCore("http://a:1", ssl=ctx)
    with pytest.raises(FileNotFoundError):
        ClientCore("https://a:1", ssl="/nonexistent/ca.pem")  # a CA file path is loaded, not ignored


def test_a_delete_without_a_context_says_how_many_values_it_deleted() -> None:
    done = core.write_result("k", Answer(204, {"x-coordinator": "n1", "x-acks": "2", "x-deleted-siblings": "3"}, b""),
                             "n1", None)
    assert done.deleted == 3
    assert core.write_result("k", Answer(204, {"x-acks": "2"}, b""), "n1", None).deleted is None  # with a context
    with pytest.raises(NotFound):  # nothing there: nothing was written
        core.write_result("k", Answer(404, {"x-deleted-siblings": "0", "content-type": "application/json"},
                                      b'{"error": "not_found", "reason": "no value"}'), "n1", None)
