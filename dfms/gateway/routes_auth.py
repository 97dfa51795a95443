"""Accounts and tokens: /auth/* and /.well-known/jwks.json.

The handlers only parse bodies and shape responses; the rules live in
``dfms.auth`` (accounts, passwords, refresh-token families).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aiohttp import web

from dfms.auth import accounts, refresh
from dfms.auth.errors import AuthError
from dfms.auth.metrics import record
from dfms.auth.passwords import Argon2Params, dummy_hash_async
from dfms.gateway.context import API_PREFIX, CONFIG_KEY, PG_KEY, TOKENS_KEY
from dfms.gateway.errors import not_found
from dfms.gateway.http import field, only_fields, read_json
from dfms.gateway.security import authenticate

# Token responses must never be cached by browsers or proxies (RFC 6749 §5.1).
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
FLAT_TOKEN_FIELDS = ("access_token", "refresh_token", "token_type", "expires_in")
_EVENT_BY_CODE = {"refresh_token_reused": "refresh_reused", "account_disabled": "login_disabled"}


@contextmanager
def _outcome(action: str) -> Iterator[None]:
    """Count ``<action>_ok`` or the failure event; the error table answers auth errors."""
    try:
        yield
    except AuthError as exc:
        record(_EVENT_BY_CODE.get(exc.code, f"{action}_failed"))
        raise
    record(f"{action}_ok")


def _session(request: web.Request, user: accounts.User, refresh_token: str,
             status: int = 200) -> web.Response:
    """``{user, tokens}`` plus flat copies of the token fields for older clients."""
    tokens = request.app[TOKENS_KEY]
    pair: dict[str, Any] = {
        "access_token": tokens.issue_access(user.id, user.role),
        "refresh_token": refresh_token, "token_type": "Bearer",
        "expires_in": tokens.access_ttl_s,
        "refresh_expires_in": request.app[CONFIG_KEY].auth.refresh_token_ttl_s}
    body = {"user": user.public(), "tokens": pair,
            **{name: pair[name] for name in FLAT_TOKEN_FIELDS}}
    return web.json_response(body, status=status, headers=NO_STORE)


async def register(request: web.Request) -> web.Response:
    """POST {email, password, display_name} → 201 {user, tokens}."""
    doc = await read_json(request)
    only_fields(doc, ("email", "password", "display_name"))
    email, password = field(doc, "email", str), field(doc, "password", str)
    display_name = field(doc, "display_name", str)
    cfg = request.app[CONFIG_KEY].auth
    with _outcome("register"):
        # Validate and hash before taking a connection; insert user and token together.
        new = await accounts.prepare_user(cfg, email=email, password=password,
                                          display_name=display_name)
        async with request.app[PG_KEY].acquire() as conn, conn.transaction():
            user = await accounts.insert_user(conn, new)
            token = await refresh.issue(conn, user.id, cfg.refresh_token_ttl_s)
    return _session(request, user, token, status=201)


async def login(request: web.Request) -> web.Response:
    """POST {email, password} → 200 {user, tokens}; 401 invalid_credentials."""
    doc = await read_json(request)
    only_fields(doc, ("email", "password"))
    email, password = field(doc, "email", str), field(doc, "password", str)
    cfg = request.app[CONFIG_KEY].auth
    pool = request.app[PG_KEY]
    with _outcome("login"):
        user = await accounts.authenticate(pool, cfg, email, password)
    token = await refresh.issue(pool, user.id, cfg.refresh_token_ttl_s)
    return _session(request, user, token)


async def refresh_tokens(request: web.Request) -> web.Response:
    """POST {refresh_token} → 200 a new pair; the presented token is retired.

    401 ``invalid_refresh_token`` (unknown, expired, revoked, disabled account) or
    ``refresh_token_reused`` (already rotated: its whole family is now revoked).
    """
    doc = await read_json(request)
    only_fields(doc, ("refresh_token",))
    token = field(doc, "refresh_token", str)
    ttl_s = request.app[CONFIG_KEY].auth.refresh_token_ttl_s
    with _outcome("refresh"):
        async with request.app[PG_KEY].acquire() as conn:
            rotation = await refresh.rotate(conn, token, ttl_s)
    return _session(request, rotation.user, rotation.refresh_token)


async def logout(request: web.Request) -> web.Response:
    """POST (authenticated), optional body {refresh_token} → 204.

    With a refresh token: revokes that token's family, i.e. signs out the one
    session it belongs to (a token that is unknown or not the caller's revokes
    nothing, silently). Without one: revokes every refresh token of the caller,
    signing out all sessions. Access tokens already issued stay valid until they
    expire (at most ``access_token_ttl_s``); they are not tracked server-side.
    """
    user = await authenticate(request)
    doc = await read_json(request) if request.body_exists else {}
    only_fields(doc, ("refresh_token",))
    token = field(doc, "refresh_token", str, required=False)
    pool = request.app[PG_KEY]
    if token:
        await refresh.revoke_family_of(pool, user.id, token)
    else:
        await refresh.revoke_all(pool, user.id)
    record("logout")
    return web.Response(status=204, headers=NO_STORE)


async def me(request: web.Request) -> web.Response:
    """GET → the caller's user object."""
    caller = await authenticate(request)
    user = await accounts.get_user(request.app[PG_KEY], caller.id)
    if user is None:  # deleted between authentication and now
        raise not_found("user")
    return web.json_response(user.public(), headers={"Cache-Control": "no-store"})


async def jwks(request: web.Request) -> web.Response:
    """The public keys that verify access tokens (every known kid, current and older)."""
    return web.json_response(request.app[TOKENS_KEY].jwks(),
                             headers={"Cache-Control": "public, max-age=300"})


async def _warm_dummy_hash(app: web.Application) -> None:
    """Compute the dummy hash at start-up so the first unknown-email login is not slower."""
    await dummy_hash_async(Argon2Params.from_config(app[CONFIG_KEY].auth))


def setup_routes(app: web.Application) -> None:
    base = f"{API_PREFIX}/auth"
    app.router.add_post(f"{base}/register", register)
    app.router.add_post(f"{base}/login", login)
    app.router.add_post(f"{base}/refresh", refresh_tokens)
    app.router.add_post(f"{base}/logout", logout)
    app.router.add_get(f"{base}/me", me)
    app.router.add_get("/.well-known/jwks.json", jwks)
    app.on_startup.append(_warm_dummy_hash)
