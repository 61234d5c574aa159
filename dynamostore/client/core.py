"""The client's sans-IO core: request building, the retry policy of one call, and answer parsing.

Both transports (`sync.py` on urllib3, `aio.py` on aiohttp) drive the same `Call`: they ask it for the next
`Attempt` (a node, a request, a time budget), perform it, and feed back the `Answer` or the `Failure`. The
call decides whether to try the next node of the key's preference list, and finally returns the answer to
parse or raises. Nothing here does I/O, reads a clock or draws from the global random.

Retry policy (`retryable`):
- A request that failed before a byte of it was sent (the connection was refused, or could not be made in
  `connect_timeout`) reached no node: any method is retried on the next node.
- A GET is idempotent: it is also retried after a timeout, a cut connection or a 503.
- A PUT or DELETE that may have reached a coordinator (a timeout or a cut connection after sending, or a
  503: the coordinator may have committed it locally before the quorum failed) may have been applied.
  With `retry_writes` (the default) it is sent again, byte for byte with the same context, to the next node.
  If the first try was applied too, the key then holds the value twice, as two siblings with equal bytes
  (two dots, one value): never a lost write, never a second application of an `update()` function (the
  function is not re-run, its result is resent). The client counts equal siblings as one value. A DELETE
  without a context, retried, deletes what the second coordinator reads, as any context-less delete does.
  With `retry_writes=False` the client raises `UncertainWrite` instead.
- Any other answer (2xx, 300, 404, 4xx, 500) is final.
"""

from __future__ import annotations

import base64
import binascii
import email.parser
import email.policy
import enum
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import quote

from dynamostore.client.errors import (
    BadRequest,
    Conflict,
    NotFound,
    QuorumError,
    ServerError,
    UncertainWrite,
    Unreachable,
)
from dynamostore.client.objects import Consistency, Info, Object, Resolver, Sibling, WriteResult
from dynamostore.client.routing import RoutingTable, Target

WRITE_METHODS = ("PUT", "DELETE")


# --- requests --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP request, independent of the node it goes to: `target` is the path and query."""

    method: str
    target: str
    headers: dict[str, str]
    body: bytes | None = None


def kv_path(key: str) -> str:
    """`/kv/{key}` with the key percent-encoded as one path segment ('/' included)."""
    if not isinstance(key, str):
        raise TypeError(f"a key is a str, not {type(key).__name__}")
    if not key:
        raise ValueError("the key is empty")
    return "/kv/" + quote(key, safe="")


def _quorum(value: int | str, name: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"{name} is an integer or a level name, not {value!r}")
    if isinstance(value, int) and value < 0:
        raise ValueError(f"{name} must not be negative (got {value})")
    return str(value)


def consistency_headers(opts: Consistency, write: bool) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Headers and query parameters for the options that apply to a read (R, PR) or a write (W, DW, PW)."""
    headers: dict[str, str] = {}
    query: list[tuple[str, str]] = []
    if "level" in opts:
        headers["X-Consistency-Level"] = str(opts["level"])
    if write:
        if "w" in opts:
            headers["X-Write-Quorum"] = _quorum(opts["w"], "w")
        if "dw" in opts:
            headers["X-Durable-Writes"] = _quorum(opts["dw"], "dw")
        if "pw" in opts:
            query.append(("pw", _quorum(opts["pw"], "pw")))
    else:
        if "r" in opts:
            headers["X-Read-Quorum"] = _quorum(opts["r"], "r")
        if "pr" in opts:
            query.append(("pr", _quorum(opts["pr"], "pr")))
    if "sloppy" in opts:
        headers["X-Sloppy-Quorum"] = "true" if opts["sloppy"] else "false"
    return headers, query


def build(method: str, key: str, opts: Consistency, *, body: bytes | None = None, content_type: str | None = None,
          context: str | None = None, returnbody: bool = False, auth: str | None = None) -> Request:
    write = method in WRITE_METHODS
    headers, query = consistency_headers(opts, write)
    if context:
        headers["X-Context"] = context
    if body is not None:
        headers["Content-Type"] = content_type or "application/octet-stream"
    if auth:
        headers["Authorization"] = auth
    if returnbody:
        query.append(("returnbody", "true"))
    if returnbody or method == "GET":
        # Siblings as JSON (base64 values): decoded by C code, where the stdlib's MIME parser takes
        # milliseconds for a few parts. A single value comes back as itself either way.
        headers["Accept"] = "application/json"
    target = kv_path(key) + ("?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in query) if query else "")
    return Request(method, target, headers, body)


# --- one call: attempts, failures, the final answer --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP answer: status, headers with lower-cased names, the whole body."""

    status: int
    headers: Mapping[str, str]
    body: bytes


