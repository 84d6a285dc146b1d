"""A test PKI: a CA that signs the broker's certificate for 127.0.0.1 and stations' client
certificates (cryptography comes with asyncua; callers importorskip it first)."""
from __future__ import annotations

import datetime as dt
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
PEM = serialization.Encoding.PEM


class Pki:
    """A CA in `d`, which signs the broker's certificate for 127.0.0.1 and the stations'."""

    def __init__(self, d, name="adgan test CA") -> None:
        self.d = d
        d.mkdir(exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        ca = self.sign(self.name, self.key, NOW - dt.timedelta(days=1), NOW + dt.timedelta(days=30), ca=True)
        (d / "ca.crt").write_bytes(ca.public_bytes(PEM))
        self.issue("server", NOW + dt.timedelta(days=30), san=True)

    def sign(self, subject, key, start, end, ca=False, san=False):
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(self.name).public_key(key.public_key())
             .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            b = b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                critical=False)
        return b.sign(self.key, hashes.SHA256())

    def issue(self, name: str, end, san=False, write_key=True):
        """`<name>.crt` (and `<name>.key` unless not `write_key`), valid until `end`; the key."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1" if san else name)])
        cert = self.sign(subject, key, NOW - dt.timedelta(days=1), end, san=san)
        if write_key:
            self.write_key(name, key)
        (self.d / f"{name}.crt").write_bytes(cert.public_bytes(PEM))
        return key

    def write_key(self, name, key) -> None:
        (self.d / f"{name}.key").write_bytes(key.private_bytes(PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                                               serialization.NoEncryption()))
