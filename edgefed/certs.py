"""Certificates for the broker's identities: a CA, the broker's certificate and one client
certificate per identity (common name = device id, ``serverd`` or ``edgecore``).

``edged certs init DIR`` makes the CA (``ca.pem``, ``ca.key``) and the broker's
certificate; ``edged certs issue DIR NAME`` a client certificate ``NAME`` can connect
with; issuing again for the same name replaces it (rotation, docs/security.md), while
``ca``, ``broker`` and a name whose files hold another identity (``demo_edge-01`` after
``demo/edge-01``) are refused. Keys are ECDSA P-256, written with mode 0600; a
certificate is valid for ``days`` (default 825 for clients, 3650 for the CA). The broker
takes the common name as the user name (``use_identity_as_username``) that its ACL
(``edgefed.mqtt.acl``) grants topics to.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgefed.errors import EXIT_OK, ConfigError
from edgefed.wire import DEVICE_ID_PATTERN

CA_DAYS = 3650
CERT_DAYS = 825
_IDENTITY = re.compile(DEVICE_ID_PATTERN)
_RESERVED = {"ca": "the CA's", "broker": "the broker's"}  # the files of 'certs init'


@dataclass(frozen=True)
class Issued:
    """The PEM files of one certificate and its key."""

    cert: Path
    key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def file_name(identity: str) -> str:
    """The stem of an identity's files: demo/edge-01 -> demo_edge-01."""
    return identity.replace("/", "_")


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)


def _validity(builder: x509.CertificateBuilder, days: int) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return builder.not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(
        now + datetime.timedelta(days=days)
    )


def make_ca(directory: Path, name: str = "EdgeFed CA", days: int = CA_DAYS) -> Issued:
    """A new CA in ``directory`` (``ca.pem``, ``ca.key``); refuses to replace one."""
    directory.mkdir(parents=True, exist_ok=True)
    out = Issued(directory / "ca.pem", directory / "ca.key")
    if out.key.exists():
        raise ConfigError(f"{out.key} exists: a CA is made once (rotate client certificates)")
    key = ec.generate_private_key(ec.SECP256R1())
    usage = x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )
    cert = (
        _validity(x509.CertificateBuilder(), days)
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .sign(key, hashes.SHA256())
    )
    _write_key(key, out.key)
    out.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return out


def issue(
    directory: Path,
    identity: str,
    server: bool = False,
    hosts: tuple[str, ...] = ("localhost", "127.0.0.1"),
    days: int = CERT_DAYS,
    name: str = "broker",
) -> Issued:
    """A certificate signed by the CA in ``directory``: a client one whose common name is
    ``identity``, or (``server``) a broker's for ``hosts``, in ``name``.pem and .key (the
    cluster broker's ``broker``, an edge node's own ``node-broker-<node>``)."""
    if not server and not _IDENTITY.fullmatch(identity):
        raise ConfigError(f"identity {identity!r} is not a device id, 'serverd' or 'edgecore'")
    stem = name if server else file_name(identity)
    out = Issued(directory / f"{stem}.pem", directory / f"{stem}.key")
    if server and name.lower() == "ca":
        raise ConfigError("a broker certificate cannot be named 'ca': those are the CA's files")
    if not server:
        _check_files_free(out.cert, identity)
    try:
        ca_key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
        ca = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"no usable CA in {directory} (run 'edged certs init'): {exc}") from exc
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{directory / 'ca.key'} is not an EC key")
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        _validity(x509.CertificateBuilder(), days)
        .subject_name(_name(identity))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if server:
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    _write_key(key, out.key)
    out.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return out


def _check_files_free(cert: Path, identity: str) -> None:
    """Refuse a client identity whose files are the CA's or the broker's, a broker's (an
    edge node's node-broker-<node>), or another identity's (demo/edge-01 and demo_edge-01
    share demo_edge-01.pem); the same identity may replace its own (rotation)."""
    reserved = _RESERVED.get(cert.stem.lower())  # lower: a case-insensitive file system
    if reserved:
        raise ConfigError(f"identity {identity!r} is refused: {cert.stem}.pem/.key are {reserved}")
    if not cert.exists():
        return
    try:
        loaded = x509.load_pem_x509_certificate(cert.read_bytes())
        owner = _subject(loaded)
        usage = loaded.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except (OSError, ValueError, IndexError, x509.ExtensionNotFound) as exc:
        raise ConfigError(f"cannot read the common name and usage of {cert}: {exc}") from exc
    if owner != identity:
        raise ConfigError(f"identity {identity!r}: {cert} is the certificate of {owner!r}")
    if ExtendedKeyUsageOID.CLIENT_AUTH not in usage:
        raise ConfigError(f"identity {identity!r}: {cert} is a broker's certificate")


def common_name(cert: Path) -> str:
    """The common name of a PEM certificate (the identity the broker sees)."""
    return _subject(x509.load_pem_x509_certificate(cert.read_bytes()))


def _subject(cert: x509.Certificate) -> str:
    value = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    return value if isinstance(value, str) else value.decode()


def add_subparsers(subparsers: Any) -> None:
    """``certs init`` and ``certs issue`` for the ``edged`` command line."""
    p = subparsers.add_parser("certs", help="make a CA and per-identity broker certificates")
    sub = p.add_subparsers(dest="certs_command", required=True)
    init = sub.add_parser("init", help="a new CA and the broker's certificate in DIR")
    init.add_argument("dir", type=Path)
    init.add_argument(
        "--host", action="append", default=[], help="broker host name or address (repeat)"
    )
    init.set_defaults(func=_cmd_init)
    one = sub.add_parser("issue", help="a client certificate for one identity (replaces it)")
    one.add_argument("dir", type=Path, help="the directory of 'certs init'")
    one.add_argument("identity", help="a device id, 'serverd' or 'edgecore'")
    one.add_argument("--days", type=int, default=CERT_DAYS, help="validity in days")
    one.set_defaults(func=_cmd_issue)


def _cmd_init(args: argparse.Namespace) -> int:
    ca = make_ca(args.dir)
    hosts = tuple(args.host) or ("localhost", "127.0.0.1")
    broker = issue(args.dir, "broker", server=True, hosts=hosts)
    print(f"CA {ca.cert}\nbroker {broker.cert} {broker.key}")
    return EXIT_OK


def _cmd_issue(args: argparse.Namespace) -> int:
    out = issue(args.dir, args.identity, days=args.days)
    print(f"{args.identity}: {out.cert} {out.key}")
    return EXIT_OK
