"""Rotating refresh tokens, grouped in families (one family per sign-in).

A refresh token is ``dfmsr_`` + 32 random bytes (URL-safe base64). Only its
SHA-256 is stored: a database leak yields nothing usable, and because the
token carries 256 bits of entropy a fast hash is enough (no salt, no KDF).

Rotation: using a token retires it and issues a new one of the same family with
a fresh lifetime. Presenting a retired token again means it was copied (or two
clients raced); the whole family is then revoked, the thief's and the owner's
copies alike, and the owner signs in again. Rows stay until they expire so that
reuse can still be recognised.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass

from dfms.auth.accounts import Executor, User
from dfms.auth.errors import InvalidRefreshToken, RefreshTokenReused
from dfms.auth.tokens import REFRESH_TOKEN_PREFIX as PREFIX
from dfms.metadata.db import Connection

_MAX_TOKEN_CHARS = 128


@dataclass(frozen=True, slots=True)
class Rotation:
    user: User
    refresh_token: str


def new_token() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def looks_like_refresh_token(token: str) -> bool:
    return token.startswith(PREFIX) and len(token) <= _MAX_TOKEN_CHARS


async def issue(db: Executor, user_id: uuid.UUID, ttl_s: int,
                family_id: uuid.UUID | None = None) -> str:
    """A new token; without ``family_id`` it starts a new family (a new sign-in)."""
    token = new_token()
    await db.execute(
        "INSERT INTO refresh_tokens (family_id, user_id, token_hash, expires_at) "
        "VALUES ($1, $2, $3, now() + $4::int * interval '1 second')",
        family_id or uuid.uuid4(), user_id, token_hash(token), ttl_s)
    return token


_LOCK_TOKEN = """
SELECT t.id AS token_id, t.family_id, t.retired_at, t.revoked_at,
       t.expires_at <= now() AS expired,
       u.id, u.email, u.display_name, u.role, u.is_active, u.created_at
FROM refresh_tokens t JOIN users u ON u.id = t.user_id
WHERE t.token_hash = $1
FOR UPDATE OF t
"""


async def rotate(conn: Connection, token: str, ttl_s: int) -> Rotation:
    """Exchange ``token`` for a new one of its family, atomically.

    The row lock serialises concurrent uses of one token: the second waiter
    sees it retired (READ COMMITTED re-reads the locked row) and triggers reuse
    detection, so exactly one of them succeeds.
    """
    if not looks_like_refresh_token(token):
        raise InvalidRefreshToken()
    async with conn.transaction():
        row = await conn.fetchrow(_LOCK_TOKEN, token_hash(token))
        if row is None or row["revoked_at"] is not None or row["expired"]:
            raise InvalidRefreshToken()
        if not row["is_active"]:
            raise InvalidRefreshToken("the account of this refresh token is disabled")
        fresh: str | None = None
        if row["retired_at"] is not None:
            # Revoke inside the transaction but raise after it commits: raising
            # here would roll the revocation back.
            await revoke_family(conn, row["family_id"])
        else:
            await conn.execute("UPDATE refresh_tokens SET retired_at = now() WHERE id = $1",
                               row["token_id"])
            fresh = await issue(conn, row["id"], ttl_s, row["family_id"])
    if fresh is None:
        raise RefreshTokenReused()
    return Rotation(User.from_row(row), fresh)


async def revoke_family(db: Executor, family_id: uuid.UUID) -> int:
    status = await db.execute(
        "UPDATE refresh_tokens SET revoked_at = now() "
        "WHERE family_id = $1 AND revoked_at IS NULL", family_id)
    return int(status.split()[-1])


async def revoke_family_of(db: Executor, user_id: uuid.UUID, token: str) -> int:
    """Revoke the family of ``token`` if it belongs to ``user_id``; tokens that are
    unknown or someone else's revoke nothing (and say nothing about why)."""
    if not looks_like_refresh_token(token):
        return 0
    status = await db.execute(
        "UPDATE refresh_tokens SET revoked_at = now() "
        "WHERE family_id = (SELECT family_id FROM refresh_tokens "
        "                   WHERE token_hash = $1 AND user_id = $2) "
        "AND revoked_at IS NULL", token_hash(token), user_id)
    return int(status.split()[-1])


async def revoke_all(db: Executor, user_id: uuid.UUID) -> int:
    """Sign the user out everywhere: every unrevoked token of every family."""
    status = await db.execute(
        "UPDATE refresh_tokens SET revoked_at = now() "
        "WHERE user_id = $1 AND revoked_at IS NULL", user_id)
    return int(status.split()[-1])
