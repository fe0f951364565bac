"""Ed25519 keys and detached signatures of model image manifests.

Private keys are PKCS#8 PEM files; public keys are SubjectPublicKeyInfo PEM files.
Raw 32-byte key files are accepted too. A signature is the raw 64-byte Ed25519
signature over the exact bytes of ``manifest.yaml``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgefed.errors import ImageError

RAW_KEY_SIZE = 32


def generate_key_pair(private_path: Path, public_path: Path) -> Ed25519PrivateKey:
    """Create a new key pair; the private key file is readable by its owner only."""
    key = Ed25519PrivateKey.generate()
    private_path.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    public_path.write_bytes(public_pem(key.public_key()))
    return key


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def fingerprint(key: Ed25519PublicKey) -> str:
    """sha256 of the raw public key, hex: names a key in logs and build stamps."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def load_private_key(path: Path) -> Ed25519PrivateKey:
    data = _read(path, "signing key")
    try:
        if len(data) == RAW_KEY_SIZE:
            return Ed25519PrivateKey.from_private_bytes(data)
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ImageError(f"{path}: not an Ed25519 private key ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ImageError(f"{path}: not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    data = _read(path, "trusted key")
    try:
        if len(data) == RAW_KEY_SIZE:
            return Ed25519PublicKey.from_public_bytes(data)
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise ImageError(f"{path}: not an Ed25519 public key ({exc})") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ImageError(f"{path}: not an Ed25519 public key")
    return key


def sign(key: Ed25519PrivateKey, data: bytes) -> bytes:
    return key.sign(data)


def signed_by_any(keys: Sequence[Ed25519PublicKey], data: bytes, signature: bytes) -> bool:
    """True when ``signature`` over ``data`` verifies with one of ``keys``."""
    for key in keys:
        try:
            key.verify(signature, data)
        except InvalidSignature:
            continue
        return True
    return False


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ImageError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
