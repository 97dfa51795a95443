"""Sliding-window rate limits in Redis.

Every limited request is checked against three keys in ONE Lua script call:
the whole gateway (``rl:global``), the caller (``rl:user:<id>``, or
``rl:ip:<addr>`` when anonymous) and the caller's endpoint class
(``rl:<class>:<id or addr>``; ``auth`` always by address). The address is the
client's as ``dfms.gateway.client_address`` works it out (behind trusted proxies,
from ``X-Forwarded-For``). Each key is a sorted
set of the requests of the last window, scored by Redis server time, so the
window is exact and gateway clocks do not matter. A request is counted only
when every key allows it.

Allowed responses carry ``X-RateLimit-*`` headers of the most constraining key
(added in ``on_response_prepare`` so streamed responses get them too); denied
ones answer 429 ``rate_limited`` with ``Retry-After``. When Redis fails, the
request passes or gets 503 per ``ratelimit.fail_open``.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import Counter
from redis.exceptions import RedisError

from dfms.auth.tokens import InvalidToken, TokenService
from dfms.config import RateLimitConfig
from dfms.errors import RateLimiterUnavailable
from dfms.gateway.client_address import request_client_address
from dfms.gateway.context import API_PREFIX, CONFIG_KEY, REDIS_KEY, TOKENS_KEY
from dfms.gateway.errors import ApiError
from dfms.gateway.security import bearer_token
from dfms.runtime.logs import get_logger

log = get_logger("gateway.ratelimit")

DECISIONS = Counter("dfms_ratelimit_decisions_total", "Rate-limit decisions",
                    ["class", "outcome"])
REDIS_ERRORS = Counter("dfms_ratelimit_redis_errors_total",
                       "Rate-limit checks that failed because Redis did not answer")

WARN_INTERVAL_S = 30.0
# After a failed check, requests skip Redis this long (one probe goes through
# meanwhile): redis-py retries a dead server for seconds, and every request
# waiting for that would turn fail-open into an outage.
BACKOFF_S = 1.0
TOKEN_CACHE_SIZE = 4096

# --- classes of endpoint -----------------------------------------------------

AUTH, UPLOAD, DOWNLOAD, OTHER = "auth", "upload", "download", "other"

UNLIMITED_PATHS = frozenset({"/health", "/ready", "/metrics", "/.well-known/jwks.json",
                             f"{API_PREFIX}/openapi.yaml"})
AUTH_PATHS = frozenset(f"{API_PREFIX}/auth/{name}" for name in ("login", "register", "refresh"))
UPLOAD_PATH = f"{API_PREFIX}/files/upload"
_PART_RE = re.compile(rf"^{re.escape(API_PREFIX)}/files/upload/multipart/[^/]+/part/[^/]+$")
_SHARE_RE = re.compile(r"^/s/[^/]+$")
_READ_METHODS = frozenset({"GET", "HEAD"})  # aiohttp answers HEAD with the GET handler


def classify(method: str, path: str) -> str | None:
    """The endpoint class of a request, or None when it is not rate limited."""
    if path in UNLIMITED_PATHS:
        return None
    if method in _READ_METHODS and _SHARE_RE.match(path):
        return DOWNLOAD
    if path != API_PREFIX and not path.startswith(API_PREFIX + "/"):
        return None
    if method == "POST" and path in AUTH_PATHS:
        return AUTH
    if (method == "POST" and path == UPLOAD_PATH) or (method == "PUT" and _PART_RE.match(path)):
        return UPLOAD
    if method in _READ_METHODS and path.endswith("/download"):
        return DOWNLOAD
    return OTHER


# --- keys ----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Limit:
    """One counter a request is checked against; ``name`` is used in messages."""

    name: str
    key: str
    limit: int


def build_limits(cfg: RateLimitConfig, cls: str, user_id: str | None,
                 addr: str) -> list[Limit]:
    """The keys of one request: global, caller, and caller within its class."""
    caller = (Limit("user", f"rl:user:{user_id}", cfg.user_per_window) if user_id
              else Limit("client address", f"rl:ip:{addr}", cfg.user_per_window))
    # Auth callers are not logged in yet: brute force is bounded per address.
    subject = addr if cls == AUTH or not user_id else user_id
    per_class = int(getattr(cfg, f"{cls}_per_window"))
    return [Limit("global", "rl:global", cfg.global_per_window), caller,
            Limit(cls, f"rl:{cls}:{subject}", per_class)]


# --- the limiter -----------------------------------------------------------------

# KEYS: the keys of one request. ARGV[1]: window (µs), ARGV[2]: a unique member,
# ARGV[2 + i]: the limit of KEYS[i]. Returns "allowed" and per key "requests in the
# window before this one, µs until the oldest leaves, µs until one more fits", as
# ONE space-separated string: parsing an array reply costs redis-py more CPU than
# the whole script costs Redis.
SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local window = tonumber(ARGV[1])
local out = {1}
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[i + 2])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  local count = redis.call('ZCARD', key)
  local reset, retry = 0, 0
  if count > 0 then
    reset = tonumber(redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')[2]) + window - now
  end
  if count >= limit then
    out[1] = 0
    local nth = redis.call('ZRANGE', key, count - limit, count - limit, 'WITHSCORES')
    retry = tonumber(nth[2]) + window - now
  end
  out[#out + 1] = string.format('%d %d %d', count, reset, retry)
end
if out[1] == 1 then
  for _, key in ipairs(KEYS) do
    redis.call('ZADD', key, now, ARGV[2])
    redis.call('PEXPIRE', key, math.ceil(window / 1000))
  end
end
return table.concat(out, ' ')
"""


