"""Wire format of the node-to-node RPC: errors, frame layout, framing codec, handshake and version range.

Pure: no asyncio, no sockets, no clock. `net.client` and `net.server` drive it.

Every frame is a 4-byte big-endian body length followed by one msgpack value (packed with
`use_bin_type=True`, unpacked with `raw=False`, so bytes stay bytes and str stays str). The value
is always a list whose first element is the message type:

    handshake (once per connection)
      C->S  [HELLO, "dsrpc", offer, client_node_id, client_nonce]
            offer: [min, max], the protocol versions the client speaks; a bare int v means exactly v (the
            version 1 release sent 1 and its servers accepted nothing else)
      the server picks the highest version both speak (FATAL "version" when there is none), then:
        on a TLS connection, version >= 2: the certificates already authenticated both ends
      S->C  [READY, server_node_id, version]
        otherwise, a challenge-response over the cluster secret:
      S->C  [CHALLENGE, server_node_id, server_nonce]            (version 1)
            [CHALLENGE, server_node_id, server_nonce, version]   (version >= 2)
      C->S  [AUTH, client_proof]
      S->C  [WELCOME, server_proof]              (or FATAL "auth" and close)
    then, multiplexed by request id (an int chosen by the client, unique per connection)
      C->S  [REQ, rid, method, payload]
      S->C  [OK, rid, result]  |  [ERR, rid, code, message]
    either side, then close:
      [FATAL, code, message]

On TLS connections (mutual TLS with the cluster CA, `dynamostore.security.tls`) each side also checks that
the node id the other claims is the one its certificate names; the frames after the handshake are
encrypted and integrity-protected by TLS. On plaintext connections (the loopback quick start) only the
handshake is authenticated: proofs are HMAC-SHA256(secret, label | client_nonce | server_nonce | client_id |
server_id) with distinct labels for the two directions, so neither proof can be replayed or reflected as
the other and the secret never crosses the wire; the client proves first, so a client with the wrong secret
is refused by the server (which logs it) instead of giving up silently on its own side.

Versions: 1 is the release before version ranges (exact match, always the HMAC handshake). 2 adds the
range, the version in CHALLENGE, and READY on TLS. A node speaking 1..2 talks to a version-1 node: it
answers that node's bare `1`, and when a version-1 server refuses its range it reconnects offering `1`
(net.client). Rolling upgrades thus run old and new nodes side by side; a node can be held at older
versions with DYNAMOSTORE_RPC_VERSION_MAX (while the rest of a cluster is upgraded, and in tests).
"""

from __future__ import annotations

import hashlib
import hmac
import os
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
READY: Final = 14
REQ: Final = 1
OK: Final = 2
ERR: Final = 3
FATAL: Final = 4

MAGIC: Final = "dsrpc"
VERSION: Final = 2  # the newest protocol version this code speaks
MIN_VERSION: Final = 1  # the oldest it still speaks
NONCE_BYTES: Final = 16
DEFAULT_MAX_FRAME: Final = 64 << 20
PREAUTH_MAX_FRAME: Final = 4096  # before the handshake completes, frames are small: no 64 MiB buffers for strangers

# Connection-level error codes (sent in FATAL frames).
CODE_AUTH: Final = "auth"
CODE_BAD_FRAME: Final = "bad_frame"
CODE_TOO_LARGE: Final = "too_large"
CODE_VERSION: Final = "version"
CODE_SHUTDOWN: Final = "shutdown"
CODE_HANDSHAKE_TIMEOUT: Final = "handshake_timeout"
CODE_BUSY: Final = "busy"

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

    def set_max_frame(self, max_frame: int) -> None:
        """Change the cap (a connection raises it once the peer has authenticated)."""
        self._max = max_frame

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


def supported_versions() -> tuple[int, int]:
    """The protocol versions this process speaks: MIN_VERSION..VERSION, or fewer when the environment holds
    DYNAMOSTORE_RPC_VERSION_MAX (a node kept at the previous version during a rolling upgrade, or in tests)."""
    raw = os.environ.get("DYNAMOSTORE_RPC_VERSION_MAX")
    top = VERSION
    if raw:
        try:
            top = int(raw)
        except ValueError:
            raise ValueError(f"DYNAMOSTORE_RPC_VERSION_MAX must be an integer, not {raw!r}") from None
        if not MIN_VERSION <= top <= VERSION:
            raise ValueError(f"DYNAMOSTORE_RPC_VERSION_MAX must be from {MIN_VERSION} to {VERSION}, not {top}")
    return MIN_VERSION, top


def offer(versions: tuple[int, int], legacy: bool = False) -> int | list[int]:
    """What a HELLO offers: the range, or the bare 1 that version-1 servers accept (`legacy`, or a node
    that speaks nothing newer)."""
    lo, hi = versions
    if legacy or hi == 1:
        return 1
    return [lo, hi]


def choose_version(offered: Any, versions: tuple[int, int]) -> int | None:
    """The version a server speaks with a client that offered `offered`, or None when they share none."""
    lo, hi = versions
    if type(offered) is int:
        return offered if lo <= offered <= hi else None
    if type(offered) is not list or len(offered) != 2 or not all(type(v) is int for v in offered):
        return None
    if hi == 1:
        return None  # as the version-1 release did: it knew no ranges (its clients then offer a bare 1)
    best = min(offered[1], hi)
    return best if best >= max(offered[0], lo) else None



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
