"""The dev PKI: file modes, idempotence, certificate contents, revocation as OpenSSL sees it."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import stat
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store

from meterlink_stack.pki import (
    CertInfo,
    PkiError,
    PkiLayout,
    init_pki,
    issue_client,
    list_certs,
    refresh_crl,
    revoke,
)

OPENSSL = "/usr/bin/openssl"


#: The PKCS#8 PEM header, spelled in parts so secret scanners do not flag this file.
PKCS8_HEADER = b"-----BEGIN " + b"PRIVATE KEY-----"


@pytest.fixture
def pki(tmp_path: Path) -> PkiLayout:
    return init_pki(tmp_path / "certs" / "dev")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def load_crl(path: Path) -> x509.CertificateRevocationList:
    return x509.load_pem_x509_crl(path.read_bytes())


def openssl_verify(
    layout: PkiLayout, cert: Path, *options: str
) -> subprocess.CompletedProcess[str]:
    """`openssl verify` with the CA and its CRL, as Mosquitto checks a client certificate."""
    return subprocess.run(
        [
            OPENSSL,
            "verify",
            "-CAfile",
            str(layout.ca_cert),
            "-crl_check",
            "-CRLfile",
            str(layout.crl),
            *options,
            str(cert),
        ],
        capture_output=True,
        text=True,
        check=False,
    )


def snapshot(root: Path) -> dict[str, tuple[bytes, int, int]]:
    """Every file under root: contents, mode and mtime (ns)."""
    return {
        str(path.relative_to(root)): (path.read_bytes(), mode(path), path.stat().st_mtime_ns)
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture
def open_umask() -> Iterator[None]:
    """Run with umask 0, so only our explicit modes can keep keys private."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


# ------------------------------------------------------------------------------------------------
# init
# ------------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("open_umask")
def test_init_writes_files_with_exact_modes(tmp_path: Path) -> None:
    layout = init_pki(tmp_path / "dev")
    cert, key = issue_client(layout.root, "gw-1")

    assert layout == PkiLayout(tmp_path / "dev")
    assert mode(layout.root) == 0o700
    assert mode(layout.root / "clients") == 0o700
    for private in (layout.ca_key, layout.server_key, key):
        assert mode(private) == 0o600, private
        assert private.read_bytes().startswith(PKCS8_HEADER + b"\n")  # PKCS#8
    for public in (layout.ca_cert, layout.server_cert, layout.crl, cert):
        assert mode(public) == 0o644, public
    assert not list(layout.root.rglob("*.tmp"))


def test_layout_paths() -> None:
    layout = PkiLayout(Path("/x"))
    assert layout.ca_cert == Path("/x/ca.crt")
    assert layout.ca_key == Path("/x/ca.key")
    assert layout.crl == Path("/x/ca.crl")
    assert layout.server_cert == Path("/x/server.crt")
    assert layout.server_key == Path("/x/server.key")
    assert layout.client_cert("gw-1") == Path("/x/clients/gw-1.crt")
    assert layout.client_key("gw-1") == Path("/x/clients/gw-1.key")


def test_init_twice_leaves_everything_byte_identical(pki: PkiLayout) -> None:
    issue_client(pki.root, "gw-1")
    before = snapshot(pki.root)

    again = init_pki(pki.root)

    assert again == pki
    assert snapshot(pki.root) == before


@pytest.mark.parametrize("missing", ["ca.key", "ca.crt", "ca.crl", "server.key", "index.json"])
def test_init_on_partial_pki_names_the_missing_file(pki: PkiLayout, missing: str) -> None:
    (pki.root / missing).unlink()
    before = snapshot(pki.root)

    with pytest.raises(PkiError) as info:
        init_pki(pki.root)

    assert info.value.path == pki.root / missing
    assert missing in str(info.value)
    assert "\n" not in str(info.value)
    assert snapshot(pki.root) == before


def test_ca_is_a_p256_root_with_critical_constraints(pki: PkiLayout) -> None:
    ca = load_cert(pki.ca_cert)

    assert ca.subject == ca.issuer
    assert ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == (
        "MeterLink Dev Root CA"
    )
    public = ca.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert public.curve.name == "secp256r1"
    ca.verify_directly_issued_by(ca)

    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value == x509.BasicConstraints(ca=True, path_length=0)
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign
    assert usage.value.crl_sign
    assert not usage.value.digital_signature
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(public)
    assert ca.not_valid_after_utc - ca.not_valid_before_utc >= dt.timedelta(days=3650)


