"""`ssl.SSLContext`s for a node's listeners and its connections to peers, and who a peer's certificate names.

- Between nodes, mutual TLS 1.3: each side presents its node certificate and accepts only certificates
  signed by the cluster's CA (the system's CAs are not loaded: a certificate from any public CA proves
  nothing about membership of this cluster). The peer's identity is the node id in the certificate's
  subject (`node_identity`), which the RPC handshake then checks against the id the peer claims: host
  names are not checked between nodes (a node is known by its id, as etcd's `--peer-cert-allowed-cn`).
- On the client port, HTTPS with TLS 1.2 or later (curl, browsers, any HTTP library), presenting the node
  certificate; clients authenticate with tokens, not certificates.
- For clients (the CLI, tests, benchmarks): trust the cluster's CA and check the host name as usual.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from dynamostore.security.certs import NODE_OU


class TlsError(Exception):
    """A certificate, key or CA file cannot be loaded into a TLS context."""


def _load_chain(ctx: ssl.SSLContext, cert: Path, key: Path) -> None:
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except FileNotFoundError as exc:
        raise TlsError(f"certificate or key not found: {cert}, {key} (make them with `dynamostore certs`)") from exc
    except (ssl.SSLError, OSError) as exc:
        raise TlsError(f"cannot load the certificate {cert} with its key {key}: {exc}") from exc


def _load_ca(ctx: ssl.SSLContext, ca: Path) -> None:
    try:
        ctx.load_verify_locations(cafile=str(ca))
    except FileNotFoundError as exc:
        raise TlsError(f"CA certificate not found: {ca}") from exc
    except (ssl.SSLError, OSError) as exc:
        raise TlsError(f"cannot load the CA certificate {ca}: {exc}") from exc


def peer_server_context(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    """The RPC listener: TLS 1.3, a client certificate from the cluster CA required."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    _load_chain(ctx, cert, key)
    _load_ca(ctx, ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def peer_client_context(cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    """Connections to peers: TLS 1.3, our certificate presented, theirs verified against the cluster CA.
    Host names are not checked: the node id in the certificate is (see the module's docstring)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    _load_chain(ctx, cert, key)
    _load_ca(ctx, ca)
    return ctx


def https_server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """The client port: HTTPS, TLS 1.2 or later, no client certificate asked for (clients send tokens)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(ctx, cert, key)
    return ctx


def client_context(ca: Path | None) -> ssl.SSLContext:
    """For a client of the HTTPS port: trust `ca` (the cluster's; None: the system's), check host names."""
    ctx = ssl.create_default_context()
    if ca is not None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # the cluster CA only, not the system's as well
        _load_ca(ctx, ca)
    return ctx


def _subject(cert: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for rdn in cert.get("subject", ()):
        for name, value in rdn:
            out.setdefault(name, value)
    return out


def node_identity(peercert: dict[str, Any] | None, cluster: str) -> str | None:
    """The node id a verified peer certificate names (`ssl.SSLObject.getpeercert()`), or None when it is not
    a node certificate of `cluster` (no certificate, another cluster's, or not issued to a node)."""
    if not peercert:
        return None
    subject = _subject(peercert)
    if subject.get("organizationalUnitName") != NODE_OU or subject.get("organizationName") != cluster:
        return None
    return subject.get("commonName") or None
