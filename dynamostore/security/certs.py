"""A cluster's certificate authority and the certificates of its nodes, made with `cryptography`.

One CA per cluster (`ca.crt`, `ca.key`): it signs a certificate for every node (`<id>.crt`, `<id>.key`),
which the node presents on both of its ports: to clients on HTTPS, to its peers for mutual TLS. A node
certificate names the node in its subject (CN = node id, O = cluster name, OU = "dynamostore node"), so a
peer's identity comes from the certificate the CA signed, not from what the peer claims; its subject
alternative names list the addresses clients use to reach it (the member's `http_host`, `rpc_host`, and any
more given), so HTTPS clients verify the host name as usual.

Keys are ECDSA P-256: small, and the cheapest handshake among the common choices. Private keys are written
with mode 0600. The CA key signs certificates and nothing else: keep it off the nodes once they have theirs.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NODE_OU = "dynamostore node"
CA_DAYS = 3650
NODE_DAYS = 825  # what browsers accept for a server certificate; renew with `dynamostore certs node`


class CertError(Exception):
    """A certificate or key is missing, unreadable, or not what it should be."""


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _write(path: Path, data: bytes, private: bool) -> None:
    """Write atomically; a private key is never readable by others, not even for a moment."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def create_ca(directory: Path, cluster: str, *, days: int = CA_DAYS, force: bool = False) -> Issued:
    """A new CA for `cluster` in `directory` (ca.crt, ca.key). Refuses to replace an existing one unless
    `force`: every certificate it signed would stop being trusted."""
    issued = Issued(directory / "ca.crt", directory / "ca.key")
    if not force and (issued.cert.exists() or issued.key.exists()):
        raise CertError(f"{directory} already holds a CA (ca.crt/ca.key); remove it first to make a new one")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{cluster} CA"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster)])
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(issued.key, _key_pem(key), private=True)
    _write(issued.cert, cert.public_bytes(serialization.Encoding.PEM), private=False)
    return issued


def load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
        key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise CertError(f"no CA in {directory} (ca.crt and ca.key): create one with `dynamostore certs ca`") from exc
    except ValueError as exc:
        raise CertError(f"the CA in {directory} is not readable: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertError(f"{directory / 'ca.key'} is not an EC key")
    return cert, key


def _san(hosts: Iterable[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    seen: set[str] = set()
    for h in hosts:
        h = h.strip()
        if not h or h in seen or h in ("0.0.0.0", "::"):  # a wildcard bind address is nobody's name
            continue
        seen.add(h)
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            out.append(x509.DNSName(h))
    return out


def _attr(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> str:
    attrs = cert.subject.get_attributes_for_oid(oid)
    return str(attrs[0].value) if attrs else ""


def cluster_of(cert: x509.Certificate) -> str:
    """The cluster a CA or node certificate belongs to (its subject's O)."""
    return _attr(cert, NameOID.ORGANIZATION_NAME)


def node_of(cert: x509.Certificate) -> str | None:
    """The node id a certificate names, when it is a node certificate (OU "dynamostore node")."""
    if _attr(cert, NameOID.ORGANIZATIONAL_UNIT_NAME) != NODE_OU:
        return None
    return _attr(cert, NameOID.COMMON_NAME) or None


def load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise CertError(f"cannot read the certificate {path}: {exc}") from exc


def issue_node(directory: Path, node_id: str, hosts: Iterable[str], *, days: int = NODE_DAYS,
               ca_dir: Path | None = None) -> Issued:
    """A certificate for node `node_id`, signed by the CA in `ca_dir` (default: `directory`), valid for
    `hosts` (IP addresses or DNS names), written to `directory/<id>.crt` and `<id>.key`."""
    ca_cert, ca_key = load_ca(ca_dir or directory)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster_of(ca_cert)),
                         x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, NODE_OU)])
    names = _san(hosts)
    if not names:
        raise CertError(f"node {node_id}: give at least one address or host name it is reached at")
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        # the same certificate serves HTTPS to clients and both ends of mutual TLS between nodes
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    issued = Issued(directory / f"{node_id}.crt", directory / f"{node_id}.key")
    _write(issued.key, _key_pem(key), private=True)
    _write(issued.cert, cert.public_bytes(serialization.Encoding.PEM), private=False)
    return issued


def describe(path: Path) -> dict[str, object]:
    """Subject, names and validity of a certificate file (for `dynamostore certs show`)."""
    cert = load_cert(path)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(n.value) for n in san]
    except x509.ExtensionNotFound:
        names = []
    return {"subject": cert.subject.rfc4514_string(), "issuer": cert.issuer.rfc4514_string(), "names": names,
            "not_before": cert.not_valid_before_utc.isoformat(), "not_after": cert.not_valid_after_utc.isoformat()}