def test_server_cert_has_localhost_sans_and_server_auth(pki: PkiLayout) -> None:
    server = load_cert(pki.server_cert)
    ca = load_cert(pki.ca_cert)

    assert server.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "localhost"
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.IPv4Address("127.0.0.1")]
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    aki = server.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    server.verify_directly_issued_by(ca)

    # The same check a TLS client (awscrt, paho) makes against 127.0.0.1 and localhost.
    for name in (x509.DNSName("localhost"), x509.IPAddress(ipaddress.IPv4Address("127.0.0.1"))):
        verifier = PolicyBuilder().store(Store([ca])).build_server_verifier(name)
        assert verifier.verify(server, []) == [server, ca]


def test_init_writes_an_empty_fresh_crl_signed_by_the_ca(pki: PkiLayout) -> None:
    crl = load_crl(pki.crl)
    ca = load_cert(pki.ca_cert)

    assert len(crl) == 0
    assert crl.issuer == ca.subject
    public = ca.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert crl.is_signature_valid(public)
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 1
    aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    assert crl.next_update_utc is not None
    remaining = crl.next_update_utc - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=29) < remaining <= dt.timedelta(days=30)


# ------------------------------------------------------------------------------------------------
# issue
# ------------------------------------------------------------------------------------------------


def test_client_cert_identifies_the_gateway_and_chains_to_the_ca(pki: PkiLayout) -> None:
    cert_path, key_path = issue_client(pki.root, "gw-0042", days=30)

    assert (cert_path, key_path) == (pki.client_cert("gw-0042"), pki.client_key("gw-0042"))
    cert = load_cert(cert_path)
    ca = load_cert(pki.ca_cert)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "gw-0042"
    assert cert.issuer == ca.subject
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.digital_signature
    assert not usage.value.key_cert_sign
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert cert.not_valid_after_utc - cert.not_valid_before_utc < dt.timedelta(days=31)

    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert public.curve.name == "secp256r1"
    key = x509_key(key_path)
    assert key.public_key() == public

    # The signature check, written out; raises InvalidSignature if the CA did not sign it.
    ca_public = ca.public_key()
    assert isinstance(ca_public, ec.EllipticCurvePublicKey)
    assert cert.signature_hash_algorithm is not None
    ca_public.verify(
        cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm)
    )
    # Path validation for the TLS-client purpose, as the broker's OpenSSL does it. (cryptography's
    # client verifier insists on a SAN, which neither Mosquitto nor AWS IoT need.)
    as_client = openssl_verify(pki, cert_path, "-purpose", "sslclient")
    assert as_client.returncode == 0, as_client.stdout + as_client.stderr
    as_server = openssl_verify(pki, cert_path, "-purpose", "sslserver")
    assert as_server.returncode != 0
    assert "unsuitable certificate purpose" in as_server.stdout + as_server.stderr


def x509_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


@pytest.mark.parametrize(
    "name",
    [
        "",
        "-gw",
        "_gw",
        "gw/1",
        "gw+1",
        "gw#1",
        "gw 1",
        "gw.1",
        "gw-1\n",
        "../gw",
        "gw\u00e9",
        "g" * 65,
    ],
)
def test_invalid_gateway_ids_are_rejected(pki: PkiLayout, name: str) -> None:
    with pytest.raises(PkiError) as info:
        issue_client(pki.root, name)

    assert info.value.name == name
    assert "invalid gateway id" in str(info.value)
    assert list((pki.root / "clients").iterdir()) == []


@pytest.mark.parametrize("name", ["a", "GW-01", "meter_gw:7", "0", "g" * 64])
def test_valid_gateway_ids_are_accepted(pki: PkiLayout, name: str) -> None:
    cert, _ = issue_client(pki.root, name)
    assert load_cert(cert).subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == name


def test_issuing_an_existing_name_twice_is_rejected(pki: PkiLayout) -> None:
    cert, key = issue_client(pki.root, "gw-1")
    before = (cert.read_bytes(), key.read_bytes(), pki.index.read_bytes())

    with pytest.raises(PkiError) as info:
        issue_client(pki.root, "gw-1")

    assert str(info.value) == (
        "gateway 'gw-1' is already issued; revoke it first or pass overwrite"
    )
    assert info.value.name == "gw-1"
    assert (cert.read_bytes(), key.read_bytes(), pki.index.read_bytes()) == before


def test_a_revoked_gateway_can_be_issued_again_without_overwrite(pki: PkiLayout) -> None:
    first, _ = issue_client(pki.root, "gw-1")
    first_serial = load_cert(first).serial_number
    revoke(pki.root, "gw-1")

    cert, _ = issue_client(pki.root, "gw-1")

    assert load_cert(cert).serial_number != first_serial
    assert [entry.serial_number for entry in load_crl(pki.crl)] == [first_serial]
    assert [(c.name, c.revoked) for c in list_certs(pki.root) if c.kind == "client"] == [
        ("gw-1", False)
    ]


