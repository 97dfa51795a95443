"""ES256 (ECDSA P-256) signing keys for access tokens.

Keys live in one directory as ``<kid>.pem`` (PKCS#8, mode 0600) with a file
``current`` naming the key that signs new tokens; older keys stay so tokens
they signed verify until they expire.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from dfms.errors import DfmsError

CURRENT_FILE = "current"


class SigningKeyError(DfmsError):
    """The signing-key directory is missing or broken."""


@dataclass(frozen=True)
class SigningKey:
    kid: str
    private_key: ec.EllipticCurvePrivateKey

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self.private_key.public_key()


def _kid(public_key: ec.EllipticCurvePublicKey) -> str:
    der = public_key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()[:12]).decode().rstrip("=")


def generate_key(keys_dir: Path) -> SigningKey:
    """Create a new key and make it the current one."""
    keys_dir.mkdir(parents=True, exist_ok=True)
    keys_dir.chmod(0o700)
    private = ec.generate_private_key(ec.SECP256R1())
    kid = _kid(private.public_key())
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    path = keys_dir / f"{kid}.pem"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    tmp = keys_dir / f".{CURRENT_FILE}.tmp"
    tmp.write_text(kid + "\n")
    tmp.replace(keys_dir / CURRENT_FILE)  # atomic: readers never see a half-written name
    return SigningKey(kid, private)


def load_keys(keys_dir: Path) -> tuple[SigningKey, dict[str, SigningKey]]:
    """The current key and every key by kid."""
    current_file = keys_dir / CURRENT_FILE
    if not current_file.exists():
        raise SigningKeyError(f"no signing keys in {keys_dir}; run `dfms keys generate`")
    keys: dict[str, SigningKey] = {}
    for path in sorted(keys_dir.glob("*.pem")):
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(private, ec.EllipticCurvePrivateKey):
            raise SigningKeyError(f"{path} is not an EC private key")
        keys[path.stem] = SigningKey(path.stem, private)
    current = current_file.read_text().strip()
    if current not in keys:
        raise SigningKeyError(f"current key {current!r} has no {current}.pem in {keys_dir}")
    return keys[current], keys


def ensure_keys(keys_dir: Path) -> SigningKey:
    """The current key, generating the first one if the directory has none."""
    if (keys_dir / CURRENT_FILE).exists():
        return load_keys(keys_dir)[0]
    return generate_key(keys_dir)
