"""What a node builds from [security]: the refusal to expose an unprotected node, certificate paths, and
clear errors for missing or wrong certificates. Certificates: security.certs."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from dynamostore.config import ConfigError, NodeConfig, load_node_config
from dynamostore.security import certs
from dynamostore.security.node_security import NodeSecurity, cert_paths, is_loopback
from tests.security.conftest import CLUSTER, Pki


def config(tmp_path: Path, host: str = "127.0.0.1", **security: Any) -> NodeConfig:
    doc = {
        "cluster": {"name": CLUSTER, "secret": "0123456789abcdef0123", "members": [
            {"id": "n1", "http_host": host, "rpc_host": host, "http_port": 8001, "rpc_port": 9001}]},
        "quorum": {"r": 1, "w": 1},
        "security": security,
    }
    path = tmp_path / "cluster.toml"
    path.write_text(tomli_w.dumps(doc))
    return load_node_config(path, "n1")


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.0.0.9", True), ("::1", True),
                                            ("localhost", True), ("0.0.0.0", False), ("10.1.2.3", False),
                                            ("db1.example.com", False), ("::", False)])
def test_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_loopback_without_tls_or_tokens_is_the_quick_start(tmp_path: Path) -> None:
    sec = NodeSecurity(config(tmp_path))
    assert not sec.tls and not sec.auth and sec.http_ssl is None and sec.peer_server_ssl is None


@pytest.mark.parametrize("security", [{}, {"tls": True}, {"auth": True}])
def test_a_non_loopback_listener_needs_tls_and_tokens(tmp_path: Path, pki: Pki, security: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as e:
        NodeSecurity(config(tmp_path, "10.9.8.7", certs_dir=str(pki.dir), **security))
    msg = str(e.value)
    assert "10.9.8.7" in msg and "insecure" in msg and "tls = true" in msg


def test_insecure_allows_it_explicitly(tmp_path: Path) -> None:
    NodeSecurity(config(tmp_path, "0.0.0.0", insecure=True))
    cfg = config(tmp_path, "0.0.0.0").model_copy(update={"insecure": True})  # dynamostore node --insecure
    NodeSecurity(cfg)


def test_tls_and_tokens_on_a_host_address(tmp_path: Path, pki: Pki) -> None:
    sec = NodeSecurity(config(tmp_path, "10.9.8.7", tls=True, auth=True, certs_dir=str(pki.dir)))
    assert isinstance(sec.http_ssl, ssl.SSLContext) and sec.peer_server_ssl.verify_mode == ssl.CERT_REQUIRED  # type: ignore[union-attr]
    assert sec.rpc_server_options()["identify"] is not None


def test_certificate_paths_default_to_certs_dir_next_to_the_cluster_file(tmp_path: Path) -> None:
    p = cert_paths(config(tmp_path))
    assert p == type(p)(tmp_path / "certs" / "ca.crt", tmp_path / "certs" / "n1.crt", tmp_path / "certs" / "n1.key")
    p = cert_paths(config(tmp_path, cert_file="/etc/ds/{id}.pem", key_file="keys/{id}.pem", ca_file="/etc/ds/ca.pem"))
    assert p.cert == Path("/etc/ds/n1.pem") and p.key == tmp_path / "keys" / "n1.pem" and p.ca == Path("/etc/ds/ca.pem")


def test_missing_or_wrong_certificates_are_clear_errors(tmp_path: Path, pki: Pki) -> None:
    with pytest.raises(ConfigError, match="dynamostore certs"):
        NodeSecurity(config(tmp_path, tls=True, certs_dir=str(tmp_path / "nothing")))
    wrong = tmp_path / "wrong"
    certs.create_ca(wrong, CLUSTER)
    certs.issue_node(wrong, "n2", ["127.0.0.1"])
    with pytest.raises(ConfigError, match="not a node certificate for 'n1'"):
        NodeSecurity(config(tmp_path, tls=True, certs_dir=str(wrong), cert_file=str(wrong / "n2.crt"),
                            key_file=str(wrong / "n2.key")))
    other = tmp_path / "other"
    certs.create_ca(other, "another-cluster")
    certs.issue_node(other, "n1", ["127.0.0.1"])
    with pytest.raises(ConfigError, match="belongs to cluster 'another-cluster'"):
        NodeSecurity(config(tmp_path, tls=True, certs_dir=str(other)))


def test_a_bad_bootstrap_hash_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="bootstrap_token_sha256"):
        config(tmp_path, bootstrap_token_sha256="abc")


def test_the_documented_three_host_example_loads_and_is_refused_without_its_certificates() -> None:
    example = Path(__file__).resolve().parents[2] / "config" / "hosts-3.toml"
    cfg = load_node_config(example, "n2")
    assert cfg.me.http_host == "10.0.0.2" and cfg.file.security.tls and cfg.file.security.auth
    assert cert_paths(cfg).cert == example.parent / "certs" / "n2.crt"
    with pytest.raises(ConfigError, match="certificate or key not found"):
        NodeSecurity(cfg)  # TLS on, and no certificates next to the example