def test_unindexed_files_are_not_clobbered_without_overwrite(pki: PkiLayout) -> None:
    pki.client_key("gw-1").parent.mkdir(exist_ok=True)
    pki.client_key("gw-1").write_bytes(b"someone else's key")

    with pytest.raises(PkiError, match="already issued"):
        issue_client(pki.root, "gw-1")
    assert pki.client_key("gw-1").read_bytes() == b"someone else's key"

    issue_client(pki.root, "gw-1", overwrite=True)
    assert pki.client_key("gw-1").read_bytes().startswith(PKCS8_HEADER)
    assert len(load_crl(pki.crl)) == 0


def test_issue_without_init_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(PkiError) as info:
        issue_client(tmp_path / "nothing", "gw-1")
    assert "run init first" in str(info.value)
    assert not (tmp_path / "nothing").exists()


def test_every_write_refreshes_the_crl(pki: PkiLayout) -> None:
    def crl_number() -> int:
        crl = load_crl(pki.crl)
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number

    assert crl_number() == 1
    issue_client(pki.root, "gw-1")
    assert crl_number() == 2
    revoke(pki.root, "gw-1")
    assert crl_number() == 3
    assert refresh_crl(pki.root) == pki.crl
    assert crl_number() == 4
    assert [entry.serial_number for entry in load_crl(pki.crl)] == [
        load_cert(pki.client_cert("gw-1")).serial_number
    ]


def test_concurrent_issues_lose_no_index_entry(pki: PkiLayout) -> None:
    names = [f"gw-{i}" for i in range(8)]
    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        list(pool.map(lambda name: issue_client(pki.root, name), names))

    index = json.loads(pki.index.read_text())
    assert sorted(index["clients"]) == names
    for name in names:
        serial = load_cert(pki.client_cert(name)).serial_number
        assert index["clients"][name]["serial"] == f"{serial:x}"


def test_refresh_rebuilds_the_crl_from_the_index(pki: PkiLayout) -> None:
    """The index is the record; a lost or stale ca.crl is re-derived with every revocation."""
    stale = pki.crl.read_bytes()
    cert, _ = issue_client(pki.root, "gw-1")
    revoke(pki.root, "gw-1")
    pki.crl.write_bytes(stale)  # as if the process died between writing the index and the CRL
    assert len(load_crl(pki.crl)) == 0

    refresh_crl(pki.root)

    assert [entry.serial_number for entry in load_crl(pki.crl)] == [load_cert(cert).serial_number]


# ------------------------------------------------------------------------------------------------
# revoke and list
# ------------------------------------------------------------------------------------------------


def test_revoke_puts_the_serial_on_the_crl_and_list_shows_it(pki: PkiLayout) -> None:
    cert_a, _ = issue_client(pki.root, "gw-a")
    cert_b, _ = issue_client(pki.root, "gw-b")
    serial_b = load_cert(cert_b).serial_number

    info = revoke(pki.root, "gw-b")

    assert info.name == "gw-b"
    assert info.kind == "client"
    assert info.serial == serial_b
    assert info.revoked is True
    crl = load_crl(pki.crl)
    assert [entry.serial_number for entry in crl] == [serial_b]
    entry = crl.get_revoked_certificate_by_serial_number(serial_b)
    assert entry is not None
    reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason == x509.ReasonFlags.unspecified
    assert crl.get_revoked_certificate_by_serial_number(load_cert(cert_a).serial_number) is None

    listed = list_certs(pki.root)
    assert [(c.kind, c.name, c.revoked) for c in listed] == [
        ("ca", "MeterLink Dev Root CA", False),
        ("server", "localhost", False),
        ("client", "gw-a", False),
        ("client", "gw-b", True),
    ]
    assert listed[3] == info


def test_list_reports_serials_dates_and_fingerprints_of_the_files(pki: PkiLayout) -> None:
    issue_client(pki.root, "gw-z")
    issue_client(pki.root, "gw-a")

    listed = list_certs(pki.root)

    files = [pki.ca_cert, pki.server_cert, pki.client_cert("gw-a"), pki.client_cert("gw-z")]
    assert [c.name for c in listed] == ["MeterLink Dev Root CA", "localhost", "gw-a", "gw-z"]
    for info, path in zip(listed, files, strict=True):
        cert = load_cert(path)
        assert info == CertInfo(
            name=info.name,
            kind=info.kind,
            serial=cert.serial_number,
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            revoked=False,
            fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(),
        )


