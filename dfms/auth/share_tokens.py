"""Share-link tokens: unguessable, signed, and stored only as a hash.

Token format (43 characters of unpadded base64url, canonical encoding only)::

    base64url( id[16] || HMAC-SHA256(secret, "dfms-share-link-v1\\0" || id)[:16] )

``id`` is a random UUID (v4): it is also the primary key of the ``share_links``
row, the "share id" the owner sees in listings and the subject of the
wrong-password limiter. The database keeps only SHA-256 of the token string, so
a leaked table gives out no working links. ``verify`` checks the MAC in constant
time before anything touches the database: a forged or mistyped token costs one
HMAC, never a query.

The secret
----------
32 random bytes in the file ``share.key`` (raw bytes, mode 0600) in the signing-keys
directory (``auth.keys_dir``), beside the ES256 ``*.pem`` keys (which it is
independent of: rotating the JWT signing key does not break share links). The
first gateway that needs it and finds none creates it atomically: the bytes are
written to a private temporary file which is then hard-linked into place, so
concurrent starts never see a half-written key and exactly one key wins; the
others read the winner's. Gateways on several hosts must share the same file
(copy it like the signing keys, e.g. ``head -c 32 /dev/urandom > share.key``).
Replacing or deleting the file invalidates every share link ever issued, which
is the emergency "revoke all links" switch. A file of any other length is an
error, never silently replaced.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import os
import re
import secrets
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path

from dfms.errors import DfmsError
from dfms.runtime.logs import get_logger

log = get_logger("auth.share_tokens")

KEY_FILE = "share.key"
SECRET_BYTES = 32
ID_BYTES = 16
MAC_BYTES = 16
TOKEN_CHARS = 43  # len(base64url(32 bytes)) without padding
_MAC_LABEL = b"dfms-share-link-v1\x00"
_TOKEN_RE = re.compile(rf"^[A-Za-z0-9_-]{{{TOKEN_CHARS}}}$")


class ShareKeyError(DfmsError):
    """The share-link secret file is unreadable or malformed."""


@dataclass(frozen=True, slots=True)
class MintedToken:
    id: uuid.UUID
    token: str
    token_hash: bytes


def token_hash(token: str) -> bytes:
    """What the database stores and looks tokens up by."""
    return hashlib.sha256(token.encode("ascii")).digest()


class ShareTokens:
    """Mints and verifies share tokens with one secret."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) != SECRET_BYTES:
            raise ShareKeyError(f"the share-link secret must be {SECRET_BYTES} bytes")
        self._secret = secret

    def _mac(self, token_id: bytes) -> bytes:
        return hmac.new(self._secret, _MAC_LABEL + token_id, hashlib.sha256).digest()[:MAC_BYTES]

    def mint(self) -> MintedToken:
        token_id = uuid.uuid4()
        raw = token_id.bytes + self._mac(token_id.bytes)
        token = base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")
        return MintedToken(token_id, token, token_hash(token))

    def verify(self, token: str) -> uuid.UUID | None:
        """The token's id when its MAC is ours; None for anything else."""
        if not _TOKEN_RE.match(token):
            return None
        try:
            raw = base64.urlsafe_b64decode(token + "=")
        except (binascii.Error, ValueError):
            return None
        # Only the canonical spelling: the last character carries 2 unused bits, so
        # four strings decode alike; accepting them all would make the hash lookup
        # answer differently for "the same" token.
        if base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=") != token:
            return None
        token_id, mac = raw[:ID_BYTES], raw[ID_BYTES:]
        if not hmac.compare_digest(mac, self._mac(token_id)):
            return None
        return uuid.UUID(bytes=token_id)


def _read_secret(path: Path) -> bytes:
    try:
        return _read_file(path)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ShareKeyError(f"cannot read the share-link secret {path}: {exc}") from exc


def _read_file(path: Path) -> bytes:
    with path.open("rb") as fh:
        info = os.fstat(fh.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ShareKeyError(f"{path} is not a regular file")
        data = fh.read(SECRET_BYTES + 1)
    if len(data) != SECRET_BYTES:
        raise ShareKeyError(f"{path} must hold exactly {SECRET_BYTES} bytes, not "
                            f"{len(data) if len(data) <= SECRET_BYTES else 'more'}; restore "
                            "it, or delete it to invalidate every share link")
    if stat.S_IMODE(info.st_mode) & 0o077:
        log.warning("share-link secret is readable by other users",
                    extra={"path": str(path), "mode": oct(stat.S_IMODE(info.st_mode))})
    return data


def load_or_create_secret(keys_dir: Path) -> bytes:
    """The secret in ``keys_dir/share.key``, created (atomically) when missing."""
    path = keys_dir / KEY_FILE
    try:
        return _read_secret(path)
    except FileNotFoundError:
        pass
    try:
        keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = keys_dir / f".{KEY_FILE}.{os.getpid()}.{secrets.token_hex(6)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(secrets.token_bytes(SECRET_BYTES))
                fh.flush()
                os.fsync(fh.fileno())
            # link() never replaces an existing name: the first process wins and
            # every other one reads the winner's complete file.
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        dir_fd = os.open(keys_dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise ShareKeyError(f"cannot create the share-link secret {path}: {exc}") from exc
    try:
        created = _read_secret(path)
    except FileNotFoundError as exc:
        raise ShareKeyError(f"the share-link secret {path} vanished while created") from exc
    log.info("share-link secret ready", extra={"path": str(path)})
    return created
