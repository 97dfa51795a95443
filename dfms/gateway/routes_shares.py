"""Share links: presigned download URLs anyone holding them can use without an account.

Operations
----------
``POST /api/v1/files/{file_id}/share`` {expires_in_s?, max_downloads?, password?}
    The owner makes a link (another user's file is 404). 201 with ``url`` and
    ``token``: the only time the token is ever shown; only its hash is stored.
``GET /api/v1/shares`` (?page, ?per_page, ?file_id)
    The caller's links, newest first; each names its share ``id`` (the id inside
    the token), never the token.
``DELETE /api/v1/shares/{token or share id}``
    Revoke (204; revoking again is a no-op). A link of another user is 404.
``GET|HEAD /s/{token}``
    The download, with everything ``/files/{id}/download`` supports (ranges,
    ETag/If-None-Match, If-Range, Content-Disposition), always the file's current
    version. Tokens are checked in this order: signature (forged → 404
    ``not_found``, no database query), existence (404), link state (410
    ``link_revoked`` / ``link_expired`` / ``link_exhausted``), the file (410
    ``file_unavailable`` when it is in the trash, purged, or its owner's account
    is deactivated), then the password.

Passwords
---------
Sent in the ``X-Share-Password`` header (preferred: it stays out of logs and
browser history), percent-encoded UTF-8 like ``X-File-Name`` (plain ASCII
without ``%`` needs no encoding), or as the ``password`` query parameter (for
plain browser links). The header wins when both are given. Missing → 401
``password_required``; wrong → 401 ``wrong_password``. Wrong passwords are
counted per link and client address in Redis (``rl:sharepw:<share id>:<addr>``,
the gateway's ``SlidingWindowLimiter``): after
``shares.password_attempts_per_window`` wrong ones within
``ratelimit.window_s`` the address is locked out of that link (429
``rate_limited`` with ``Retry-After``, even for the right password) until the
oldest of them leaves the window. This applies even when ``ratelimit.enabled``
is false; when Redis is unreachable ``ratelimit.fail_open`` decides (let the
attempt through, or 503).

What counts as a download
-------------------------
Only GET responses that send the file's content: 200 and 206 (a ranged
response counts too, otherwise ``Range: bytes=0-`` would bypass
``max_downloads``). HEAD, 304 Not Modified, 416 and failures before the
response headers (storage unavailable) do not count. The count is reserved
atomically before streaming, so two concurrent downloads of a 1-download link
give one 200 and one 410; a response that sends no content gives its
reservation back. A download that breaks off mid-body stays counted (bytes went
out; otherwise aborting near the end would allow unlimited downloads).

Metrics: ``dfms_share_downloads_total{outcome}``.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import asyncpg
from aiohttp import web
from prometheus_client import Counter
from redis.exceptions import RedisError

from dfms.auth.passwords import (
    MAX_PASSWORD_CHARS,
    Argon2Params,
    hash_password_async,
    normalize_password,
    verify_password_async,
)
from dfms.auth.share_tokens import ShareTokens, load_or_create_secret, token_hash
from dfms.errors import RateLimiterUnavailable
from dfms.events.outbox import emit
from dfms.events.topics import FILES_TOPIC, SHARE_USED
from dfms.gateway.client_address import request_client_address
from dfms.gateway.context import API_PREFIX, CONFIG_KEY, PG_KEY, REDIS_KEY
from dfms.gateway.error_table import api_error
from dfms.gateway.errors import ApiError, bad_request, not_found
from dfms.gateway.http import int_param, only_fields, parse_uuid, read_json
from dfms.gateway.ratelimit import SlidingWindowLimiter
from dfms.gateway.security import authenticate
from dfms.gateway.serve import serve_content
from dfms.metadata import namespace as ns
from dfms.metadata import shares
from dfms.runtime.logs import get_logger

log = get_logger("gateway.shares")

PASSWORD_HEADER = "X-Share-Password"
MAX_DOWNLOADS_LIMIT = 2**31 - 1  # the column is a PostgreSQL integer
NO_STORE = {"Cache-Control": "no-store"}
# A 401 must name a scheme (RFC 9110 §11.6.1); browsers show no dialog for this one.
PASSWORD_CHALLENGE = {"WWW-Authenticate": f'SharePassword realm="dfms", header="{PASSWORD_HEADER}"'}

DOWNLOADS = Counter("dfms_share_downloads_total",
                    "Requests to share links (GET/HEAD /s/{token}) by outcome", ["outcome"])
OUTCOMES = ("ok", "head", "not_modified", "not_found", "expired", "revoked", "exhausted",
            "file_unavailable", "password_required", "wrong_password", "rate_limited",
            "range_not_satisfiable", "error", "aborted")
for _outcome in OUTCOMES:
    DOWNLOADS.labels(_outcome)

_STATE_ERRORS = {
    shares.EXPIRED: ("expired", "link_expired", "this share link has expired"),
    shares.REVOKED: ("revoked", "link_revoked", "this share link was revoked by its owner"),
    shares.EXHAUSTED: ("exhausted", "link_exhausted",
                       "this share link has reached its download limit"),
}


@dataclass(frozen=True, slots=True)
class ShareContext:
    tokens: ShareTokens
    limiter: SlidingWindowLimiter


SHARES_KEY = web.AppKey("shares", ShareContext)


# --- shapes and validation ---------------------------------------------------------

def _iso(value: Any) -> str | None:
    return None if value is None else value.isoformat()


def share_json(row: shares.ShareRow) -> dict[str, Any]:
    return {"id": str(row.id), "file_id": str(row.file_id), "file_name": row.file_name,
            "file_available": row.file_available, "created_at": _iso(row.created_at),
            "expires_at": _iso(row.expires_at), "max_downloads": row.max_downloads,
            "download_count": row.download_count, "has_password": row.has_password,
            "revoked": row.revoked_at is not None, "revoked_at": _iso(row.revoked_at),
            "state": row.state}


def _int_field(doc: dict[str, Any], name: str, default: int | None, lo: int,
               hi: int) -> int | None:
    value = doc.get(name)
    if value is None:
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON has one number type: 3600.0 is the integer 3600
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_request("validation_error", f"'{name}' must be an integer")
    if not lo <= value <= hi:
        raise bad_request("validation_error", f"'{name}' must be between {lo} and {hi}")
    return value


@dataclass(frozen=True, slots=True)
class ShareRequest:
    expires_in_s: int
    max_downloads: int | None
    password: str | None


def parse_share_request(doc: dict[str, Any], max_expiry_s: int,
                        default_expiry_s: int) -> ShareRequest:
    only_fields(doc, ("expires_in_s", "max_downloads", "password"))
    expires = _int_field(doc, "expires_in_s", min(default_expiry_s, max_expiry_s), 60,
                         max_expiry_s)
    assert expires is not None
    max_downloads = _int_field(doc, "max_downloads", None, 1, MAX_DOWNLOADS_LIMIT)
    password = doc.get("password")
    if password is not None:
        if not isinstance(password, str):
            raise bad_request("validation_error", "'password' must be a string")
        if not 1 <= len(normalize_password(password)) <= MAX_PASSWORD_CHARS:
            raise bad_request("validation_error", "'password' must be 1 to "
                              f"{MAX_PASSWORD_CHARS} characters long")
    return ShareRequest(expires, max_downloads, password)


def _share_url(request: web.Request, token: str) -> str:
    base = request.app[CONFIG_KEY].gateway.public_url.strip().rstrip("/")
    return f"{base or request.url.origin()}/s/{token}"


# --- the owner's operations ----------------------------------------------------------

async def create_share(request: web.Request) -> web.Response:
    user = await authenticate(request)
    file_id = parse_uuid(request.match_info["file_id"], "file")
    cfg = request.app[CONFIG_KEY]
    doc = await read_json(request) if request.body_exists else {}
    wanted = parse_share_request(doc, cfg.shares.max_expiry_s, cfg.shares.default_expiry_s)
    pool = request.app[PG_KEY]
    if await ns.get_file(pool, user.id, file_id) is None:
        raise not_found("file")
    pw_hash = None
    if wanted.password is not None:
        pw_hash = await hash_password_async(wanted.password, Argon2Params.from_config(cfg.auth))
    minted = request.app[SHARES_KEY].tokens.mint()
    try:
        row = await shares.create(pool, share_id=minted.id, token_hash=minted.token_hash,
                                  file_id=file_id, owner_id=user.id,
                                  expires_in_s=wanted.expires_in_s,
                                  max_downloads=wanted.max_downloads, password_hash=pw_hash)
    except asyncpg.ForeignKeyViolationError:  # purged meanwhile
        raise not_found("file") from None
    body = {**share_json(row), "url": _share_url(request, minted.token), "token": minted.token}
    return web.json_response(body, status=201, headers=NO_STORE)


async def list_shares(request: web.Request) -> web.Response:
    user = await authenticate(request)
    gw = request.app[CONFIG_KEY].gateway
    per_page = int_param(request, "per_page", gw.page_size_default, 1, gw.page_size_max)
    page = int_param(request, "page", 1, 1, 10_000_000)
    file_id = None
    if "file_id" in request.query:
        try:
            file_id = uuid.UUID(request.query["file_id"])
        except ValueError:
            raise bad_request("validation_error", "'file_id' must be a UUID") from None
    rows, total = await shares.list_owned(request.app[PG_KEY], user.id, limit=per_page,
                                          offset=(page - 1) * per_page, file_id=file_id)
    return web.json_response({"items": [share_json(r) for r in rows], "total": total,
                              "page": page, "per_page": per_page})


def _share_id_of(request: web.Request, ref: str) -> uuid.UUID:
    """A share id, or the id inside a (genuine) token."""
    try:
        return uuid.UUID(ref)
    except ValueError:
        pass
    share_id = request.app[SHARES_KEY].tokens.verify(ref)
    if share_id is None:
        raise not_found("share link")
    return share_id


async def revoke_share(request: web.Request) -> web.Response:
    user = await authenticate(request)
    share_id = _share_id_of(request, request.match_info["ref"])
    if not await shares.revoke(request.app[PG_KEY], user.id, share_id):
        raise not_found("share link")
    return web.Response(status=204)


# --- the public download ---------------------------------------------------------------

def _fail(outcome: str, status: int, code: str, message: str,
          headers: dict[str, str] | None = None) -> ApiError:
    DOWNLOADS.labels(outcome).inc()
    return ApiError(status, code, message, {**NO_STORE, **(headers or {})})


def _state_error(row: shares.ShareRow) -> ApiError:
    outcome, code, message = _STATE_ERRORS.get(row.state, _STATE_ERRORS[shares.EXHAUSTED])
    return _fail(outcome, 410, code, message)


def _supplied_password(request: web.Request) -> str | None:
    raw = request.headers.get(PASSWORD_HEADER)
    if raw:
        try:
            return unquote(raw, errors="strict")
        except UnicodeDecodeError:
            raise bad_request("validation_error", f"{PASSWORD_HEADER} must be "
                              "percent-encoded UTF-8") from None
    return request.query.get("password") or None


def _retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


async def _guarded(request: web.Request, what: str, call: Any) -> Any:
    """A Redis call of the password limiter; on failure ``ratelimit.fail_open`` decides
    (None: go on without it)."""
    cfg = request.app[CONFIG_KEY]
    try:
        async with asyncio.timeout(cfg.redis.socket_timeout_s):
            return await call
    except (RedisError, OSError, TimeoutError) as exc:
        log.warning("share password limiter cannot reach Redis",
                    extra={"step": what, "error": f"{type(exc).__name__}: {exc}"[:300],
                           "fail_open": cfg.ratelimit.fail_open})
        if cfg.ratelimit.fail_open:
            return None
        answer = api_error(RateLimiterUnavailable("Redis unreachable"))
        raise ApiError(answer.status, answer.code, answer.message,
                       {**NO_STORE, **answer.headers}) from None


async def _check_password(request: web.Request, row: shares.ShareRow) -> None:
    assert row.password_hash is not None
    supplied = _supplied_password(request)
    if supplied is None:
        raise _fail("password_required", 401, "password_required",
                    f"this share link needs a password: send it in the {PASSWORD_HEADER} "
                    "header (or the 'password' query parameter)", PASSWORD_CHALLENGE)
    cfg = request.app[CONFIG_KEY]
    redis = request.app[REDIS_KEY]
    key = f"rl:sharepw:{row.id}:{request_client_address(request)}"
    lock_key = f"{key}:locked"
    # Locked out: refuse before verifying, or guessing would go on at full speed.
    ttl_ms = await _guarded(request, "lock", redis.pttl(lock_key))
    if ttl_ms is not None and ttl_ms > 0:
        raise _fail("rate_limited", 429, "rate_limited",
                    "too many wrong passwords for this share link; try again later",
                    _retry_after(ttl_ms / 1000))
    if await verify_password_async(supplied, row.password_hash):
        return
    limit = cfg.shares.password_attempts_per_window
    decision = await _guarded(request, "count", request.app[SHARES_KEY].limiter.check(
        key, limit, cfg.ratelimit.window_s))
    if decision is not None and (not decision.allowed or decision.remaining == 0):
        # The window is full: lock until its oldest wrong attempt leaves it.
        lock_s = decision.retry_after_s if not decision.allowed else decision.reset_s
        await _guarded(request, "lock", redis.set(lock_key, b"1",
                                                  px=max(1000, int(lock_s * 1000))))
    if decision is not None and not decision.allowed:
        raise _fail("rate_limited", 429, "rate_limited",
                    "too many wrong passwords for this share link; try again later",
                    _retry_after(decision.retry_after_s or 1))
    raise _fail("wrong_password", 401, "wrong_password",
                "wrong password for this share link", PASSWORD_CHALLENGE)


async def download(request: web.Request) -> web.StreamResponse:
    token = request.match_info["token"]
    share_id = request.app[SHARES_KEY].tokens.verify(token)
    if share_id is None:  # forged or mangled: no database work at all
        raise _fail("not_found", 404, "not_found", "share link not found")
    pool = request.app[PG_KEY]
    row = await shares.get_by_token_hash(pool, token_hash(token))
    if row is None or row.id != share_id:
        raise _fail("not_found", 404, "not_found", "share link not found")
    if row.state != shares.ACTIVE:
        raise _state_error(row)
    file = await ns.get_file(pool, row.owner_id, row.file_id) if row.file_available else None
    if file is None:
        raise _fail("file_unavailable", 410, "file_unavailable",
                    "the shared file is no longer available")
    if row.password_hash is not None:
        await _check_password(request, row)
    if request.method == "HEAD":
        response = await serve_content(request, file)
        DOWNLOADS.labels("head").inc()
        return response
    count = await shares.reserve_download(pool, row.id)
    if count is None:
        # Lost the last download to a concurrent request (or expired/revoked just now).
        now = await shares.get_by_token_hash(pool, token_hash(token))
        raise _state_error(now or row)
    try:
        response = await serve_content(request, file)
    except ConnectionResetError:  # broke off mid-body: content went out, it counts
        DOWNLOADS.labels("aborted").inc()
        raise
    except Exception as exc:  # nothing was sent: give the download back
        await shares.release_download(pool, row.id)
        status = exc.status if isinstance(exc, ApiError) else 500
        DOWNLOADS.labels("range_not_satisfiable" if status == 416 else "error").inc()
        raise
    if response.status in (200, 206):
        DOWNLOADS.labels("ok").inc()
        await _announce_use(pool, row, file, count)
    else:  # 304: the client has it already
        await shares.release_download(pool, row.id)
        DOWNLOADS.labels("not_modified").inc()
    return response


async def _announce_use(pool: asyncpg.Pool, row: shares.ShareRow, file: ns.FileRow,
                        count: int) -> None:
    """share.used for the owner's live stream, once the content went out (the counted
    reservation committed before; a 304 or a failure gives it back and is no use)."""
    async with pool.acquire() as conn:
        await emit(conn, FILES_TOPIC, str(row.file_id), SHARE_USED, {
            "owner_id": str(row.owner_id), "share_id": str(row.id),
            "file_id": str(row.file_id), "name": file.name, "download_count": count})


# --- wiring ------------------------------------------------------------------------

async def _start(app: web.Application) -> None:
    """Load (or create) the token secret; on_startup runs after the Redis client exists."""
    keys_dir = Path(app[CONFIG_KEY].auth.keys_dir)
    secret = await asyncio.to_thread(load_or_create_secret, keys_dir)
    app[SHARES_KEY] = ShareContext(ShareTokens(secret), SlidingWindowLimiter(app[REDIS_KEY]))


def setup_routes(app: web.Application) -> None:
    app.router.add_post(f"{API_PREFIX}/files/{{file_id}}/share", create_share)
    app.router.add_get(f"{API_PREFIX}/shares", list_shares)
    app.router.add_delete(f"{API_PREFIX}/shares/{{ref}}", revoke_share)
    app.router.add_get("/s/{token}", download)  # HEAD too
    app.on_startup.append(_start)
