"""What a node builds from its `[security]` and `[listeners]` settings, in one place: the TLS contexts of its
two listeners and of its connections to peers, who a peer certificate names, the access policy of its HTTP
routes, and the refusal to expose an unprotected node.

Secure by default, as CockroachDB is: a node whose HTTP or RPC listener is on anything but a loopback address
refuses to start unless TLS and client tokens are both on, or the operator said `insecure` (the cluster
file's `[security] insecure = true`, or `dynamostore node --insecure`). Plain loopback without either stays
the quick start (`./dev.sh cluster`).
"""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dynamostore.config import ConfigError, NodeConfig
from dynamostore.security import tls
from dynamostore.security.authz import Policy
from dynamostore.security.tls import TlsError
from dynamostore.security.tokens import TokenError, bootstrap_record
from ring.tokens import ApiToken


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps a listener on this machine (127.0.0.0/8, ::1, localhost)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


@dataclass(frozen=True)
class CertPaths:
    ca: Path
    cert: Path
    key: Path


def cert_paths(cfg: NodeConfig) -> CertPaths:
    """Where this node's certificate, key and the cluster CA are: `[security]` files, or in `certs_dir`."""
    sec = cfg.file.security
    base = Path(sec.certs_dir)
    if not base.is_absolute():
        base = cfg.config_dir / base

    def at(given: str, default: str) -> Path:
        p = Path((given or default).replace("{id}", cfg.node_id))
        return p if p.is_absolute() else (base if not given else cfg.config_dir) / p

    return CertPaths(at(sec.ca_file, "ca.crt"), at(sec.cert_file, "{id}.crt"), at(sec.key_file, "{id}.key"))


class NodeSecurity:
    """The security of one node; `from_config` refuses what is not safe (ConfigError, with what to do)."""

    def __init__(self, cfg: NodeConfig) -> None:
        sec = cfg.file.security
        self.cluster = cfg.cluster.name
        self.tls = sec.tls
        self.auth = sec.auth
        self.listeners = cfg.file.listeners
        self.policy = Policy(sec.status_access, sec.metrics_access)
        self.http_ssl: ssl.SSLContext | None = None
        self.peer_server_ssl: ssl.SSLContext | None = None
        self.peer_client_ssl: ssl.SSLContext | None = None
        self.bootstrap_token: ApiToken | None = None
        if sec.bootstrap_token_sha256:
            try:
                self.bootstrap_token = bootstrap_record(sec.bootstrap_token_sha256)
            except TokenError as exc:
                raise ConfigError(f"[security] {exc}") from exc
        _refuse_exposed(cfg)
        if sec.tls:
            paths = cert_paths(cfg)
            try:
                self.http_ssl = tls.https_server_context(paths.cert, paths.key)
                self.peer_server_ssl = tls.peer_server_context(paths.cert, paths.key, paths.ca)
                self.peer_client_ssl = tls.peer_client_context(paths.cert, paths.key, paths.ca)
            except TlsError as exc:
                raise ConfigError(f"node {cfg.node_id}: {exc}") from exc
            self._check_own_certificate(paths, cfg.node_id)

    def _check_own_certificate(self, paths: CertPaths, node_id: str) -> None:
        """A node started with another node's certificate would be refused by every peer: say so now."""
        from dynamostore.security.certs import CertError, cluster_of, load_cert, node_of  # only with TLS on

        try:
            cert = load_cert(paths.cert)
        except CertError as exc:
            raise ConfigError(str(exc)) from exc
        named = node_of(cert)
        if named != node_id:
            raise ConfigError(f"{paths.cert} is not a node certificate for {node_id!r} (it names {named!r})")
        if cluster_of(cert) != self.cluster:
            raise ConfigError(f"{paths.cert} belongs to cluster {cluster_of(cert)!r}, this is {self.cluster!r} "
                              "([cluster] name)")

    def identify(self, peercert: Any) -> str | None:
        """The node id a verified peer certificate names, if it is a node of this cluster."""
        return tls.node_identity(peercert, self.cluster)

    def rpc_server_options(self) -> dict[str, Any]:
        return {"ssl": self.peer_server_ssl, "identify": self.identify if self.tls else None,
                "handshake_timeout": self.listeners.rpc_handshake_timeout_s,
                "max_connections": self.listeners.max_rpc_connections}

    def rpc_client_options(self) -> dict[str, Any]:
        return {"ssl": self.peer_client_ssl, "identify": self.identify if self.tls else None}


def _refuse_exposed(cfg: NodeConfig) -> None:
    sec = cfg.file.security
    if (sec.tls and sec.auth) or sec.insecure or cfg.insecure:
        return
    me = cfg.me
    exposed = [f"{what} {host}" for what, host in (("http_host", me.http_host), ("rpc_host", me.rpc_host))
               if not is_loopback(host)]
    if exposed:
        missing = " and ".join(n for n, on in (("TLS", sec.tls), ("client tokens", sec.auth)) if not on)
        raise ConfigError(
            f"node {cfg.node_id} would listen on {', '.join(exposed)} without {missing}: anyone who can reach it "
            "could read and change every key. Set [security] tls = true and auth = true in the cluster file "
            "(README: 'Deploying on several machines'), or, to accept the risk, [security] insecure = true or "
            "`dynamostore node --insecure`."
        )
