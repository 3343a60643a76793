"""Development PKI for gateways: a local root CA, the broker's server cert and one cert per gateway.

The local Mosquitto broker authenticates gateways exactly as AWS IoT Core does: mutual TLS with a
client certificate whose common name is the gateway id. This module creates and maintains that
material under one directory (``certs/dev`` by default, never committed):

    ca.crt ca.key ca.crl server.crt server.key index.json clients/<gateway>.crt|.key

``index.json`` remembers every serial ever issued and revoked, so a revoked serial stays on the CRL
even after its files are overwritten. Every write refreshes the CRL, so it never expires silently.
Keys are unencrypted PKCS#8 PEM (the broker and agents read them unattended), written 0600 and never
world-readable, not even briefly; certificates and the CRL are 0644; directories 0700.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import ipaddress
import json
import os
import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meterlink_wire import vocab

__all__ = [
    "CA_COMMON_NAME",
    "CRL_VALIDITY",
    "GATEWAY_ID_PATTERN",
    "SERVER_COMMON_NAME",
    "CertInfo",
    "PkiError",
    "PkiLayout",
    "init_pki",
    "issue_client",
    "list_certs",
    "refresh_crl",
    "revoke",
]

CA_COMMON_NAME = "MeterLink Dev Root CA"
SERVER_COMMON_NAME = "localhost"
# AWS IoT thing-name characters; no '/', '+' or '#', so the id is safe inside an MQTT topic and as
# Mosquitto's %u ACL substitution. At most 64 characters, not IoT's 128: the id is the certificate's
# common name, and X.509 caps a CN at 64 (RFC 5280 ub-common-name).
GATEWAY_ID_PATTERN = re.compile(vocab.GATEWAY_ID_PATTERN)
# Long enough that a forgotten refresh does not break a dev setup, short enough that a stale CRL
# is noticed; every write operation re-signs it anyway.
CRL_VALIDITY = dt.timedelta(days=30)
# Backdate notBefore/lastUpdate so a peer whose clock is slightly behind still accepts them.
_CLOCK_SKEW = dt.timedelta(minutes=5)
_INDEX_VERSION = 1
_KEY_MODE = 0o600
_PUBLIC_MODE = 0o644
_DIR_MODE = 0o700

CertKind = Literal["ca", "server", "client"]


class PkiError(Exception):
    """A PKI operation failed; ``str(err)`` is a one-line message fit to show the user.

    ``path`` names the file involved and ``name`` the gateway id, when there is one.
    """

    def __init__(self, message: str, *, path: Path | None = None, name: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.name = name


@dataclass(frozen=True)
class PkiLayout:
    """Where each file of a PKI rooted at ``root`` lives; computes paths, touches nothing."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        """The root CA certificate (PEM), the trust anchor for broker and gateways."""
        return self.root / "ca.crt"

    @property
    def ca_key(self) -> Path:
        """The root CA private key (PKCS#8 PEM, 0600)."""
        return self.root / "ca.key"

    @property
    def crl(self) -> Path:
        """The certificate revocation list signed by the CA (PEM)."""
        return self.root / "ca.crl"

    @property
    def server_cert(self) -> Path:
        """The broker's certificate for ``localhost`` / ``127.0.0.1``."""
        return self.root / "server.crt"

    @property
    def server_key(self) -> Path:
        """The broker's private key (PKCS#8 PEM, 0600)."""
        return self.root / "server.key"

    @property
    def index(self) -> Path:
        """The record of issued and revoked serials (JSON)."""
        return self.root / "index.json"

    @property
    def clients_dir(self) -> Path:
        """The directory holding one cert and key per gateway."""
        return self.root / "clients"

    @property
    def lock(self) -> Path:
        """The lock file that serialises concurrent writers."""
        return self.root / ".lock"

    def client_cert(self, name: str) -> Path:
        """Return the certificate path of gateway ``name``."""
        return self.clients_dir / f"{name}.crt"

    def client_key(self, name: str) -> Path:
        """Return the private key path of gateway ``name``."""
        return self.clients_dir / f"{name}.key"

    def core_files(self) -> tuple[Path, ...]:
        """Return the files that together make a complete PKI."""
        return (
            self.ca_cert,
            self.ca_key,
            self.crl,
            self.server_cert,
            self.server_key,
            self.index,
        )


@dataclass(frozen=True)
class CertInfo:
    """One certificate as ``meterlink certs list`` shows it."""

    name: str
    kind: CertKind
    serial: int
    not_before: dt.datetime
    not_after: dt.datetime
    revoked: bool
    # Lower-case hex SHA-256 of the DER certificate; AWS IoT uses this value as the certificate id.
    fingerprint_sha256: str


@dataclass(frozen=True)
class _Revocation:
    serial: int
    name: str
    revoked_at: dt.datetime
    reason: x509.ReasonFlags


@dataclass(frozen=True)
class _ClientRecord:
    serial: int
    not_before: dt.datetime
    not_after: dt.datetime
    fingerprint_sha256: str


@dataclass(frozen=True)
class _Index:
    crl_number: int
    clients: dict[str, _ClientRecord]
    revoked: tuple[_Revocation, ...]

    def is_revoked(self, serial: int) -> bool:
        return any(entry.serial == serial for entry in self.revoked)


# --------------------------------------------------------------------------------------------------
# Public operations
# --------------------------------------------------------------------------------------------------


def init_pki(root: Path, *, ca_days: int = 3650, server_days: int = 825) -> PkiLayout:
    """Create the dev CA, the broker's server cert and an empty CRL under ``root``.

    Idempotent: a complete PKI is returned untouched. A partial one (some core files missing) is a
    ``PkiError`` naming the first missing file, because silently re-creating the CA would orphan
    every gateway certificate it signed.
    """
    _require_positive("ca_days", ca_days)
    _require_positive("server_days", server_days)
    layout = PkiLayout(Path(root))
    present = [path for path in layout.core_files() if path.exists()]
    if present:
        _require_complete(layout)
        return layout

    _make_private_dir(layout.root)
    _make_private_dir(layout.clients_dir)
    with _locked(layout):
        if any(path.exists() for path in layout.core_files()):
            # Another process initialised it while we waited for the lock.
            _require_complete(layout)
            return layout
        now = _now()
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = _build_ca_cert(ca_key, now, ca_days)
        server_key = ec.generate_private_key(ec.SECP256R1())
        server_cert = _build_server_cert(server_key, ca_key, ca_cert, now=now, days=server_days)
        index = _Index(crl_number=0, clients={}, revoked=())

        # The CA key goes last: its presence is what makes the PKI "complete" to the check above,
        # so an interrupted init is reported as partial instead of half-used.
        _write_private_key(layout.server_key, server_key)
        _write_public(layout.server_cert, _cert_pem(server_cert))
        _write_public(layout.ca_cert, _cert_pem(ca_cert))
        _commit(layout, index, ca_key, ca_cert)
        _write_private_key(layout.ca_key, ca_key)
    return layout


def issue_client(
    root: Path, name: str, *, days: int = 365, overwrite: bool = False
) -> tuple[Path, Path]:
    """Issue a client certificate and key for gateway ``name``; return ``(cert, key)`` paths.

    The common name is the gateway id: Mosquitto's ``use_identity_as_username`` turns it into the
    MQTT username and AWS IoT matches it to the thing of the same name. A revoked gateway can be
    issued again directly; replacing a valid certificate needs ``overwrite=True``, and puts the old
    one on the CRL with reason ``superseded`` so a leftover copy of the old key stops working.
    """
    _validate_name(name)
    _require_positive("days", days)
    layout = _open(root)
    with _locked(layout):
        ca_key, ca_cert = _load_ca(layout)
        index = _read_index(layout)
        cert_path, key_path = layout.client_cert(name), layout.client_key(name)
        previous = index.clients.get(name)
        if previous is not None:
            # A revoked gateway may be issued again; a valid one needs an explicit overwrite.
            in_use = not index.is_revoked(previous.serial)
        else:
            # Files the index does not know about: refuse to clobber them silently.
            in_use = cert_path.exists() or key_path.exists()
        if in_use and not overwrite:
            raise PkiError(
                f"gateway {name!r} is already issued; revoke it first or pass overwrite",
                path=cert_path,
                name=name,
            )

        now = _now()
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _build_client_cert(name, key, ca_key, ca_cert, now=now, days=days)
        revoked = index.revoked
        if previous is not None and not index.is_revoked(previous.serial):
            revoked = (
                *revoked,
                _Revocation(previous.serial, name, now, x509.ReasonFlags.superseded),
            )
        clients = dict(index.clients)
        clients[name] = _ClientRecord(
            serial=cert.serial_number,
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            fingerprint_sha256=_fingerprint(cert),
        )
        index = _Index(crl_number=index.crl_number, clients=clients, revoked=revoked)

        # Record the serial before the files exist: a cert on disk is then always revocable by
        # name, even if this process dies half-way.
        _make_private_dir(layout.clients_dir)
        _commit(layout, index, ca_key, ca_cert)
        _write_private_key(key_path, key)
        _write_public(cert_path, _cert_pem(cert))
    return cert_path, key_path


def revoke(root: Path, name: str) -> CertInfo:
    """Put the current certificate of gateway ``name`` on the CRL and rewrite ``ca.crl``.

    Works from the index, so a gateway whose files were lost can still be revoked. The broker only
    sees the new CRL after it reloads (Mosquitto: SIGHUP).
    """
    _validate_name(name)
    layout = _open(root)
    with _locked(layout):
        ca_key, ca_cert = _load_ca(layout)
        index = _read_index(layout)
        record = index.clients.get(name)
        if record is None:
            raise PkiError(f"no certificate issued for gateway {name!r}", name=name)
        if index.is_revoked(record.serial):
            raise PkiError(f"gateway {name!r} is already revoked", name=name)
        revocation = _Revocation(record.serial, name, _now(), x509.ReasonFlags.unspecified)
        index = _Index(
            crl_number=index.crl_number,
            clients=index.clients,
            revoked=(*index.revoked, revocation),
        )
        _commit(layout, index, ca_key, ca_cert)
    return _client_info(name, record, revoked=True)


def refresh_crl(root: Path) -> Path:
    """Re-sign ``ca.crl`` with a new CRL number and a ``nextUpdate`` ``CRL_VALIDITY`` from now.

    Call it before starting a broker that will run for long; every write operation does it too.
    Returns the CRL path.
    """
    layout = _open(root)
    with _locked(layout):
        ca_key, ca_cert = _load_ca(layout)
        _commit(layout, _read_index(layout), ca_key, ca_cert)
    return layout.crl


def list_certs(root: Path) -> list[CertInfo]:
    """Return the CA, the server cert, then every gateway cert sorted by name.

    The ``revoked`` flags come from the CRL on disk, i.e. what a broker loading it will enforce.
    """
    layout = _open(root)
    ca_cert = _load_cert(layout.ca_cert)
    server_cert = _load_cert(layout.server_cert)
    crl = _load_crl(layout.crl)
    ca_public = ca_cert.public_key()
    if not (isinstance(ca_public, ec.EllipticCurvePublicKey) and crl.is_signature_valid(ca_public)):
        raise PkiError(f"{layout.crl} is not signed by {layout.ca_cert}", path=layout.crl)
    revoked_serials = {entry.serial_number for entry in crl}
    index = _read_index(layout)

    infos = [
        _cert_info(ca_cert, "ca", revoked_serials),
        _cert_info(server_cert, "server", revoked_serials),
    ]
    for name in sorted(index.clients):
        record = index.clients[name]
        infos.append(_client_info(name, record, revoked=record.serial in revoked_serials))
    return infos


# --------------------------------------------------------------------------------------------------
# Certificate construction
# --------------------------------------------------------------------------------------------------


def _build_ca_cert(
    key: ec.EllipticCurvePrivateKey, now: dt.datetime, days: int
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_COMMON_NAME)])
    public = key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )


