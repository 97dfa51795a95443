"""User accounts in PostgreSQL: creation, password login, lookup.

Functions take ``db``: an asyncpg connection or pool (both run single statements).
Password hashing happens before any connection is taken, so a slow Argon2 run
never holds a pooled connection.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from dfms.auth.errors import (
    AccountDisabled,
    EmailTaken,
    InvalidCredentials,
    InvalidEmail,
    InvalidInput,
)
from dfms.auth.passwords import (
    Argon2Params,
    check_password_rules,
    dummy_hash_async,
    hash_password_async,
    needs_rehash,
    verify_password_async,
)
from dfms.auth.validation import normalize_display_name, normalize_email
from dfms.config import AuthConfig
from dfms.metadata.db import Connection
from dfms.metadata.records import from_record

Executor = Connection | asyncpg.Pool

ROLES = ("user", "admin")
USER_COLUMNS = "id, email, display_name, role, is_active, created_at"


@dataclass(frozen=True, slots=True)
class User:
    id: uuid.UUID
    email: str
    display_name: str
    role: str
    is_active: bool
    created_at: datetime

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> User:
        return from_record(cls, row)

    def public(self) -> dict[str, Any]:
        """The user as the API shows it."""
        return {"id": str(self.id), "email": self.email, "display_name": self.display_name,
                "role": self.role, "created_at": self.created_at.isoformat()}


@dataclass(frozen=True, slots=True)
class NewUser:
    """A validated registration whose password is already hashed."""

    email: str
    display_name: str
    password_hash: str
    role: str


async def prepare_user(cfg: AuthConfig, *, email: str, password: str, display_name: str,
                       role: str = "user") -> NewUser:
    """Validate and normalise the fields (``InvalidInput`` subclasses), then hash."""
    norm_email = normalize_email(email)
    name = normalize_display_name(display_name)
    check_password_rules(password, min_length=cfg.password_min_length, email=norm_email)
    if role not in ROLES:
        raise InvalidInput(f"role must be one of {', '.join(ROLES)}")
    pw_hash = await hash_password_async(password, Argon2Params.from_config(cfg))
    return NewUser(norm_email, name, pw_hash, role)


async def insert_user(db: Executor, new: NewUser) -> User:
    """Insert; ``EmailTaken`` when the (normalised, so case-insensitive) email exists."""
    row = await db.fetchrow(
        f"INSERT INTO users (email, display_name, password_hash, role) "
        f"VALUES ($1, $2, $3, $4) ON CONFLICT (email) DO NOTHING RETURNING {USER_COLUMNS}",
        new.email, new.display_name, new.password_hash, new.role)
    if row is None:
        raise EmailTaken(f"an account with the email {new.email} already exists")
    return User.from_row(row)


async def create_user(db: Executor, cfg: AuthConfig, *, email: str, password: str,
                      display_name: str, role: str = "user") -> User:
    new = await prepare_user(cfg, email=email, password=password, display_name=display_name,
                             role=role)
    return await insert_user(db, new)


async def get_user(db: Executor, user_id: uuid.UUID) -> User | None:
    row = await db.fetchrow(f"SELECT {USER_COLUMNS} FROM users WHERE id = $1", user_id)
    return User.from_row(row) if row is not None else None


async def _find_for_login(db: Executor, email: str) -> asyncpg.Record | None:
    try:
        norm = normalize_email(email)
    except InvalidEmail:
        return None  # cannot exist; still costs a dummy verification below
    return await db.fetchrow(
        f"SELECT {USER_COLUMNS}, password_hash FROM users WHERE email = $1", norm)


async def authenticate(db: Executor, cfg: AuthConfig, email: str, password: str) -> User:
    """The user with these credentials, else ``InvalidCredentials``.

    An unknown email is verified against a dummy hash made with the current
    parameters, so the answer and its timing do not reveal whether it exists.
    ``AccountDisabled`` is only said to callers who know the right password.
    """
    params = Argon2Params.from_config(cfg)
    row = await _find_for_login(db, email)
    stored = row["password_hash"] if row is not None else await dummy_hash_async(params)
    matches = await verify_password_async(password, stored)
    if row is None or not matches:
        raise InvalidCredentials()
    user = User.from_row(row)
    if not user.is_active:
        raise AccountDisabled()
    if needs_rehash(stored, params):
        await _rehash(db, user.id, password, stored, params)
    return user


async def _rehash(db: Executor, user_id: uuid.UUID, password: str, old_hash: str,
                  params: Argon2Params) -> None:
    """Upgrade a hash made with older parameters, now that we know the password."""
    new_hash = await hash_password_async(password, params)
    # Compare-and-set: a password change that raced this login wins.
    await db.execute("UPDATE users SET password_hash = $2, updated_at = now() "
                     "WHERE id = $1 AND password_hash = $3", user_id, new_hash, old_hash)