@dataclass(frozen=True, slots=True)
class KeyState:
    limit: Limit
    count: int  # requests in the window before this one
    reset_us: int  # until the oldest of them leaves the window (0: none)
    retry_us: int  # until one more request fits (0: it fits now)


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: Limit  # the most constraining key
    remaining: int
    reset_s: int
    retry_after_s: int | None  # set when denied
    window_s: float

    @property
    def message(self) -> str:
        return (f"{self.limit.name} limit of {self.limit.limit} per "
                f"{self.window_s:g}s exceeded")


def _ceil_s(us: int) -> int:
    return math.ceil(us / 1_000_000)


def decide(states: Sequence[KeyState], allowed: bool, window_s: float) -> Decision:
    """The decision and header values from the per-key answers of the script."""
    window_us = round(window_s * 1_000_000)
    if not allowed:
        worst = max((s for s in states if s.count >= s.limit.limit), key=lambda s: s.retry_us)
        return Decision(False, worst.limit, 0, _ceil_s(worst.reset_us),
                        max(1, _ceil_s(worst.retry_us)), window_s)
    # This request now counts; on an empty key it is also the oldest entry.
    after = [(s.limit.limit - s.count - 1, s.reset_us if s.count else window_us, s.limit)
             for s in states]
    remaining, reset_us, limit = min(after, key=lambda a: (a[0], -a[1]))
    return Decision(True, limit, max(0, remaining), _ceil_s(reset_us), None, window_s)


def rate_headers(decision: Decision) -> dict[str, str]:
    headers = {"X-RateLimit-Limit": str(decision.limit.limit),
               "X-RateLimit-Remaining": str(decision.remaining),
               "X-RateLimit-Reset": str(decision.reset_s)}
    if decision.retry_after_s is not None:
        headers["Retry-After"] = str(decision.retry_after_s)
    return headers