def _build_leaf(
    common_name: str,
    key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    *,
    now: dt.datetime,
    days: int,
    usage: x509.ObjectIdentifier,
) -> x509.CertificateBuilder:
    public = key.public_key()
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    not_after = min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
    )


def _build_server_cert(
    key: ec.EllipticCurvePrivateKey,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    *,
    now: dt.datetime,
    days: int,
) -> x509.Certificate:
    builder = _build_leaf(
        SERVER_COMMON_NAME, key, ca_cert, now=now, days=days, usage=ExtendedKeyUsageOID.SERVER_AUTH
    ).add_extension(
        x509.SubjectAlternativeName(
            [
                x509.DNSName("localhost"),
                x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
            ]
        ),
        critical=False,
    )
    return builder.sign(ca_key, hashes.SHA256())


def _build_client_cert(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    *,
    now: dt.datetime,
    days: int,
) -> x509.Certificate:
    builder = _build_leaf(
        name, key, ca_cert, now=now, days=days, usage=ExtendedKeyUsageOID.CLIENT_AUTH
    )
    return builder.sign(ca_key, hashes.SHA256())


def _commit(
    layout: PkiLayout,
    index: _Index,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
) -> None:
    """Persist ``index``, then publish a freshly signed CRL derived from it.

    The index goes first because it is the record the CRL is rebuilt from: if we die in between,
    the next write or ``refresh_crl`` re-creates the CRL with nothing lost. The other order could
    drop a revocation for good.
    """
    index = _Index(crl_number=index.crl_number + 1, clients=index.clients, revoked=index.revoked)
    _write_index(layout, index)
    _write_public(layout.crl, _sign_crl(index, ca_key, ca_cert))


