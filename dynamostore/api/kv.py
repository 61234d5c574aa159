"""The key-value HTTP handlers (on dynamostore.api.server): GET, PUT and DELETE of /kv/{key}.

Handlers only translate: parse and validate the request (400/413 with a JSON reason before anything is
touched), call the coordinator, and render what happened (coordinator, acknowledgements, hinted count).
"""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Sequence

from dynamostore.api.errors import JSON, BadRequest, error
from dynamostore.api.server import Request, Response, json_response
from dynamostore.config import LimitSettings, QuorumSettings
from dynamostore.kv import versioning as v
from dynamostore.kv.context import ContextCodec, InvalidContext
from dynamostore.kv.coordinator import Coordinator, ForwardError, ReadOptions, WriteOptions
from dynamostore.kv.quorum import QuorumError, parse_quorum
from dynamostore.kv.replica import SiblingLimitError

log = logging.getLogger(__name__)

NO_CONTEXT: tuple[dict[str, int], tuple[v.Dot, ...]] = ({}, ())  # a blind write (never modified)


class KvApi:
    def __init__(self, coordinator: Coordinator, codec: ContextCodec, quorum: QuorumSettings,
                 limits: LimitSettings, n_val: int) -> None:
        self.coordinator = coordinator
        self.q = quorum
        self.limits = limits
        self.n = n_val
        self.codec = codec
        # What a request without consistency headers or parameters gets (most of them): built once.
        q = self.q
        self._default_read = ReadOptions(r=q.r, pr=0, sloppy=q.sloppy, timeout=q.timeout_ms / 1000)
        self._default_write = WriteOptions(w=max(q.w, q.dw), dw=q.dw, pw=0, sloppy=q.sloppy,
                                           timeout=q.timeout_ms / 1000)

    # --- request parsing ------------------------------------------------------------------------------

    def _key(self, request: Request) -> bytes:
        raw = request.path[4:] if request.path.startswith("/kv/") else ""
        if not raw:
            raise BadRequest("the key is empty")
        key = raw.encode("utf-8", "surrogateescape")
        if len(key) > self.limits.max_key_bytes:
            raise BadRequest(f"the key is {len(key)} bytes, longer than the limit of {self.limits.max_key_bytes}")
        return key

    def _context(self, request: Request, key: bytes) -> tuple[dict[str, int], tuple[v.Dot, ...]] | None:
        """The request's context (vector, dot cloud), None without one."""
        token = request.headers.get("x-context")
        if token is None or token.strip() == "":
            return None
        try:
            return self.codec.decode_context(key, token)
        except InvalidContext as exc:
            raise BadRequest(str(exc)) from exc

    def _quorum(self, request: Request, header: str, param: str, default: int) -> int:
        hdrs = request.headers  # lower-cased names; `header` is the name as users spell it (for messages)
        if header and (raw := hdrs.get(header.lower())) is not None:
            return self._level(raw, header)
        if request.query_string and param in request.query:
            return self._level(request.query[param], f"?{param}")
        if header != "" and param in ("r", "w") and (raw := hdrs.get("x-consistency-level")) is not None:
            return self._level(raw, "X-Consistency-Level")
        return default

    def _level(self, raw: str, name: str) -> int:
        try:
            value = parse_quorum(raw, self.n, name)
        except QuorumError as exc:
            raise BadRequest(str(exc)) from exc
        return value

    def _sloppy(self, request: Request) -> bool:
        raw = request.headers.get("x-sloppy-quorum")
        if raw is None:
            return self.q.sloppy
        low = raw.strip().lower()
        if low in ("true", "1", "yes"):
            return True
        if low in ("false", "0", "no"):
            return False
        raise BadRequest(f"X-Sloppy-Quorum must be true or false (got {raw!r})")

    def _timeout(self, request: Request) -> float:
        raw = request.headers.get("x-timeout-ms")
        if raw is None:
            return self.q.timeout_ms / 1000
        if not raw.strip().isdigit() or not 1 <= int(raw) <= 120_000:
            raise BadRequest(f"X-Timeout-Ms must be an integer from 1 to 120000 (got {raw!r})")
        return int(raw) / 1000

    def _write_opts(self, request: Request) -> WriteOptions:
        h = request.headers
        if (not request.query_string and "x-write-quorum" not in h and "x-durable-writes" not in h
                and "x-consistency-level" not in h and "x-sloppy-quorum" not in h and "x-timeout-ms" not in h):
            return self._default_write
        w = self._quorum(request, "X-Write-Quorum", "w", self.q.w)
        dw = self._quorum(request, "X-Durable-Writes", "dw", self.q.dw)
        pw = self._quorum(request, "", "pw", 0)
        if dw > w:
            w = dw  # a durable ack is an ack: asking DW=3 with W=2 means three replicas must answer
        return WriteOptions(w=w, dw=dw, pw=pw, sloppy=self._sloppy(request), timeout=self._timeout(request))

    def _read_opts(self, request: Request) -> ReadOptions:
        h = request.headers
        if (not request.query_string and "x-read-quorum" not in h and "x-consistency-level" not in h
                and "x-sloppy-quorum" not in h and "x-timeout-ms" not in h):
            return self._default_read
        r = self._quorum(request, "X-Read-Quorum", "r", self.q.r)
        pr = self._quorum(request, "", "pr", 0)
        return ReadOptions(r=r, pr=pr, sloppy=self._sloppy(request), timeout=self._timeout(request))

    # --- rendering ------------------------------------------------------------------------------------

    def _render_state(
        self, request: Request, key: bytes, state: v.VersionSet | None, headers: dict[str, str]
    ) -> Response:
        if state is not None:
            headers["X-Context"] = self.codec.encode(key, state.clock)
        live = state.live if state is not None else ()
        if not live:  # no record, or nothing but tombstones
            return json_response({"error": "not_found", "reason": "no value for this key"}, status=404,
                                 headers=headers)
        if len(live) == 1:
            s = live[0]
            return Response(s.value or b"", 200, {**headers, "Content-Type": s.content_type})
        headers["X-Siblings"] = str(len(live))
        if JSON in request.headers.get("accept", ""):
            body = {
                "siblings": [
                    {"value": base64.b64encode(s.value or b"").decode(), "content_type": s.content_type,
                     "dot": f"{s.dot[0]}:{s.dot[1]}"}
                    for s in live
                ],
                "context": headers["X-Context"],
            }
            return json_response(body, status=300, headers=headers)
        multipart, ctype = _multipart(live)
        return Response(multipart, 300, headers, ctype)

    # --- handlers -------------------------------------------------------------------------------------

    async def get(self, request: Request) -> Response:
        key = self._key(request)
        opts = self._read_opts(request)
        res = await self.coordinator.get(key, opts)
        headers = {"X-Coordinator": res.coordinator, "X-Replies": str(res.replies), "X-Hinted": str(res.hinted)}
        return self._render_state(request, key, res.state, headers)

    async def put(self, request: Request) -> Response:
        key = self._key(request)
        # An over-limit body never gets here: the server answered 413 (too_large below) without reading it.
        opts = self._write_opts(request)
        ctx = self._context(request, key) or NO_CONTEXT
        body = request.body
        ctype = request.headers.get("content-type", "application/octet-stream")
        return await self._write(request, key, body, ctype, ctx, opts)

    async def delete(self, request: Request) -> Response:
        """With a context, a tombstone superseding what it covers. Without one, Riak's rule: read the key at
        the request's R and supersede what was read (`X-Deleted-Siblings` says how many values; 404 and
        nothing written when there were none)."""
        key = self._key(request)
        opts = self._write_opts(request)
        ctx = self._context(request, key)
        if ctx is not None:
            return await self._write(request, key, None, "", ctx, opts)
        read = await self.coordinator.get(key, self._read_opts(request))
        state = read.state
        live = state.live if state is not None else ()
        if state is None or not live:
            headers = {"X-Coordinator": read.coordinator, "X-Replies": str(read.replies), "X-Deleted-Siblings": "0"}
            if state is not None:  # tombstones: their context, as a read gives it
                headers["X-Context"] = self.codec.encode(key, state.clock)
            return json_response({"error": "not_found", "reason": "no value for this key: nothing was deleted"},
                                 status=404, headers=headers)
        response = await self._write(request, key, None, "", (dict(state.clock), ()), opts)
        response.headers["X-Deleted-Siblings"] = str(len(live))
        return response

    async def _write(
        self, request: Request, key: bytes, value: bytes | None, ctype: str,
        ctx: tuple[dict[str, int], tuple[v.Dot, ...]], opts: WriteOptions,
    ) -> Response:
        clock, dots = ctx
        try:
            res = await self.coordinator.put(key, value, ctype, clock, opts, dots)
        except SiblingLimitError as too_many:
            return error(409, "too_many_siblings", str(too_many))
        except ForwardError as refused:
            return error(409 if refused.code == "conflict" else 400, refused.code, str(refused))
        headers = {
            "X-Coordinator": res.coordinator,
            "X-Acks": str(res.acks),
            "X-Hinted": str(res.hinted),
            "X-Durable": str(res.durable),
        }
        if request.query_string and request.query.get("returnbody", "").lower() == "true" and value is not None:
            return self._render_state(request, key, res.state, headers)  # the merged state, with its context
        # What the request's context covered plus this write's dot: never siblings the client did not see.
        dot = v.minted_dot(res.state)
        if dot is not None:
            headers["X-Context"] = self.codec.encode(key, *v.written_context(clock, dots, dot))
        return Response(status=204, headers=headers)

    async def empty_key(self, request: Request) -> Response:
        return error(400, "bad_request", "the key is empty: use /kv/{key}")


def _multipart(live: Sequence[v.Sibling]) -> tuple[bytes, str]:
    """Siblings as multipart/mixed: a random boundary, each part with Content-Type, X-Dot and Content-Length
    (the layout aiohttp's MultipartWriter produced before)."""
    boundary = os.urandom(16).hex()
    parts: list[bytes] = []
    for s in live:
        value = s.value or b""
        head = (f"--{boundary}\r\nContent-Type: {s.content_type}\r\nX-Dot: {s.dot[0]}:{s.dot[1]}\r\n"
                f"Content-Length: {len(value)}\r\n\r\n")
        parts += (head.encode("utf-8", "surrogateescape"), value, b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/mixed; boundary={boundary}"