class SlidingWindowLimiter:
    """Exact sliding-window counters, several keys per atomic check."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._script = client.register_script(SCRIPT)
        # Sorted-set members must be unique per request, across gateways.
        self._prefix = secrets.token_hex(6)
        self._seq = itertools.count()

    async def check(self, key: str, limit: int, window_s: float) -> Decision:
        return await self.check_all([Limit(key, key, limit)], window_s)

    async def check_all(self, limits: Sequence[Limit], window_s: float) -> Decision:
        """One round trip; counts the request only if every key allows it."""
        member = f"{self._prefix}:{next(self._seq)}"
        args: list[int | str] = [round(window_s * 1_000_000), member,
                                 *(lim.limit for lim in limits)]
        reply = await self._script(keys=[lim.key for lim in limits], args=args)
        raw = [int(v) for v in reply.split()]
        states = [KeyState(lim, *raw[1 + 3 * i:4 + 3 * i]) for i, lim in enumerate(limits)]
        return decide(states, raw[0] == 1, window_s)


# --- the gateway side ----------------------------------------------------------------

class CallerCache:
    """User ids of verified access tokens until they expire.

    ES256 verification costs ~250 µs of CPU, more than the Redis check, and a
    client sends the same token for minutes. The id only picks a bucket; the
    handlers still verify the token themselves. Invalid tokens are never cached,
    so a flood of forged ones cannot evict the real entries.
    """

    def __init__(self, tokens: TokenService, size: int = TOKEN_CACHE_SIZE) -> None:
        self._tokens = tokens
        self._size = size
        self._ids: OrderedDict[str, tuple[str, int]] = OrderedDict()

    def user_id(self, token: str | None) -> str | None:
        if token is None:
            return None
        hit = self._ids.get(token)
        if hit is not None and hit[1] > time.time():
            self._ids.move_to_end(token)
            return hit[0]
        try:
            claims = self._tokens.verify_access(token)
        except InvalidToken:
            return None
        self._ids[token] = (str(claims.user_id), claims.expires_at)
        if len(self._ids) > self._size:
            self._ids.popitem(last=False)
        return str(claims.user_id)


class Unavailable(Exception):
    """Redis did not answer a check (or is in its back-off after failing)."""


class RateLimitGuard:
    """The limiter plus what the gateway needs around it: failure back-off, warnings."""

    def __init__(self, cfg: RateLimitConfig, limiter: SlidingWindowLimiter,
                 callers: CallerCache, timeout_s: float) -> None:
        self.cfg = cfg
        self.limiter = limiter
        self.callers = callers
        self.timeout_s = timeout_s
        self._skip_until = 0.0
        self._failing = False
        self._last_warning = -math.inf
        self._unwarned = 0

    async def check(self, limits: Sequence[Limit]) -> Decision:
        now = time.monotonic()
        if now < self._skip_until:
            raise Unavailable("in back-off after a failed check")
        if self._failing:  # half-open: this request probes, the others keep skipping
            self._skip_until = now + BACKOFF_S
        try:
            # redis-py retries on its own; this bounds the whole check to one timeout.
            async with asyncio.timeout(self.timeout_s):
                decision = await self.limiter.check_all(limits, self.cfg.window_s)
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(exc)
            raise Unavailable(str(exc)) from exc
        self._failing, self._skip_until = False, 0.0
        return decision

    def recovered(self) -> None:
        """Redis answered elsewhere (the readiness check): end the back-off now."""
        self._failing, self._skip_until = False, 0.0

    def _failed(self, exc: Exception) -> None:
        REDIS_ERRORS.inc()
        now = time.monotonic()
        self._failing, self._skip_until = True, now + BACKOFF_S
        self._unwarned += 1
        if now - self._last_warning >= WARN_INTERVAL_S:
            log.warning("rate limiter cannot reach Redis", extra={
                "error": f"{type(exc).__name__}: {exc}"[:300], "errors": self._unwarned,
                "fail_open": self.cfg.fail_open})
            self._last_warning, self._unwarned = now, 0


GUARD_KEY = web.AppKey("ratelimit_guard", RateLimitGuard)
HEADERS_KEY = web.RequestKey("ratelimit_headers", dict)


@web.middleware
async def ratelimit_middleware(request: web.Request,
                               handler: Handler) -> web.StreamResponse:
    guard = request.config_dict.get(GUARD_KEY)
    cls = classify(request.method, request.path) if guard is not None else None
    if guard is None or cls is None:
        return await handler(request)
    user_id = guard.callers.user_id(bearer_token(request))
    limits = build_limits(guard.cfg, cls, user_id, request_client_address(request))
    try:
        decision = await guard.check(limits)
    except Unavailable:
        if guard.cfg.fail_open:
            DECISIONS.labels(cls, "fail_open").inc()
            return await handler(request)
        DECISIONS.labels(cls, "fail_closed").inc()
        raise RateLimiterUnavailable("Redis unreachable") from None
    headers = rate_headers(decision)
    if not decision.allowed:
        DECISIONS.labels(cls, "denied").inc()
        raise ApiError(429, "rate_limited", decision.message, headers)
    DECISIONS.labels(cls, "allowed").inc()
    request[HEADERS_KEY] = headers
    return await handler(request)


async def _add_headers(request: web.BaseRequest, response: web.StreamResponse) -> None:
    # Runs in prepare(), so streamed downloads and error envelopes get them too.
    headers = request.get(HEADERS_KEY)
    if headers:
        response.headers.update(headers)


async def _start_guard(app: web.Application) -> None:
    cfg = app[CONFIG_KEY]
    limiter = SlidingWindowLimiter(app[REDIS_KEY])
    app[GUARD_KEY] = RateLimitGuard(cfg.ratelimit, limiter, CallerCache(app[TOKENS_KEY]),
                                    cfg.redis.socket_timeout_s)


def middlewares() -> list[Middleware]:
    """Applied after the error envelope, so ApiError becomes the JSON error body."""
    return [ratelimit_middleware]


def setup(app: web.Application) -> None:
    """Disabled limits register nothing: no checks, no headers."""
    if not app[CONFIG_KEY].ratelimit.enabled:
        return
    # on_startup runs after every cleanup_ctx has started, so the Redis client exists.
    app.on_startup.append(_start_guard)
    app.on_response_prepare.append(_add_headers)