def _sign_crl(
    index: _Index, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate
) -> bytes:
    """Return a PEM CRL listing every serial the index records as revoked."""
    now = _now()
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - _CLOCK_SKEW)
        .next_update(now + CRL_VALIDITY)
        .add_extension(x509.CRLNumber(index.crl_number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
    )
    for entry in sorted(index.revoked, key=lambda item: item.revoked_at):
        revoked = (
            x509.RevokedCertificateBuilder()
            .serial_number(entry.serial)
            .revocation_date(entry.revoked_at)
            .add_extension(x509.CRLReason(entry.reason), critical=False)
            .build()
        )
        builder = builder.add_revoked_certificate(revoked)
    return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


# --------------------------------------------------------------------------------------------------
# Loading and validation
# --------------------------------------------------------------------------------------------------


def _validate_name(name: str) -> None:
    if not isinstance(name, str) or GATEWAY_ID_PATTERN.fullmatch(name) is None:
        raise PkiError(
            f"invalid gateway id {name!r}: use 1-64 of A-Z a-z 0-9 _ : - "
            "starting with a letter or digit",
            name=str(name),
        )


def _require_positive(what: str, value: int) -> None:
    if value <= 0:
        raise PkiError(f"{what} must be a positive number of days, got {value}")


def _require_complete(layout: PkiLayout) -> None:
    for path in layout.core_files():
        if not path.exists():
            raise PkiError(
                f"incomplete PKI in {layout.root}: {path.name} is missing; "
                f"restore it, or remove {layout.root} and run init again",
                path=path,
            )


def _open(root: Path) -> PkiLayout:
    layout = PkiLayout(Path(root))
    if not any(path.exists() for path in layout.core_files()):
        raise PkiError(f"no PKI in {layout.root}; run init first", path=layout.root)
    _require_complete(layout)
    return layout


def _load_ca(layout: PkiLayout) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    cert = _load_cert(layout.ca_cert)
    key = _load_key(layout.ca_key)
    if key.public_key() != cert.public_key():
        raise PkiError(f"{layout.ca_key} does not belong to {layout.ca_cert}", path=layout.ca_key)
    return key, cert


_Pem = TypeVar("_Pem")


def _read_pem(path: Path, parse: Callable[[bytes], _Pem], what: str) -> _Pem:
    """``parse`` of the file's bytes; a PkiError naming the file if unreadable or not ``what``."""
    try:
        return parse(path.read_bytes())
    except OSError as exc:
        raise PkiError(f"cannot read {path}: {exc.strerror}", path=path) from exc
    except (ValueError, TypeError) as exc:
        raise PkiError(f"{path} is not {what}", path=path) from exc


def _load_cert(path: Path) -> x509.Certificate:
    return _read_pem(path, x509.load_pem_x509_certificate, "a PEM certificate")


def _load_crl(path: Path) -> x509.CertificateRevocationList:
    return _read_pem(path, x509.load_pem_x509_crl, "a PEM CRL")


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = _read_pem(
        path,
        lambda data: serialization.load_pem_private_key(data, password=None),
        "an unencrypted PEM private key",
    )
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{path} is not an EC private key", path=path)
    return key


def _read_index(layout: PkiLayout) -> _Index:
    path = layout.index
    try:
        raw: Any = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PkiError(f"cannot read {path}: {exc.strerror}", path=path) from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PkiError(f"{path} is not valid JSON: {exc}", path=path) from exc
    try:
        if raw["version"] != _INDEX_VERSION:
            raise PkiError(f"{path}: unsupported index version {raw['version']!r}", path=path)
        clients = {
            str(name): _ClientRecord(
                serial=int(entry["serial"], 16),
                not_before=dt.datetime.fromisoformat(entry["not_before"]),
                not_after=dt.datetime.fromisoformat(entry["not_after"]),
                fingerprint_sha256=str(entry["fingerprint_sha256"]),
            )
            for name, entry in raw["clients"].items()
        }
        revoked = tuple(
            _Revocation(
                serial=int(entry["serial"], 16),
                name=str(entry["name"]),
                revoked_at=dt.datetime.fromisoformat(entry["revoked_at"]),
                reason=x509.ReasonFlags(entry["reason"]),
            )
            for entry in raw["revoked"]
        )
        return _Index(crl_number=int(raw["crl_number"]), clients=clients, revoked=revoked)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise PkiError(f"{path} is malformed: {exc!r}", path=path) from exc


def _index_json(index: _Index) -> bytes:
    document = {
        "version": _INDEX_VERSION,
        "crl_number": index.crl_number,
        "clients": {
            name: {
                "serial": f"{record.serial:x}",
                "not_before": record.not_before.isoformat(),
                "not_after": record.not_after.isoformat(),
                "fingerprint_sha256": record.fingerprint_sha256,
            }
            for name, record in sorted(index.clients.items())
        },
        "revoked": [
            {
                "serial": f"{entry.serial:x}",
                "name": entry.name,
                "revoked_at": entry.revoked_at.isoformat(),
                "reason": entry.reason.value,
            }
            for entry in index.revoked
        ],
    }
    return (json.dumps(document, indent=2) + "\n").encode("utf-8")


def _write_index(layout: PkiLayout, index: _Index) -> None:
    _write_public(layout.index, _index_json(index))


def _cert_info(cert: x509.Certificate, kind: CertKind, revoked: set[int]) -> CertInfo:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    name = str(names[0].value) if names else cert.subject.rfc4514_string()
    return CertInfo(
        name=name,
        kind=kind,
        serial=cert.serial_number,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        revoked=cert.serial_number in revoked,
        fingerprint_sha256=_fingerprint(cert),
    )


def _client_info(name: str, record: _ClientRecord, *, revoked: bool) -> CertInfo:
    return CertInfo(
        name=name,
        kind="client",
        serial=record.serial,
        not_before=record.not_before,
        not_after=record.not_after,
        revoked=revoked,
        fingerprint_sha256=record.fingerprint_sha256,
    )


def _fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _now() -> dt.datetime:
    # Whole seconds: X.509 times carry no fractions, and the index should equal the certificate.
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------


def _make_private_dir(path: Path) -> None:
    try:
        path.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        os.chmod(path, _DIR_MODE)  # mkdir's mode is filtered by umask; make it exact.
    except OSError as exc:
        raise PkiError(f"cannot create directory {path}: {exc.strerror}", path=path) from exc


@contextlib.contextmanager
def _locked(layout: PkiLayout) -> Iterator[None]:
    """Serialise writers (two ``meterlink certs`` runs at once) with an advisory file lock."""
    try:
        fd = os.open(layout.lock, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, _KEY_MODE)
    except OSError as exc:
        raise PkiError(f"cannot lock {layout.root}: {exc.strerror}", path=layout.lock) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write_private_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )
    _write_atomic(path, pem, _KEY_MODE)


def _write_public(path: Path, data: bytes) -> None:
    _write_atomic(path, data, _PUBLIC_MODE)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` with ``mode`` via a fresh temp file and ``os.replace``.

    The temp file is created with O_EXCL and its final mode, so a key is never readable by others,
    and readers see either the old file or the new one, never a torn write.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, mode & 0o600)
        try:
            os.fchmod(fd, mode)  # the open mode is filtered by umask; make it exact.
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise PkiError(f"cannot write {path}: {exc.strerror}", path=path) from exc


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
