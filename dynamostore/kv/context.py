"""The X-Context token: an opaque, tamper-evident encoding of a causal context (a version vector).

The token is `base64url(body) "." base64url(mac)`, the MAC a keyed BLAKE2b-128 (a MAC by design,
faster than HMAC-SHA256 on every request) with a key derived from the cluster secret, over the key name and
the clock. Binding the key name means
a context read from one key cannot be replayed on another; any bit flip fails verification.

The body is `msgpack(sorted clock items)` for a plain version vector (what a read answers, and what every
token was before dot clouds), or the byte 0x01 followed by `msgpack([sorted clock items, sorted cloud dots])`
when the context also covers single dots beyond its vector (what a write answers: the request's context plus
the write's own dot, see `versioning.written_context`). A version-vector body always starts with a msgpack
array header, never 0x01, so old tokens decode as before.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

import msgpack

from dynamostore.kv.versioning import Clock, Dot, packb

MAX_TOKEN_CHARS = 16 * 1024


class InvalidContext(ValueError):
    pass


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _b64(raw: bytes) -> str:
    # base64.urlsafe_b64encode, without its Python-level wrappers (a token is encoded on every answer)
    return binascii.b2a_base64(raw, newline=False).translate(_URLSAFE).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class ContextCodec:
    def __init__(self, cluster_secret: bytes) -> None:
        key = hashlib.sha256(b"dynamostore-context\x00" + cluster_secret).digest()
        self._keyed = hashlib.blake2b(key=key, digest_size=16)  # copied per token: cheaper than keying again

    def _mac(self, key: bytes, body: bytes) -> bytes:
        h = self._keyed.copy()
        h.update(len(key).to_bytes(4, "big"))
        h.update(key)
        h.update(body)
        return h.digest()

    def encode(self, key: bytes, clock: Clock, dots: tuple[Dot, ...] = ()) -> str:
        if dots:
            body = b"\x01" + packb([sorted(clock.items()), [list(d) for d in dots]])
        else:
            body = packb(sorted(clock.items()))
        return f"{_b64(body)}.{_b64(self._mac(key, body))}"

    def decode(self, key: bytes, token: str) -> dict[str, int]:
        """The version vector of a token without a dot cloud (a read's); `decode_context` for any token."""
        clock, dots = self.decode_context(key, token)
        if dots:
            raise InvalidContext("X-Context holds single dots: decode it with decode_context")
        return clock

    def decode_context(self, key: bytes, token: str) -> tuple[dict[str, int], tuple[Dot, ...]]:
        """A token's (version vector, sorted dot cloud)."""
        if len(token) > MAX_TOKEN_CHARS:
            raise InvalidContext("X-Context is too long")
        body_text, sep, mac_text = token.strip().partition(".")
        if not sep:
            raise InvalidContext("X-Context is malformed (expected two dot-separated parts)")
        try:
            body, mac = _unb64(body_text), _unb64(mac_text)
        except (ValueError, UnicodeError) as exc:
            raise InvalidContext("X-Context is not valid base64url") from exc
        if not hmac.compare_digest(mac, self._mac(key, body)):
            raise InvalidContext("X-Context failed verification (forged, corrupted, or from another key)")
        try:
            if body[:1] == b"\x01":
                items, cloud = msgpack.unpackb(body[1:], raw=False)
                dots = tuple(sorted({(str(node), int(counter)) for node, counter in cloud}))
            else:
                items, dots = msgpack.unpackb(body, raw=False), ()
            return {str(node): int(counter) for node, counter in items}, dots
        except (ValueError, TypeError, msgpack.UnpackException) as malformed:  # pragma: no cover - MAC makes this unreachable
            raise InvalidContext("X-Context body is malformed") from malformed
