"""The X-Context token: an opaque, tamper-evident encoding of a causal context (a version vector).

The token is `base64url(msgpack(clock)) "." base64url(mac)`, the MAC a keyed BLAKE2b-128 (a MAC by design,
faster than HMAC-SHA256 on every request) with a key derived from the cluster secret, over the key name and
the clock. Binding the key name means
a context read from one key cannot be replayed on another; any bit flip fails verification.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

import msgpack

from dynamostore.kv.versioning import Clock, packb

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

    def encode(self, key: bytes, clock: Clock) -> str:
        body = packb(sorted(clock.items()))
        return f"{_b64(body)}.{_b64(self._mac(key, body))}"

    def decode(self, key: bytes, token: str) -> dict[str, int]:
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
            items = msgpack.unpackb(body, raw=False)
            return {str(node): int(counter) for node, counter in items}
        except (ValueError, TypeError, msgpack.UnpackException) as malformed:  # pragma: no cover - MAC makes this unreachable
            raise InvalidContext("X-Context body is malformed") from malformed