class Failure(enum.Enum):
    NOT_SENT = "not sent"  # refused, or no connection within connect_timeout: no node saw the request
    TIMEOUT = "timed out"  # sent, no answer in time: it may have been applied
    BROKEN = "connection cut"  # sent, the connection closed or reset before the answer: it may have been applied


class TransportFailure(Exception):
    """What a transport raises when an attempt got no HTTP answer."""

    def __init__(self, failure: Failure, detail: str = "") -> None:
        super().__init__(f"{failure.value}: {detail}" if detail else failure.value)
        self.failure = failure
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Attempt:
    node: str | None
    url: str  # base URL + request target
    request: Request
    timeout: float  # seconds for the whole attempt
    connect_timeout: float


def retryable(method: str, failure: Failure | int, retry_writes: bool) -> bool:
    """Whether a call may go on to the next node after `failure` (a transport failure, or an HTTP status)."""
    if isinstance(failure, int):
        if failure != 503:
            return False  # every other answer is final
    elif failure is Failure.NOT_SENT:
        return True
    return method not in WRITE_METHODS or retry_writes


@dataclass(frozen=True, slots=True)
class Timing:
    deadline: float = 10.0  # seconds for a whole call, fail-over included
    attempt_timeout: float = 3.0  # at most this per node, unless the call's own `timeout` asks more
    connect_timeout: float = 1.0


