"""Login logic and refresh-token format without a database (a fake executor)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import asyncpg
import pytest

from dfms.auth import accounts, passwords, refresh
from dfms.auth.errors import AccountDisabled, InvalidCredentials, InvalidRefreshToken
from dfms.auth.passwords import Argon2Params, hash_password, parse_hash
from dfms.auth.tokens import InvalidToken, TokenService
from dfms.config import AuthConfig
from dfms.keys import generate_key

CFG = AuthConfig(argon2_memory_kib=8192, argon2_iterations=1, argon2_lanes=1)
PARAMS = Argon2Params.from_config(CFG)
PW = "correct horse battery staple"


class FakeDb:
    """Answers the login lookup with ``row`` and records statements."""

    def __init__(self, row: dict[str, Any] | None) -> None:
        self.row = row
        self.executed: list[tuple[str, tuple[Any, ...]]] = []
        self.lookups: list[tuple[Any, ...]] = []

    async def fetchrow(self, query: str, *args: Any) -> dict[str, Any] | None:
        self.lookups.append(args)
        return self.row

    async def execute(self, query: str, *args: Any) -> str:
        self.executed.append((query, args))
        return "UPDATE 1"


async def login(db: FakeDb, email: str, password: str) -> accounts.User:
    return await accounts.authenticate(cast(accounts.Executor, db), CFG, email, password)


def user_row(password_hash: str, *, active: bool = True) -> dict[str, Any]:
    return {"id": uuid.uuid4(), "email": "alice@example.com", "display_name": "Alice",
            "role": "user", "is_active": active, "created_at": datetime.now(UTC),
            "password_hash": password_hash}


async def test_login_returns_the_user_for_the_right_password() -> None:
    row = user_row(hash_password(PW, PARAMS))
    db = FakeDb(row)
    user = await login(db, "  ALICE@example.com", PW)
    assert user.id == row["id"] and user.public()["email"] == "alice@example.com"
    assert db.lookups == [("alice@example.com",)]  # looked up normalised
    assert db.executed == []  # current parameters: no rehash


@pytest.mark.parametrize("email", ["ghost@example.com", "not-an-email"])
async def test_unknown_email_still_costs_a_verification(monkeypatch: pytest.MonkeyPatch,
                                                        email: str) -> None:
    verified: list[str] = []
    real = passwords.verify_password_async

    async def spy(password: str, encoded: str) -> bool:
        verified.append(encoded)
        return await real(password, encoded)

    monkeypatch.setattr(accounts, "verify_password_async", spy)
    with pytest.raises(InvalidCredentials):
        await login(FakeDb(None), email, PW)
    assert verified == [passwords.dummy_hash(PARAMS)]
    assert parse_hash(verified[0]).params == PARAMS


async def test_unknown_and_known_emails_cost_the_same_work(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An unknown email still runs one full Argon2id verification with the configured
    parameters, so its answer takes as long as a wrong password for a real account."""
    verified: list[str] = []
    real = accounts.verify_password_async

    async def spy(password: str, stored: str) -> bool:
        verified.append(stored)
        return await real(password, stored)

    monkeypatch.setattr(accounts, "verify_password_async", spy)
    known = FakeDb(user_row(hash_password(PW, PARAMS)))
    for db, email in ((known, "alice@example.com"), (FakeDb(None), "alice@example.com"),
                      (FakeDb(None), "not an email")):
        with pytest.raises(InvalidCredentials):
            await login(db, email, "wrong!")
    assert len(verified) == 3
    assert all(parse_hash(h).params == PARAMS for h in verified)


async def test_disabled_account_is_only_reported_with_the_right_password() -> None:
    db = FakeDb(user_row(hash_password(PW, PARAMS), active=False))
    with pytest.raises(AccountDisabled):
        await login(db, "alice@example.com", PW)
    with pytest.raises(InvalidCredentials):
        await login(db, "alice@example.com", "nope")


async def test_login_upgrades_a_hash_made_with_old_parameters() -> None:
    old_hash = hash_password(PW, Argon2Params(8192, 2, 1))
    db = FakeDb(user_row(old_hash))
    await login(db, "alice@example.com", PW)
    [(query, args)] = db.executed
    assert "UPDATE users SET password_hash" in query
    new_hash = args[1]
    assert args[2] == old_hash  # compare-and-set on the old hash
    assert parse_hash(new_hash).params == PARAMS
    assert passwords.verify_password(PW, new_hash)


async def test_prepare_user_normalises_and_hashes() -> None:
    new = await accounts.prepare_user(CFG, email=" Bob@Example.org ", password=PW,
                                      display_name="  Bob ", role="admin")
    assert (new.email, new.display_name, new.role) == ("bob@example.org", "Bob", "admin")
    assert passwords.verify_password(PW, new.password_hash)


# --- refresh tokens -------------------------------------------------------------------------

def test_refresh_tokens_are_opaque_prefixed_and_random() -> None:
    tokens = {refresh.new_token() for _ in range(100)}
    assert len(tokens) == 100
    for token in tokens:
        assert token.startswith("dfmsr_") and len(token) == len("dfmsr_") + 43
        assert refresh.looks_like_refresh_token(token)
        assert len(refresh.token_hash(token)) == 32


async def test_rotate_refuses_non_refresh_tokens_without_a_query() -> None:
    for token in ("", "eyJhbGciOiJFUzI1NiJ9.e30.sig", "dfmsr_" + "a" * 500):
        with pytest.raises(InvalidRefreshToken):
            await refresh.rotate(cast(asyncpg.Connection, None), token, 60)


def test_refresh_token_is_refused_as_access_token(tmp_path: Path) -> None:
    generate_key(tmp_path)
    service = TokenService(CFG, tmp_path)
    with pytest.raises(InvalidToken, match="refresh token"):
        service.verify_access(refresh.new_token())
    claims = service.verify_access(service.issue_access(uuid.uuid4(), "admin"))
    assert claims.role == "admin"
