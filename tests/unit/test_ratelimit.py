"""Rate limiting without Redis: classes of endpoint, keys, decisions, headers, and
the middleware around a fake limiter (streamed responses, failures, disabled)."""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from aiohttp import test_utils, web
from redis.exceptions import ConnectionError as RedisConnectionError

from dfms.auth.tokens import AccessClaims, TokenService
from dfms.config import AuthConfig, Config, RateLimitConfig
from dfms.gateway import ratelimit
from dfms.gateway.context import CONFIG_KEY, REDIS_KEY, TOKENS_KEY
from dfms.gateway.middleware import error_middleware, request_id_middleware
from dfms.gateway.ratelimit import (
    GUARD_KEY,
    REDIS_ERRORS,
    CallerCache,
    Decision,
    KeyState,
    Limit,
    build_limits,
    classify,
    decide,
    rate_headers,
)
from dfms.keys import generate_key
from dfms.runtime.ops import add_ops_routes

# middleware.py stores the request id under a str key, which aiohttp warns about once.

UID = "0b6f3c1e-2f4a-4d6e-9c1a-7d2b5e8f9a10"
PART = "/api/v1/files/upload/multipart/4e1c/part/3"


@pytest.mark.parametrize(("method", "path", "expected"), [
    ("POST", "/api/v1/auth/login", "auth"),
    ("POST", "/api/v1/auth/register", "auth"),
    ("POST", "/api/v1/auth/refresh", "auth"),
    ("GET", "/api/v1/auth/login", "other"),
    ("POST", "/api/v1/auth/logout", "other"),
    ("POST", "/api/v1/files/upload", "upload"),
    ("PUT", PART, "upload"),
    ("POST", PART, "other"),
    ("PUT", "/api/v1/files/upload/multipart/4e1c/part/3/x", "other"),
    ("PUT", "/api/v1/files/upload", "other"),
    ("GET", "/api/v1/files/42/download", "download"),
    ("HEAD", "/api/v1/files/42/download", "download"),
    ("DELETE", "/api/v1/files/42/download", "other"),
    ("GET", "/s/abc123", "download"),
    ("POST", "/s/abc123", None),
    ("GET", "/s/abc/def", None),
    ("GET", "/api/v1/files", "other"),
    ("GET", "/api/v1", "other"),
    ("GET", "/api/v1/nope", "other"),
    ("GET", "/health", None),
    ("GET", "/ready", None),
    ("GET", "/metrics", None),
    ("GET", "/.well-known/jwks.json", None),
    ("GET", "/api/v1/openapi.yaml", None),
    ("GET", "/api/v1x/files", None),
    ("GET", "/", None),
])
def test_classify(method: str, path: str, expected: str | None) -> None:
    assert classify(method, path) == expected


CFG = RateLimitConfig(global_per_window=100, user_per_window=50, auth_per_window=3,
                      upload_per_window=6, download_per_window=12, other_per_window=20)


def test_anonymous_callers_are_keyed_by_address() -> None:
    assert build_limits(CFG, "upload", None, "10.0.0.7") == [
        Limit("global", "rl:global", 100),
        Limit("client address", "rl:ip:10.0.0.7", 50),
        Limit("upload", "rl:upload:10.0.0.7", 6)]


def test_users_are_keyed_by_id() -> None:
    assert build_limits(CFG, "download", UID, "10.0.0.7") == [
        Limit("global", "rl:global", 100),
        Limit("user", f"rl:user:{UID}", 50),
        Limit("download", f"rl:download:{UID}", 12)]
    assert build_limits(CFG, "other", UID, "::1")[2] == Limit("other", f"rl:other:{UID}", 20)


def test_auth_class_is_always_keyed_by_address() -> None:
    limits = build_limits(CFG, "auth", UID, "10.0.0.7")
    assert limits[1].key == f"rl:user:{UID}"
    assert limits[2] == Limit("auth", "rl:auth:10.0.0.7", 3)