class Call:
    """One request over the key's preference list, as a state machine the transports step."""

    def __init__(self, request: Request, key: bytes, routing: RoutingTable, now: float, *, timing: Timing,
                 retry_writes: bool, deadline: float | None = None, server_timeout: float | None = None) -> None:
        self.request = request
        self.routing = routing
        self.write = request.method in WRITE_METHODS
        self.retry_writes = retry_writes
        self.timing = timing
        self.deadline_at = now + (deadline if deadline is not None else timing.deadline)
        self.server_timeout = server_timeout
        self._targets: list[Target] = routing.targets(key, now)
        self._next = 0
        self.final: Answer | None = None
        self.final_node: str | None = None
        self.last_503: Answer | None = None
        self.maybe_applied = False
        self.errors: list[str] = []

    def next_attempt(self, now: float) -> Attempt | None:
        """The next node to try, or None when the call is over (answered, out of nodes or of time)."""
        if self.final is not None or self._next >= len(self._targets):
            return None
        remaining = self.deadline_at - now
        if remaining <= 0:
            return None
        t = self._targets[self._next]
        self._next += 1
        budget = self.timing.attempt_timeout
        if self.server_timeout is not None:
            budget = max(budget, self.server_timeout + 0.5)
        budget = min(budget, remaining)
        req = self.request
        # The server must give up (503, with its reason) before this client does: cap its quorum timeout.
        server = self.server_timeout
        if server is None and budget < self.timing.attempt_timeout:
            server = budget
        if server is not None:
            ms = round(max(1.0, min(server, budget - 0.05) * 1000))
            req = Request(req.method, req.target, {**req.headers, "X-Timeout-Ms": str(min(ms, 120_000))}, req.body)
        return Attempt(t.node, t.url + req.target, req, budget, min(self.timing.connect_timeout, budget))

    def failed(self, attempt: Attempt, failure: Failure, detail: str, now: float) -> None:
        self.routing.failed(attempt.node, now)
        self.errors.append(f"{attempt.node or attempt.url}: {failure.value}" + (f" ({detail})" if detail else ""))
        if failure is not Failure.NOT_SENT and self.write:
            self.maybe_applied = True
            if not self.retry_writes:
                raise UncertainWrite(f"{self.request.method} may have been applied: {self.errors[-1]}", attempt.node)

    def answered(self, attempt: Attempt, answer: Answer, now: float) -> None:
        coordinator = answer.headers.get("x-coordinator")
        if answer.status == 503:
            # The node answered: it is up. Its quorum was not (maybe its view of the ring or of its peers
            # differs from another node's): try the next node, and read the ring again soon.
            self.routing.answered(attempt.node, None, write=self.write)
            self.routing.mark_stale()
            self.last_503 = answer
            self.errors.append(f"{attempt.node or attempt.url}: 503 {_reason(answer)}")
            if self.write:
                self.maybe_applied = True
            if not retryable(self.request.method, 503, self.retry_writes):
                raise UncertainWrite(f"{self.request.method} may have been applied: {self.errors[-1]}", attempt.node)
            return
        self.routing.answered(attempt.node, coordinator, write=self.write)
        self.final = answer
        self.final_node = attempt.node

    def answer(self) -> Answer:
        """The final answer, or the error that ended the call."""
        if self.final is not None:
            return self.final
        if self.last_503 is not None:
            raise_for(self.last_503)
        if not self._targets:
            raise Unreachable("no node to send the request to")
        why = "the deadline passed" if self._next < len(self._targets) else "every node failed"
        raise Unreachable(f"{self.request.method} {self.request.target}: no answer ({why})", self.errors,
                          self.maybe_applied)


# --- answers ---------------------------------------------------------------------------------------------


_REQUIRED = re.compile(r"required (?:[a-z]+=)?(\d+)")
_ANSWERED = re.compile(r"(\d+) (?:answered|acknowledged)|only (\d+) replicas|(\d+) replicas reachable")


def _error_doc(answer: Answer) -> dict[str, Any]:
    try:
        doc = json.loads(answer.body)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        return doc
    return {"error": "error", "reason": answer.body[:200].decode("utf-8", "replace")}


def _reason(answer: Answer) -> str:
    return str(_error_doc(answer).get("reason", ""))


