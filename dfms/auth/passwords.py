"""Argon2id password hashes and the password rules.

Hashes are stored in the PHC string format that argon2-cffi, libsodium and
``cryptography`` also use::

    $argon2id$v=19$m=<memory KiB>,t=<iterations>,p=<lanes>$<b64 salt>$<b64 hash>

(standard base64 without padding). Each hash carries its own parameters, so the
configured cost can change later: old hashes still verify and are upgraded at the
next successful login (see ``needs_rehash``).

Argon2 deliberately takes tens of milliseconds and megabytes; the ``*_async``
variants run it in a worker thread so the event loop keeps serving requests.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hmac
import os
import re
import secrets
import unicodedata
from dataclasses import dataclass

from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from dfms.auth.errors import WeakPassword
from dfms.config import AuthConfig
from dfms.errors import DfmsError

ARGON2_VERSION = 19
SALT_BYTES = 16
HASH_BYTES = 32
MAX_PASSWORD_CHARS = 1024

# Bounds for parameters read back from the database: a tampered row must not make
# the gateway allocate terabytes or spin for minutes.
_MAX_MEMORY_KIB = 4 * 1024 * 1024
_MAX_ITERATIONS = 64
_MAX_LANES = 64

_PHC_RE = re.compile(
    r"^\$argon2id\$v=(?P<v>\d+)\$m=(?P<m>\d{1,10}),t=(?P<t>\d{1,4}),p=(?P<p>\d{1,3})"
    r"\$(?P<salt>[A-Za-z0-9+/]+)\$(?P<hash>[A-Za-z0-9+/]+)$")


class InvalidPasswordHash(DfmsError):
    """A stored password hash that is not a well-formed Argon2id PHC string."""


@dataclass(frozen=True, slots=True)
class Argon2Params:
    memory_kib: int
    iterations: int
    lanes: int

    @classmethod
    def from_config(cls, cfg: AuthConfig) -> Argon2Params:
        return cls(cfg.argon2_memory_kib, cfg.argon2_iterations, cfg.argon2_lanes)


@dataclass(frozen=True, slots=True)
class ParsedHash:
    params: Argon2Params
    salt: bytes
    digest: bytes


def normalize_password(password: str) -> str:
    """NFC, so the same password typed with composed or decomposed accents matches."""
    return unicodedata.normalize("NFC", password)


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _b64decode(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _derive(password: str, salt: bytes, params: Argon2Params, length: int) -> bytes:
    kdf = Argon2id(salt=salt, length=length, iterations=params.iterations,
                   lanes=params.lanes, memory_cost=params.memory_kib)
    return kdf.derive(normalize_password(password).encode("utf-8"))


def hash_password(password: str, params: Argon2Params) -> str:
    salt = os.urandom(SALT_BYTES)
    digest = _derive(password, salt, params, HASH_BYTES)
    return (f"$argon2id$v={ARGON2_VERSION}$m={params.memory_kib},t={params.iterations},"
            f"p={params.lanes}${_b64encode(salt)}${_b64encode(digest)}")


def _check_params(params: Argon2Params) -> None:
    if not (1 <= params.lanes <= _MAX_LANES and 1 <= params.iterations <= _MAX_ITERATIONS
            and 8 * params.lanes <= params.memory_kib <= _MAX_MEMORY_KIB):
        raise InvalidPasswordHash(f"Argon2id parameters out of range: {params}")


def parse_hash(encoded: str) -> ParsedHash:
    match = _PHC_RE.match(encoded)
    if match is None:
        raise InvalidPasswordHash("not an Argon2id PHC string")
    if int(match["v"]) != ARGON2_VERSION:
        raise InvalidPasswordHash(f"unsupported Argon2 version {match['v']}")
    params = Argon2Params(int(match["m"]), int(match["t"]), int(match["p"]))
    _check_params(params)
    try:
        salt, digest = _b64decode(match["salt"]), _b64decode(match["hash"])
    except (binascii.Error, ValueError) as exc:
        raise InvalidPasswordHash(f"bad base64 in hash: {exc}") from None
    if len(salt) < 8 or not 16 <= len(digest) <= 64:
        raise InvalidPasswordHash("salt or hash has an implausible length")
    return ParsedHash(params, salt, digest)


def verify_password(password: str, encoded: str) -> bool:
    """True when ``password`` matches; a malformed stored hash never matches."""
    try:
        parsed = parse_hash(encoded)
    except InvalidPasswordHash:
        return False
    candidate = _derive(password, parsed.salt, parsed.params, len(parsed.digest))
    return hmac.compare_digest(candidate, parsed.digest)


def needs_rehash(encoded: str, params: Argon2Params) -> bool:
    """Whether a (verified) hash was made with other parameters than the current ones."""
    try:
        parsed = parse_hash(encoded)
    except InvalidPasswordHash:
        return True
    return parsed.params != params or len(parsed.digest) != HASH_BYTES


@functools.lru_cache(maxsize=8)
def dummy_hash(params: Argon2Params) -> str:
    """A hash of a random password, verified when an email is unknown so that a
    failed login costs the same time whether or not the account exists."""
    return hash_password(secrets.token_urlsafe(24), params)


async def hash_password_async(password: str, params: Argon2Params) -> str:
    return await asyncio.to_thread(hash_password, password, params)


async def verify_password_async(password: str, encoded: str) -> bool:
    return await asyncio.to_thread(verify_password, password, encoded)


async def dummy_hash_async(params: Argon2Params) -> str:
    return await asyncio.to_thread(dummy_hash, params)


def check_password_rules(password: str, *, min_length: int, email: str | None = None) -> None:
    """Raise ``WeakPassword`` naming the first rule ``password`` breaks."""
    pw = normalize_password(password)
    if len(pw) < min_length:
        raise WeakPassword(f"password must be at least {min_length} characters long")
    if len(pw) > MAX_PASSWORD_CHARS:
        raise WeakPassword(f"password must be at most {MAX_PASSWORD_CHARS} characters long")
    if len(set(pw)) == 1:
        raise WeakPassword("password must not be one character repeated")
    if email is not None and pw.strip().casefold() == email.strip().casefold():
        raise WeakPassword("password must not be the same as the email address")