def _states(*rows: tuple[int, int, int, int]) -> list[KeyState]:
    """(limit, count, reset_us, retry_us) per key."""
    return [KeyState(Limit(f"k{i}", f"rl:k{i}", lim), count, reset, retry)
            for i, (lim, count, reset, retry) in enumerate(rows)]


def test_allowed_reports_the_key_with_least_remaining() -> None:
    d = decide(_states((100, 10, 5_000_000, 0), (6, 4, 1_200_000, 0), (50, 0, 0, 0)),
               True, 60)
    assert (d.allowed, d.limit.name, d.remaining, d.reset_s) == (True, "k1", 1, 2)
    assert rate_headers(d) == {"X-RateLimit-Limit": "6", "X-RateLimit-Remaining": "1",
                               "X-RateLimit-Reset": "2"}


def test_first_request_of_a_key_resets_after_a_whole_window() -> None:
    d = decide(_states((5, 0, 0, 0)), True, 60)
    assert (d.remaining, d.reset_s, d.retry_after_s) == (4, 60, None)


def test_equal_remaining_prefers_the_later_reset() -> None:
    d = decide(_states((10, 5, 1_000_000, 0), (10, 5, 9_000_000, 0)), True, 60)
    assert (d.limit.name, d.reset_s) == ("k1", 9)


def test_denied_names_the_exceeded_limit_and_when_to_retry() -> None:
    d = decide(_states((100, 10, 5_000_000, 0), (6, 6, 30_000_000, 12_300_000)), False, 60)
    assert (d.allowed, d.limit.name, d.remaining, d.reset_s, d.retry_after_s) == (
        False, "k1", 0, 30, 13)
    assert d.message == "k1 limit of 6 per 60s exceeded"
    assert rate_headers(d)["Retry-After"] == "13"


def test_retry_after_is_at_least_one_second() -> None:
    d = decide(_states((3, 3, 1_000, 1)), False, 2)
    assert d.retry_after_s == 1
    assert d.message == "k0 limit of 3 per 2s exceeded"


class CountingTokens(TokenService):
    def __init__(self, keys_dir: Path) -> None:
        super().__init__(AuthConfig(), keys_dir)
        self.verified = 0

    def verify_access(self, token: str) -> AccessClaims:
        self.verified += 1
        return super().verify_access(token)


def test_caller_cache_verifies_a_token_once_until_it_expires(tmp_path: Path) -> None:
    generate_key(tmp_path)
    tokens = CountingTokens(tmp_path)
    cache = CallerCache(tokens, size=2)
    user_id = uuid.uuid4()
    token = tokens.issue_access(user_id, "user")
    assert cache.user_id(token) == cache.user_id(token) == str(user_id)
    assert tokens.verified == 1
    for _ in range(2):  # forged tokens are verified every time, never cached
        assert cache.user_id(token[:-4] + "AAAA") is None
    assert cache.user_id(None) is None
    assert tokens.verified == 3
    old = tokens.issue_access(user_id, "user", now=1_000_000)  # expired long ago
    assert cache.user_id(old) is None


def test_caller_cache_is_bounded(tmp_path: Path) -> None:
    generate_key(tmp_path)
    tokens = CountingTokens(tmp_path)
    cache = CallerCache(tokens, size=2)
    first, *others = [tokens.issue_access(uuid.uuid4(), "user") for _ in range(3)]
    for token in (first, *others):
        cache.user_id(token)
    cache.user_id(first)  # evicted by the third token: verified again
    assert tokens.verified == 4


# --- the middleware around a fake limiter ----------------------------------------------

