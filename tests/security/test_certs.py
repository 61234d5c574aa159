"""The CA and node certificates (security.certs) and the commands that make them (`dynamostore certs`,
`dynamostore token bootstrap`): checked with the stdlib's ssl and with `cryptography`, not by reading
our own code back."""

from __future__ import annotations

import hashlib
import stat
import ssl
from pathlib import Path

import pytest
import tomli_w
from cryptography import x509

from dynamostore.cli.main import main
from dynamostore.security import certs, tls
from dynamostore.security import tokens as tk
from tests.security.conftest import CLUSTER, Pki


def test_node_certificates_name_the_node_and_its_addresses(pki: Pki) -> None:
    cert = certs.load_cert(pki.dir / "n2.crt")
    assert certs.node_of(cert) == "n2" and certs.cluster_of(cert) == CLUSTER
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(n.value) for n in san} == {"127.0.0.1", "localhost"}
    ca = certs.load_cert(pki.ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert certs.node_of(ca) is None
    cert.verify_directly_issued_by(ca)
    with pytest.raises(Exception):
        cert.verify_directly_issued_by(certs.load_cert(pki.foreign / "ca.crt"))


def test_private_keys_are_readable_by_their_owner_only(pki: Pki) -> None:
    for key in (pki.dir / "ca.key", pki.dir / "n1.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((pki.dir / "n1.crt").stat().st_mode) == 0o644


def handshake(client: ssl.SSLContext, server: ssl.SSLContext,
              server_hostname: str | None = None) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """A TLS handshake in memory (ssl.MemoryBIO): both ends' SSLObjects once it is done."""
    bios = [ssl.MemoryBIO() for _ in range(4)]  # client in/out, server in/out
    c = client.wrap_bio(bios[0], bios[1], server_side=False, server_hostname=server_hostname)
    s = server.wrap_bio(bios[2], bios[3], server_side=True)
    done = [False, False]
    for _ in range(10):
        for k, obj in enumerate((c, s)):
            try:
                obj.do_handshake()
                done[k] = True
            except ssl.SSLWantReadError:
                pass
        bios[2].write(bios[1].read())
        bios[0].write(bios[3].read())
        if all(done):
            return c, s
    raise AssertionError("handshake did not finish")


def test_mutual_tls_between_two_nodes_names_each_peer(pki: Pki) -> None:
    """What each end of a node-to-node connection sees: the other's node id, from a verified certificate."""
    c_cert, c_key = pki.cert("n2")
    s_cert, s_key = pki.cert("n1")
    c, s = handshake(tls.peer_client_context(c_cert, c_key, pki.ca), tls.peer_server_context(s_cert, s_key, pki.ca))
    assert tls.node_identity(s.getpeercert(), CLUSTER) == "n2"
    assert tls.node_identity(c.getpeercert(), CLUSTER) == "n1"
    assert tls.node_identity(c.getpeercert(), "other-cluster") is None
    assert c.version() == "TLSv1.3"


def test_a_foreign_certificate_fails_the_handshake(pki: Pki) -> None:
    c_cert, c_key = pki.cert("n2", foreign=True)
    s_cert, s_key = pki.cert("n1")
    with pytest.raises(ssl.SSLError):
        handshake(tls.peer_client_context(c_cert, c_key, pki.ca), tls.peer_server_context(s_cert, s_key, pki.ca))


def test_https_clients_check_the_host_name(pki: Pki) -> None:
    s_cert, s_key = pki.cert("n1")
    server = tls.https_server_context(s_cert, s_key)
    c, _ = handshake(tls.client_context(pki.ca), server, server_hostname="localhost")
    assert c.getpeercert()
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch|doesn't match"):
        handshake(tls.client_context(pki.ca), server, server_hostname="db.example.com")


def test_a_ca_is_not_replaced_by_accident(tmp_path: Path) -> None:
    certs.create_ca(tmp_path, "c")
    with pytest.raises(certs.CertError, match="already holds a CA"):
        certs.create_ca(tmp_path, "c")
    certs.create_ca(tmp_path, "c", force=True)
    with pytest.raises(certs.CertError, match="no CA"):
        certs.issue_node(tmp_path / "empty", "n1", ["127.0.0.1"])
    with pytest.raises(certs.CertError, match="at least one address"):
        certs.issue_node(tmp_path, "n1", ["0.0.0.0"])


def test_certs_cluster_makes_a_certificate_per_member_from_the_cluster_file(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    doc = {"cluster": {"name": "prod", "secret": "0123456789abcdef0123", "members": [
        {"id": f"n{k}", "http_host": f"10.0.0.{k}", "rpc_host": f"10.0.1.{k}", "http_port": 8001, "rpc_port": 9001}
        for k in (1, 2, 3)]}}
    cf = tmp_path / "cluster.toml"
    cf.write_text(tomli_w.dumps(doc))
    assert main(["certs", "cluster", "--config", str(cf), "--host", "db.example.com"]) == 0
    out = tmp_path / "certs"
    for k in (1, 2, 3):
        cert = certs.load_cert(out / f"n{k}.crt")
        names = {str(n.value) for n in cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value}
        assert names == {f"10.0.0.{k}", f"10.0.1.{k}", "db.example.com"} and certs.node_of(cert) == f"n{k}"
    assert certs.cluster_of(certs.load_cert(out / "ca.crt")) == "prod"
    ca_before = (out / "ca.crt").read_bytes()
    assert main(["certs", "cluster", "--config", str(cf)]) == 0  # again: the same CA, fresh node certificates
    assert (out / "ca.crt").read_bytes() == ca_before
    doc["cluster"]["name"] = "renamed"  # type: ignore[index]
    cf.write_text(tomli_w.dumps(doc))
    assert main(["certs", "cluster", "--config", str(cf)]) == 2
    assert "for cluster 'prod'" in capsys.readouterr().err


def test_token_bootstrap_writes_the_token_and_prints_its_hash(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "admin.token"
    assert main(["token", "bootstrap", "--out", str(out)]) == 0
    token = out.read_text().strip()
    assert stat.S_IMODE(out.stat().st_mode) == 0o600 and tk.token_id(token) == tk.BOOTSTRAP_ID
    assert f'bootstrap_token_sha256 = "{hashlib.sha256(token.encode()).hexdigest()}"' in capsys.readouterr().out
    assert main(["token", "bootstrap", "--out", str(out)]) == 2  # never overwrites a token
    assert out.read_text().strip() == token


def test_ttl_parsing() -> None:
    from dynamostore.cli.security import parse_ttl

    assert [parse_ttl(t) for t in ("90", "90s", "15m", "2h", "30d")] == [90, 90, 900, 7200, 30 * 86400]
    with pytest.raises(tk.TokenError):
        parse_ttl("soon")