def quorum_counts(doc: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """(required, answered) from a 503's JSON: its integer fields when present, else read from its reason."""
    req, ans = doc.get("required"), doc.get("answered")
    reason = str(doc.get("reason", ""))
    if not isinstance(req, int):
        m = _REQUIRED.search(reason)
        req = int(m.group(1)) if m else None
    if not isinstance(ans, int):
        m2 = _ANSWERED.search(reason)
        ans = int(next(g for g in m2.groups() if g is not None)) if m2 else None
    return req, ans


def raise_for(answer: Answer) -> NoReturn:
    doc = _error_doc(answer)
    reason, err = str(doc.get("reason", "")), str(doc.get("error", "error"))
    coordinator = answer.headers.get("x-coordinator")
    if answer.status == 503:
        required, answered = quorum_counts(doc)
        raise QuorumError(reason, required, answered, coordinator)
    if answer.status == 409:
        raise Conflict(f"409 {err}: {reason}")
    if 400 <= answer.status < 500:
        raise BadRequest(answer.status, err, reason)
    raise ServerError(answer.status, reason or err, coordinator)


def _int(headers: Mapping[str, str], name: str) -> int | None:
    raw = headers.get(name)
    return int(raw) if raw is not None and raw.isdigit() else None


def info_of(answer: Answer, node: str | None) -> Info:
    h = answer.headers
    return Info(h.get("x-coordinator"), _int(h, "x-replies") if "x-replies" in h else _int(h, "x-acks"),
                _int(h, "x-hinted"), _int(h, "x-durable"), node)


def decode_siblings(answer: Answer) -> tuple[Sibling, ...]:
    """The values of a 300 answer, in either format the server sends: JSON with base64 values (what this
    client asks for) or multipart/mixed (the server's default, e.g. when a proxy dropped the Accept header)."""
    ctype = answer.headers.get("content-type", "")
    if ctype.startswith("application/json"):
        try:
            doc = json.loads(answer.body)
            return tuple(Sibling(base64.b64decode(s["value"], validate=True), str(s["content_type"]),
                                 str(s["dot"]) if s.get("dot") else None) for s in doc["siblings"])
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise ServerError(answer.status, f"malformed JSON siblings: {exc}") from None
    if ctype.startswith("multipart/"):
        # The stdlib's MIME parser: exact for binary parts (each carries its own Content-Type and X-Dot).
        head = f"Content-Type: {ctype}\r\n\r\n".encode("latin-1")
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + answer.body)
        if not msg.is_multipart():
            raise ServerError(answer.status, "malformed multipart siblings")
        out: list[Sibling] = []
        for part in msg.iter_parts():
            payload = part.get_payload(decode=True)
            value = payload if isinstance(payload, bytes) else b""
            # the headers as sent (the parser's own rendering would re-quote the content type's parameters)
            raw = {name.lower(): str(v).strip() for name, v in part.raw_items()}
            out.append(Sibling(value, raw.get("content-type", "application/octet-stream"), raw.get("x-dot") or None))
        return tuple(out)
    raise ServerError(answer.status, f"siblings in an unknown format ({ctype or 'no Content-Type'})")


def read_object(key: str, answer: Answer, node: str | None, resolver: Resolver | None, *,
                 missing_ok: bool = False) -> Object:
    """The Object of a GET (or of a write's returnbody): 200 one value, 300 siblings, 404 absent."""
    ctx = answer.headers.get("x-context")
    info = info_of(answer, node)
    if answer.status == 200:
        sib = Sibling(answer.body, answer.headers.get("content-type", "application/octet-stream"))
        return Object(key, (sib,), ctx, None, info)
    if answer.status == 300:
        obj = Object(key, decode_siblings(answer), ctx, None, info)
        return obj.resolve(resolver) if resolver is not None else obj
    if answer.status == 404:
        if missing_ok:
            return Object(key, (), ctx, None, info)
        raise NotFound(key, ctx)
    raise_for(answer)


def write_result(key: str, answer: Answer, node: str | None, resolver: Resolver | None) -> WriteResult:
    """204: done; 200/300 (returnbody): done, with the state after the write as a read Object."""
    if answer.status == 204:
        return WriteResult(key, info_of(answer, node), deleted=_int(answer.headers, "x-deleted-siblings"))
    if answer.status in (200, 300):
        return WriteResult(key, info_of(answer, node), read_object(key, answer, node, resolver))
    if answer.status == 404:  # a DELETE without a context that found nothing to delete
        raise NotFound(key, answer.headers.get("x-context"))
    raise_for(answer)


def encode_value(value: bytes | str, content_type: str | None) -> tuple[bytes, str]:
    if isinstance(value, str):
        return value.encode("utf-8"), content_type or "text/plain; charset=utf-8"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value), content_type or "application/octet-stream"
    raise TypeError(f"a value is bytes or str, not {type(value).__name__}")


def context_of(context: Object | str | None) -> str | None:
    """The context token to send: an Object's (the read it came from), or a token the caller carried itself
    (e.g. `dynamostore kv put --context`). A `WriteResult` is refused: a write's answer is not a read."""
    if context is None or isinstance(context, str):
        return context or None
    if isinstance(context, Object):
        return context.context
    raise TypeError(f"context is an Object from a read (or its token), not {type(context).__name__}")