class FakeLimiter:
    """Answers like the script would for counts it keeps itself; or fails."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.counts: dict[str, int] = {}
        self.fail = False

    async def check_all(self, limits: Sequence[Limit], window_s: float) -> Decision:
        self.calls.append([lim.key for lim in limits])
        if self.fail:
            raise RedisConnectionError("connection refused")
        states = [KeyState(lim, self.counts.get(lim.key, 0), 1_500_000, 700_000)
                  for lim in limits]
        allowed = all(s.count < s.limit.limit for s in states)
        if allowed:
            for lim in limits:
                self.counts[lim.key] = self.counts.get(lim.key, 0) + 1
        return decide(states, allowed, window_s)


async def _stream(request: web.Request) -> web.StreamResponse:
    # Prepared inside the handler, as a streamed download is: too late for middlewares.
    resp = web.StreamResponse()
    await resp.prepare(request)
    await resp.write(b"chunk")
    return resp


async def _hello(_: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def _app(cfg: Config, tokens: TokenService, fake: FakeLimiter,
         redis_client: aioredis.Redis) -> web.Application:
    app = web.Application(middlewares=[request_id_middleware, error_middleware,
                                       *ratelimit.middlewares()])
    app[CONFIG_KEY] = cfg
    app[TOKENS_KEY] = tokens
    app[REDIS_KEY] = redis_client  # never used: the fake replaces the limiter
    ratelimit.setup(app)

    async def swap_limiter(app: web.Application) -> None:
        if GUARD_KEY in app:
            app[GUARD_KEY].limiter = fake  # type: ignore[assignment]

    app.on_startup.append(swap_limiter)
    app.router.add_get("/api/v1/files/{id}/download", _stream)
    app.router.add_get("/api/v1/hello", _hello)
    add_ops_routes(app, "gateway", {})
    return app


@pytest.fixture
def tokens(tmp_path: Path) -> TokenService:
    generate_key(tmp_path)
    return TokenService(AuthConfig(), tmp_path)


@pytest.fixture
async def redis_client() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis(host="127.0.0.1", port=1)
    yield client
    await client.aclose()


async def _client(cfg: RateLimitConfig, tokens: TokenService, fake: FakeLimiter,
                  redis_client: aioredis.Redis) -> test_utils.TestClient:
    config = dataclasses.replace(Config(), ratelimit=cfg)
    client = test_utils.TestClient(test_utils.TestServer(
        _app(config, tokens, fake, redis_client)))
    await client.start_server()
    return client


async def test_streamed_responses_carry_the_headers(
        tokens: TokenService, redis_client: aioredis.Redis) -> None:
    fake = FakeLimiter()
    client = await _client(CFG, tokens, fake, redis_client)
    try:
        resp = await client.get("/api/v1/files/1/download")
        assert resp.status == 200 and await resp.read() == b"chunk"
        assert resp.headers["X-RateLimit-Limit"] == "12"
        assert resp.headers["X-RateLimit-Remaining"] == "11"
        assert resp.headers["X-RateLimit-Reset"] == "60"  # first request: a whole window
        assert "Retry-After" not in resp.headers
        # Error envelopes of limited requests (here an unknown path) carry them too.
        resp = await client.get("/api/v1/nothing-here")
        assert resp.status == 404 and resp.headers["X-RateLimit-Limit"] == "20"
    finally:
        await client.close()


async def test_denied_requests_get_429_envelope(
        tokens: TokenService, redis_client: aioredis.Redis) -> None:
    fake = FakeLimiter()
    fake.counts["rl:other:127.0.0.1"] = 20
    client = await _client(CFG, tokens, fake, redis_client)
    try:
        resp = await client.get("/api/v1/hello", headers={"X-Request-Id": "rid-1"})
        body = await resp.json()
        assert resp.status == 429
        assert body == {"error": {"code": "rate_limited", "request_id": "rid-1",
                                  "message": "other limit of 20 per 60s exceeded"}}
        assert resp.headers["Retry-After"] == "1"
        assert resp.headers["X-RateLimit-Remaining"] == "0"
        assert resp.headers["X-RateLimit-Limit"] == "20"
    finally:
        await client.close()


async def test_valid_tokens_key_by_user_and_invalid_ones_by_address(
        tokens: TokenService, redis_client: aioredis.Redis) -> None:
    fake = FakeLimiter()
    user_id = uuid.uuid4()
    client = await _client(CFG, tokens, fake, redis_client)
    try:
        good = {"Authorization": f"Bearer {tokens.issue_access(user_id, 'user')}"}
        for headers in (good, {"Authorization": "Bearer not-a-jwt"}, {}):
            assert (await client.get("/api/v1/hello", headers=headers)).status == 200
        assert fake.calls == [
            ["rl:global", f"rl:user:{user_id}", f"rl:other:{user_id}"],
            ["rl:global", "rl:ip:127.0.0.1", "rl:other:127.0.0.1"],
            ["rl:global", "rl:ip:127.0.0.1", "rl:other:127.0.0.1"]]
    finally:
        await client.close()


async def test_ops_routes_are_never_checked(
        tokens: TokenService, redis_client: aioredis.Redis) -> None:
    fake = FakeLimiter()
    client = await _client(CFG, tokens, fake, redis_client)
    try:
        for path in ("/health", "/ready", "/metrics"):
            resp = await client.get(path)
            assert resp.status == 200 and "X-RateLimit-Limit" not in resp.headers
        assert fake.calls == []
    finally:
        await client.close()


async def test_disabled_limits_check_nothing_and_add_no_headers(
        tokens: TokenService, redis_client: aioredis.Redis) -> None:
    fake = FakeLimiter()
    client = await _client(dataclasses.replace(CFG, enabled=False), tokens, fake,
                           redis_client)
    try:
        resp = await client.get("/api/v1/hello")
        assert resp.status == 200 and "X-RateLimit-Limit" not in resp.headers
        assert fake.calls == []
    finally:
        await client.close()


async def test_fail_open_passes_counts_and_backs_off(
        tokens: TokenService, redis_client: aioredis.Redis) -> None:
    fake = FakeLimiter()
    fake.fail = True
    errors_before = REDIS_ERRORS._value.get()
    client = await _client(CFG, tokens, fake, redis_client)
    try:
        for _ in range(3):
            resp = await client.get("/api/v1/hello")
            assert resp.status == 200 and "X-RateLimit-Limit" not in resp.headers
        # Only the first request waited for Redis; the others skipped it in the back-off.
        assert len(fake.calls) == 1
        assert REDIS_ERRORS._value.get() == errors_before + 1
    finally:
        await client.close()


async def test_redis_failures_warn_at_most_every_30s(
        tokens: TokenService, redis_client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(ratelimit, "BACKOFF_S", 0.0)
    fake = FakeLimiter()
    fake.fail = True
    client = await _client(CFG, tokens, fake, redis_client)
    try:
        with caplog.at_level(logging.WARNING, logger="dfms.gateway.ratelimit"):
            for _ in range(3):
                assert (await client.get("/api/v1/hello")).status == 200
        assert len(fake.calls) == 3
        assert [r.getMessage() for r in caplog.records] == ["rate limiter cannot reach Redis"]
    finally:
        await client.close()


async def test_fail_closed_answers_503(tokens: TokenService,
                                       redis_client: aioredis.Redis) -> None:
    fake = FakeLimiter()
    fake.fail = True
    client = await _client(dataclasses.replace(CFG, fail_open=False), tokens, fake,
                           redis_client)
    try:
        resp = await client.get("/api/v1/hello")
        assert resp.status == 503
        assert (await resp.json())["error"]["code"] == "rate_limiter_unavailable"
        assert resp.headers["Retry-After"] == "1"
        assert (await client.get("/health")).status == 200
    finally:
        await client.close()


async def test_back_off_ends_with_one_probe(tokens: TokenService,
                                            redis_client: aioredis.Redis,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ratelimit, "BACKOFF_S", 0.0)
    fake = FakeLimiter()
    fake.fail = True
    client = await _client(CFG, tokens, fake, redis_client)
    try:
        assert (await client.get("/api/v1/hello")).status == 200
        fake.fail = False
        resp = await client.get("/api/v1/hello")
        assert resp.status == 200 and resp.headers["X-RateLimit-Remaining"] == "19"
        assert len(fake.calls) == 2
    finally:
        await client.close()
