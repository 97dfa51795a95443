"""Who is calling: bearer-token authentication for API handlers."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from aiohttp import web

from dfms.auth.tokens import AccessClaims
from dfms.gateway.context import PG_KEY, TOKENS_KEY
from dfms.gateway.errors import forbidden, unauthorized
from dfms.gateway.tracing import set_user


@dataclass(frozen=True, slots=True)
class AuthUser:
    id: uuid.UUID
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


USER_KEY = web.RequestKey("user", AuthUser)


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def access_claims(request: web.Request) -> AccessClaims:
    """The claims of the request's access token (no database): 401 when it has none or
    it does not verify. Whoever uses them must still ``admit`` the account."""
    token = bearer_token(request)
    if token is None:
        raise unauthorized()
    # An InvalidToken is answered by the error table: 401 invalid_token.
    return request.app[TOKENS_KEY].verify_access(token)


def admit(request: web.Request, claims: AccessClaims, role: str | None,
          is_active: bool) -> AuthUser:
    """The caller, once their account's row was read (``role`` None: there is none).

    A deactivated account loses access at once, not when its token expires: the row is
    read on every request, by ``authenticate`` or together with what a handler reads."""
    if role is None or not is_active:
        raise unauthorized("account is not active", code="invalid_token")
    user = AuthUser(claims.user_id, role)
    request[USER_KEY] = user
    set_user(user.id)
    return user


async def authenticate(request: web.Request) -> AuthUser:
    """The caller, from a valid access token of an active account; 401 otherwise."""
    cached = request.get(USER_KEY)
    if cached is not None:
        return cached
    claims = access_claims(request)
    row = await request.app[PG_KEY].fetchrow(
        "SELECT role, is_active FROM users WHERE id = $1", claims.user_id)
    if row is None:
        return admit(request, claims, None, False)
    return admit(request, claims, row["role"], row["is_active"])


async def require_admin(request: web.Request) -> AuthUser:
    user = await authenticate(request)
    if not user.is_admin:
        raise forbidden("administrator role required")
    return user
