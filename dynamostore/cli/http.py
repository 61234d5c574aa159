"""The small HTTP helpers of the operator commands (admin, status, token, kv): TLS and the API token.

Credentials come from the command's `--ca` / `--token-file` options or the environment: DYNAMOSTORE_CA (the
cluster CA, to verify an https:// node), DYNAMOSTORE_TOKEN_FILE (a file holding the token) or
DYNAMOSTORE_TOKEN (the token itself). The token is sent as `Authorization: Bearer <token>`."""

from __future__ import annotations

import argparse
import http.client
import json
import os
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class CredentialsError(OSError):
    """A token file or CA that cannot be read (an OSError: the commands report it like an unreachable node)."""


class Refused(OSError):
    """The node answered, with an error status (401, 403, ...): `str()` is the status and the node's reason."""

    def __init__(self, url: str, status: int, reason: str) -> None:
        super().__init__(f"{url} answered {status}: {reason}")
        self.status = status


@dataclass(frozen=True)
class Credentials:
    token: str | None = None
    ca: Path | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace | None = None) -> Credentials:
        """The command's --token-file and --ca, else the environment's."""
        token_file = getattr(args, "token_file", None) or os.environ.get("DYNAMOSTORE_TOKEN_FILE")
        ca = getattr(args, "ca", None) or os.environ.get("DYNAMOSTORE_CA")
        token = os.environ.get("DYNAMOSTORE_TOKEN") or None
        if token_file:
            try:
                token = Path(token_file).read_text().strip()
            except OSError as exc:
                raise CredentialsError(f"cannot read the token file {token_file}: {exc.strerror or exc}") from exc
        return cls(token, Path(ca) if ca else None)

    def headers(self, headers: dict[str, str]) -> dict[str, str]:
        return {**headers, "Authorization": f"Bearer {self.token}"} if self.token else headers

    def ssl_context(self) -> ssl.SSLContext | None:
        if self.ca is None:
            return None
        from dynamostore.security.tls import TlsError, client_context

        try:
            return client_context(self.ca)
        except TlsError as exc:
            raise CredentialsError(str(exc)) from exc


def request(method: str, url: str, body: bytes | None, headers: dict[str, str],
            creds: Credentials | None = None) -> tuple[int, dict[str, str], bytes]:
    creds = creds or Credentials.from_args()
    req = urllib.request.Request(url, data=body, method=method, headers=creds.headers(headers))
    try:
        with urllib.request.urlopen(req, timeout=30, context=creds.ssl_context()) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()
    except urllib.error.URLError as e:
        if isinstance(e.reason, ssl.SSLCertVerificationError):
            raise CredentialsError(f"{url}: the node's certificate is not trusted ({e.reason.verify_message}); give "
                                   "the cluster's CA with --ca or DYNAMOSTORE_CA") from e
        raise
    except http.client.RemoteDisconnected as e:
        hint = " (a node with TLS on needs https://)" if url.startswith("http://") else ""
        raise OSError(f"{url}: the node closed the connection without answering{hint}") from e


def get_json(url: str, creds: Credentials | None = None) -> dict[str, Any]:
    status, _, raw = request("GET", url, None, {}, creds)
    if status != 200:
        try:
            reason = json.loads(raw).get("reason", "")
        except (ValueError, AttributeError):
            reason = raw[:200].decode(errors="replace")
        raise Refused(url, status, reason)
    doc: dict[str, Any] = json.loads(raw)
    return doc