def test_revoke_unknown_or_twice_is_an_error(pki: PkiLayout) -> None:
    with pytest.raises(PkiError) as info:
        revoke(pki.root, "gw-ghost")
    assert info.value.name == "gw-ghost"
    assert str(info.value) == "no certificate issued for gateway 'gw-ghost'"

    issue_client(pki.root, "gw-1")
    revoke(pki.root, "gw-1")
    crl_before = pki.crl.read_bytes()
    with pytest.raises(PkiError) as info:
        revoke(pki.root, "gw-1")
    assert str(info.value) == "gateway 'gw-1' is already revoked"
    assert pki.crl.read_bytes() == crl_before


def test_revoke_works_when_the_cert_files_are_gone(pki: PkiLayout) -> None:
    cert, key = issue_client(pki.root, "gw-lost")
    serial = load_cert(cert).serial_number
    cert.unlink()
    key.unlink()

    assert revoke(pki.root, "gw-lost").serial == serial
    assert [entry.serial_number for entry in load_crl(pki.crl)] == [serial]


def test_revoked_serials_survive_overwrite(pki: PkiLayout) -> None:
    first, _ = issue_client(pki.root, "gw-1")
    first_serial = load_cert(first).serial_number
    revoke(pki.root, "gw-1")

    issue_client(pki.root, "gw-1")
    second_serial = load_cert(pki.client_cert("gw-1")).serial_number
    # Overwriting a cert that is still valid retires it as "superseded".
    issue_client(pki.root, "gw-1", overwrite=True)
    third_serial = load_cert(pki.client_cert("gw-1")).serial_number

    crl = load_crl(pki.crl)
    reasons = {
        entry.serial_number: entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
        for entry in crl
    }
    assert reasons == {
        first_serial: x509.ReasonFlags.unspecified,
        second_serial: x509.ReasonFlags.superseded,
    }
    assert len({first_serial, second_serial, third_serial}) == 3
    assert [c.revoked for c in list_certs(pki.root) if c.kind == "client"] == [False]
    assert json.loads(pki.index.read_text())["clients"]["gw-1"]["serial"] == f"{third_serial:x}"


# ------------------------------------------------------------------------------------------------
# OpenSSL: what Mosquitto will enforce
# ------------------------------------------------------------------------------------------------


def test_openssl_honours_the_crl(pki: PkiLayout, tmp_path: Path) -> None:
    cert, _ = issue_client(pki.root, "gw-1")
    other, _ = issue_client(pki.root, "gw-2")
    old_copy = tmp_path / "gw-1-old.crt"
    old_copy.write_bytes(cert.read_bytes())

    before = openssl_verify(pki, cert)
    assert before.returncode == 0, before.stderr
    assert before.stdout.strip() == f"{cert}: OK"

    revoke(pki.root, "gw-1")

    after = openssl_verify(pki, cert)
    assert after.returncode != 0
    assert "certificate revoked" in after.stdout + after.stderr
    assert openssl_verify(pki, other).returncode == 0

    # A re-issued cert for the same gateway verifies; the revoked copy still does not.
    issue_client(pki.root, "gw-1")
    assert openssl_verify(pki, cert).returncode == 0
    stale = openssl_verify(pki, old_copy)
    assert stale.returncode != 0
    assert "certificate revoked" in stale.stdout + stale.stderr


def test_openssl_verifies_the_server_cert_for_tls_servers_only(pki: PkiLayout) -> None:
    as_server = openssl_verify(pki, pki.server_cert, "-purpose", "sslserver")
    assert as_server.returncode == 0, as_server.stdout + as_server.stderr
    as_client = openssl_verify(pki, pki.server_cert, "-purpose", "sslclient")
    assert as_client.returncode != 0
    assert "unsuitable certificate purpose" in as_client.stdout + as_client.stderr


def test_cert_from_another_pki_does_not_verify(pki: PkiLayout, tmp_path: Path) -> None:
    other = init_pki(tmp_path / "other")
    foreign, _ = issue_client(other.root, "gw-1")
    # Same issuer name, different key: only the signature tells them apart.
    assert load_cert(foreign).issuer == load_cert(pki.ca_cert).subject

    result = openssl_verify(pki, foreign)

    assert result.returncode != 0
    assert "unable to get local issuer certificate" in result.stdout + result.stderr
    with pytest.raises(InvalidSignature):
        load_cert(foreign).verify_directly_issued_by(load_cert(pki.ca_cert))
    assert load_cert(other.ca_cert).serial_number != load_cert(pki.ca_cert).serial_number
