"""The daemon's TLS files, read with `cryptography`: validity, key strength, key match, CA-ness.

Pure functions of the file bytes and a clock, so every verdict can be tested with certificates
made in the test itself.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes, PrivateKeyTypes


class TLSFileError(ValueError):
    """A file that is not what its daemon.json key says it is."""


def load_certificates(data: bytes) -> list[x509.Certificate]:
    """Every certificate of a PEM file (a CA bundle may hold several), or the one of a DER file."""
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except ValueError as exc:
        raise TLSFileError(f"not a certificate: {exc}") from None


def load_private_key(data: bytes) -> PrivateKeyTypes:
    try:
        if b"-----BEGIN" in data:
            return serialization.load_pem_private_key(data, password=None)
        return serialization.load_der_private_key(data, password=None)
    except TypeError:
        # dockerd cannot read a passphrase-protected key either: it would not start with TLS.
        raise TLSFileError("the key is encrypted with a passphrase") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise TLSFileError(f"not a private key: {exc}") from None


@dataclass(frozen=True)
class KeyStrength:
    algorithm: str
    bits: int | None
    ok: bool
    why: str


def key_strength(key: PrivateKeyTypes | CertificatePublicKeyTypes, min_rsa: int, min_ec: int) -> KeyStrength:
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        bits = key.key_size
        return KeyStrength("RSA", bits, bits >= min_rsa, f"RSA {bits} bits (minimum {min_rsa})")
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        bits = key.curve.key_size
        return KeyStrength(f"EC {key.curve.name}", bits, bits >= min_ec, f"EC {key.curve.name}, {bits} bits "
                                                                          f"(minimum {min_ec})")
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey | ed448.Ed448PrivateKey
                  | ed448.Ed448PublicKey):
        return KeyStrength(type(key).__name__.removesuffix("PrivateKey").removesuffix("PublicKey"), None, True,
                           "EdDSA")
    if isinstance(key, dsa.DSAPrivateKey | dsa.DSAPublicKey):
        return KeyStrength("DSA", key.key_size, False, f"DSA {key.key_size} bits: DSA is deprecated for TLS")
    return KeyStrength(type(key).__name__, None, False, f"unsupported key type {type(key).__name__}")


def public_der(key: PrivateKeyTypes | CertificatePublicKeyTypes) -> bytes:
    pub = key.public_key() if hasattr(key, "public_key") else key
    return pub.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def key_matches(cert: x509.Certificate, key: PrivateKeyTypes) -> bool:
    return public_der(cert.public_key()) == public_der(key)


def is_ca(cert: x509.Certificate) -> bool:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return bool(bc.ca)


def issued_by(cert: x509.Certificate, cas: list[x509.Certificate]) -> x509.Certificate | None:
    """The CA of the bundle whose key signed `cert`, if any."""
    for ca in cas:
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return ca
    return None


@dataclass(frozen=True)
class Validity:
    not_before: dt.datetime
    not_after: dt.datetime
    subject: str

    def days_left(self, now: dt.datetime) -> float:
        return (self.not_after - now).total_seconds() / 86400


def validity(cert: x509.Certificate) -> Validity:
    return Validity(cert.not_valid_before_utc, cert.not_valid_after_utc, cert.subject.rfc4514_string())
