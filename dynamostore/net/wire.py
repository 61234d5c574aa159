"""Wire format of the node-to-node RPC: errors, frame layout, framing codec, handshake MACs.

Pure: no asyncio, no sockets, no clock. `net.client` and `net.server` drive it.

Every frame is a 4-byte big-endian body length followed by one msgpack value (packed with
`use_bin_type=True`, unpacked with `raw=False`, so bytes stay bytes and str stays str). The value
is always a list whose first element is the message type:

    handshake (once per connection, in this order)
      C->S  [HELLO, "dsrpc", VERSION, client_node_id, client_nonce]
      S->C  [CHALLENGE, server_node_id, server_nonce]
      C->S  [AUTH, client_proof]
      S->C  [WELCOME, server_proof]              (or FATAL "auth" and close)
    then, multiplexed by request id (an int chosen by the client, unique per connection)
      C->S  [REQ, rid, method, payload]
      S->C  [OK, rid, result]  |  [ERR, rid, code, message]
    either side, then close:
      [FATAL, code, message]

Proofs are HMAC-SHA256(secret, label | client_nonce | server_nonce | client_id | server_id) with
distinct labels for the two directions, so neither proof can be replayed or reflected as the other
and the secret never crosses the wire. The client proves first: a client with the wrong secret is
refused by the server (which logs it), instead of giving up silently on its own side.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from typing import Any, Awaitable, Callable, Final

import msgpack

# --------------------------------------------------------------------------- errors


class RpcError(Exception):
    """Base of every RPC failure."""


class RpcUnavailable(RpcError):
    """Cannot connect, or the connection was lost before the answer arrived."""


class RpcTimeout(RpcError):
    """No answer within the call's timeout (the request may still have run remotely)."""


class RpcRemoteError(RpcError):
    """The remote side refused the call: its handler raised, or authentication failed.

    `code` is machine-readable ("bad_request", "internal", "unknown_method", "auth", ...).
    Handlers raise it to send a specific code back; any other exception becomes "internal".
    """

    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code: str = code
        self.message: str = message


Handler = Callable[[str, Any, str], Any]
"""(method, payload, peer_node_id) -> a msgpack-able result, or a future or coroutine of one.

A handler that can answer at once (a read on the loop) returns the value; one waiting on a single future (a
storage commit) returns that future; only a coroutine costs the server a task."""

# --------------------------------------------------------------------------- message types

HELLO: Final = 10
CHALLENGE: Final = 11
AUTH: Final = 12
WELCOME: Final = 13
REQ: Final = 1
OK: Final = 2
ERR: Final = 3
FATAL: Final = 4

MAGIC: Final = "dsrpc"
VERSION: Final = 1
NONCE_BYTES: Final = 16
DEFAULT_MAX_FRAME: Final = 64 << 20

# Connection-level error codes (sent in FATAL frames).
CODE_AUTH: Final = "auth"
CODE_BAD_FRAME: Final = "bad_frame"
CODE_TOO_LARGE: Final = "too_large"
CODE_VERSION: Final = "version"
CODE_SHUTDOWN: Final = "shutdown"
CODE_HANDSHAKE_TIMEOUT: Final = "handshake_timeout"

_HEADER = struct.Struct(">I")
_pack_header = _HEADER.pack
_unpack_header = _HEADER.unpack_from
_unpackb = msgpack.unpackb


def new_packer() -> msgpack.Packer:
    """A reusable packer (cheaper than msgpack.packb per call). Not shared across threads."""
    return msgpack.Packer(use_bin_type=True, autoreset=True)


def frame(body: bytes) -> bytes:
    """Prefix an already-packed msgpack body with its length."""
    return _pack_header(len(body)) + body


def encode(packer: msgpack.Packer, msg: list[Any]) -> bytes:
    """Pack one message into a complete frame (raises TypeError/ValueError if not msgpack-able)."""
    body: bytes = packer.pack(msg)
    return _pack_header(len(body)) + body


# --------------------------------------------------------------------------- decoding


class FrameError(Exception):
    """The byte stream is not a valid sequence of frames; the connection must be closed."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class FrameDecoder:
    """Incremental decoder: feed it whatever bytes arrived, get back the complete messages.

    A frame whose announced length exceeds `max_frame` is rejected as soon as its 4-byte header is
    seen, before buffering its body. After an error the decoder stays failed.
    """

    __slots__ = ("_buf", "_max", "_error")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self._buf = bytearray()
        self._max = max_frame
        self._error: FrameError | None = None

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> tuple[list[Any], FrameError | None]:
        """Return the messages completed by `data`, and the error that stopped decoding, if any.

        Messages decoded before an error are still returned, so the caller can serve them first.
        """
        if self._error is not None:
            return [], self._error
        buf: bytes | bytearray
        if self._buf:
            self._buf += data
            buf = self._buf
        else:
            buf = data  # fast path: no copy when the chunk holds whole frames
        n = len(buf)
        pos = 0
        out: list[Any] = []
        err: FrameError | None = None
        with memoryview(buf) as view:
            while n - pos >= 4:
                (size,) = _unpack_header(buf, pos)
                if size > self._max:
                    err = FrameError(CODE_TOO_LARGE, f"frame of {size} bytes exceeds max_frame {self._max}")
                    break
                end = pos + 4 + size
                if end > n:
                    break
                try:
                    msg = _unpackb(view[pos + 4 : end], raw=False, strict_map_key=False)
                except Exception as exc:  # msgpack raises several unrelated types on garbage
                    err = FrameError(CODE_BAD_FRAME, f"undecodable frame: {type(exc).__name__}")
                    break
                if type(msg) is not list or not msg or type(msg[0]) is not int:
                    err = FrameError(CODE_BAD_FRAME, "frame is not a typed message list")
                    break
                out.append(msg)
                pos = end
        if err is not None:
            self._error = err
            self._buf = bytearray()
        elif buf is self._buf:
            del self._buf[:pos]
        elif pos < n:
            self._buf = bytearray(buf[pos:])
        return out, err


# --------------------------------------------------------------------------- handshake


def _mac(label: bytes, secret: bytes, cnonce: bytes, snonce: bytes, cid: str, sid: str) -> bytes:
    h = hmac.new(secret, label, hashlib.sha256)
    for part in (cnonce, snonce, cid.encode(), sid.encode()):
        # Length-prefix each part so that no two different tuples hash the same bytes.
        h.update(_pack_header(len(part)))
        h.update(part)
    return h.digest()


def client_proof(secret: bytes, cnonce: bytes, snonce: bytes, client_id: str, server_id: str) -> bytes:
    return _mac(b"dsrpc-v1 client", secret, cnonce, snonce, client_id, server_id)


def server_proof(secret: bytes, cnonce: bytes, snonce: bytes, client_id: str, server_id: str) -> bytes:
    return _mac(b"dsrpc-v1 server", secret, cnonce, snonce, client_id, server_id)


def proof_ok(expected: bytes, got: object) -> bool:
    """Constant-time comparison that also tolerates a peer sending a non-bytes proof."""
    return isinstance(got, bytes) and hmac.compare_digest(expected, got)
