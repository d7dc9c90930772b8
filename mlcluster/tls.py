"""TLS for a cluster's public endpoint: a self-signed certificate made per
cluster (or one the user gives), its sha256 fingerprint recorded in the
state, and HTTP sessions that trust exactly that certificate.

Pinning: a session verifies the chain with the cluster's certificate as its
only trust anchor (so expiry and the signature are checked; a leaf the user
gives is accepted as its own anchor: VERIFY_X509_PARTIAL_CHAIN) and then the
peer's DER sha256 against the recorded fingerprint (urllib3's
assert_fingerprint). A changed certificate fails the handshake's check with
an SSLError, whatever name it carries. The host name is not what is trusted
(an AWS head's address is known only after the certificate exists): the
fingerprint is. Nothing here turns verification off.
"""
from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import requests
from requests.adapters import HTTPAdapter

from .errors import MlclusterError

VALID_DAYS = 825  # what browsers accept for a leaf; a cluster lives far shorter


@dataclass(frozen=True)
class Certificate:
    cert_path: str  # PEM
    key_path: str   # PEM, mode 0600
    fingerprint: str  # sha256 of the DER form, lowercase hex


def fingerprint_of(cert_pem: bytes) -> str:
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert_pem.decode("ascii"))).hexdigest()


def make_self_signed(directory: Path, cluster: str, hosts: Iterable[str] = ()) -> Certificate:
    """A P-256 key and a self-signed certificate for `cluster` (names: localhost,
    127.0.0.1 and `hosts`), written as tls-cert.pem / tls-key.pem in `directory`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    for host in {"127.0.0.1", *hosts}:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"mlcluster {cluster}"[:64])])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256()))
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "tls-cert.pem", directory / "tls-key.pem"
    _write(cert_path, cert_pem, 0o644)
    _write(key_path, key_pem, 0o600)
    return Certificate(str(cert_path), str(key_path), fingerprint_of(cert_pem))


def given(cert_path: Path, key_path: Path) -> Certificate:
    """A certificate and key the user gives (--tls-cert/--tls-key): checked to load together."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(str(cert_path), str(key_path))
        pem = cert_path.read_bytes()
        fingerprint = fingerprint_of(pem[:pem.index(b"-----END CERTIFICATE-----") + 25])
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise MlclusterError(f"cannot use the TLS certificate {cert_path} with the key {key_path}: {exc}",
                             "give a PEM certificate (its chain after it) and its PEM key") from None
    return Certificate(str(cert_path.resolve()), str(key_path.resolve()), fingerprint)


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


class PinnedAdapter(HTTPAdapter):
    """Trusts exactly one certificate: `cert_path` as the only anchor, and its fingerprint."""

    def __init__(self, cert_path: str, fingerprint: str, **kw):
        context = ssl.create_default_context(cafile=cert_path)
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        context.check_hostname = False  # the fingerprint is checked instead (urllib3 does it after the handshake)
        self.context, self.fingerprint = context, fingerprint
        super().__init__(**kw)

    def init_poolmanager(self, *args, **kw):
        kw.update(ssl_context=self.context, assert_fingerprint=self.fingerprint)
        return super().init_poolmanager(*args, **kw)


def pinned_session(cert_path: str, fingerprint: str) -> requests.Session:
    session = requests.Session()
    session.mount("https://", PinnedAdapter(cert_path, fingerprint))
    return session


def ssl_context(cert_path: str) -> ssl.SSLContext:
    """For clients that are not requests (the bench's asyncio loop): the chain
    against exactly this certificate; callers check the fingerprint with `check_peer`."""
    context = ssl.create_default_context(cafile=cert_path)
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    context.check_hostname = False
    return context


def check_peer(der: bytes, fingerprint: str) -> None:
    if hashlib.sha256(der).hexdigest() != fingerprint:
        raise MlclusterError("the endpoint's TLS certificate is not the cluster's (its fingerprint changed)",
                             "if you replaced it on purpose, run `mlcluster up` again to record the new one")
