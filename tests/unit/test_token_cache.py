"""Verified access tokens are remembered until they expire, never longer, and never when
they failed (issue 18: ES256 once per token, not once per request)."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, tzinfo
from pathlib import Path

import jwt.api_jwt
import pytest

from dfms.auth import tokens as tokens_module
from dfms.auth.tokens import AccessClaims, InvalidToken, TokenService
from dfms.config import AuthConfig
from dfms.keys import generate_key


class CountingTokens(TokenService):
    """Counts full (ES256) verifications."""

    def __init__(self, keys_dir: Path) -> None:
        super().__init__(AuthConfig(), keys_dir)
        self.full = 0

    def _verify(self, token: str) -> AccessClaims:
        self.full += 1
        return super()._verify(token)


def set_clock(monkeypatch: pytest.MonkeyPatch, at: float) -> None:
    """The cache's clock and PyJWT's, moved to ``at``."""

    class Clock(datetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> Clock:
            return cls.fromtimestamp(at, tz or UTC)

    monkeypatch.setattr(time, "time", lambda: at)
    monkeypatch.setattr(jwt.api_jwt, "datetime", Clock)


@pytest.fixture
def service(tmp_path: Path) -> CountingTokens:
    generate_key(tmp_path)
    return CountingTokens(tmp_path)


def test_a_token_is_verified_once_while_it_is_valid(service: CountingTokens) -> None:
    user = uuid.uuid4()
    token = service.issue_access(user, "user")
    first = service.verify_access(token)
    assert service.verify_access(token) == first and first.user_id == user
    assert service.full == 1


def test_forged_tokens_are_verified_every_time(service: CountingTokens) -> None:
    token = service.issue_access(uuid.uuid4(), "user")
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    for _ in range(2):
        with pytest.raises(InvalidToken):
            service.verify_access(forged)
    assert service.full == 2


def test_an_expired_token_is_not_served_from_the_cache(service: CountingTokens,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    token = service.issue_access(uuid.uuid4(), "user")
    claims = service.verify_access(token)
    # Past exp and past the clock-skew leeway: the full check runs again and refuses it.
    later = claims.expires_at + tokens_module.CLOCK_SKEW_S + 5
    set_clock(monkeypatch, float(later))
    with pytest.raises(InvalidToken, match="expired"):
        service.verify_access(token)
    assert service.full == 2


def test_within_the_leeway_a_token_is_verified_in_full(service: CountingTokens,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    token = service.issue_access(uuid.uuid4(), "user")
    claims = service.verify_access(token)
    set_clock(monkeypatch, float(claims.expires_at + 1))
    service.verify_access(token)  # accepted as before (leeway), but not remembered
    service.verify_access(token)
    assert service.full == 3


def test_the_cache_is_bounded(service: CountingTokens, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokens_module, "VERIFIED_CACHE_SIZE", 2)
    first, *others = [service.issue_access(uuid.uuid4(), "user") for _ in range(3)]
    for token in (first, *others):
        service.verify_access(token)
    service.verify_access(others[-1])  # still there
    service.verify_access(first)  # evicted by the third token: verified again
    assert service.full == 4
