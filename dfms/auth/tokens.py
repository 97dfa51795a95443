"""ES256 access tokens (PyJWT) signed with the current key, verified with any known key.

Claims: ``iss``, ``aud``, ``sub`` (user id), ``role``, ``typ`` ("access"),
``iat``, ``exp``, ``jti``; the header carries ``kid``. Only ES256 is
accepted, so ``alg: none`` and HMAC tricks fail verification.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from dfms.config import AuthConfig
from dfms.errors import DfmsError
from dfms.keys import SigningKey, load_keys

ALGORITHM = "ES256"
ACCESS = "access"
CLOCK_SKEW_S = 30
# Opaque refresh tokens start with this (see dfms.auth.refresh); named here so a
# refresh token presented as a bearer token gets a clear refusal.
REFRESH_TOKEN_PREFIX = "dfmsr_"
# Verified access tokens remembered (see TokenService.verify_access): a client sends
# the same token for its whole lifetime, and ES256 verification costs ~250 µs of CPU.
VERIFIED_CACHE_SIZE = 4096


class InvalidToken(DfmsError):
    """A token that does not verify: bad signature, expired, wrong type or audience."""


@dataclass(frozen=True, slots=True)
class AccessClaims:
    user_id: uuid.UUID
    role: str
    token_id: str
    expires_at: int


def _b64(n: int) -> str:
    return base64.urlsafe_b64encode(n.to_bytes(32, "big")).decode().rstrip("=")


class TokenService:
    def __init__(self, cfg: AuthConfig, keys_dir: Path | None = None) -> None:
        self._cfg = cfg
        self._current, self._keys = load_keys(keys_dir or Path(cfg.keys_dir))
        self._verified: OrderedDict[str, AccessClaims] = OrderedDict()

    @property
    def access_ttl_s(self) -> int:
        return self._cfg.access_token_ttl_s

    def issue_access(self, user_id: uuid.UUID, role: str, *, now: float | None = None) -> str:
        issued = int(now if now is not None else time.time())
        claims = {"iss": self._cfg.issuer, "aud": self._cfg.audience, "sub": str(user_id),
                  "role": role, "typ": ACCESS, "iat": issued,
                  "exp": issued + self._cfg.access_token_ttl_s, "jti": uuid.uuid4().hex}
        return jwt.encode(claims, self._current.private_key, algorithm=ALGORITHM,
                          headers={"kid": self._current.kid, "typ": "JWT"})

    def verify_access(self, token: str) -> AccessClaims:
        """The claims of a valid access token; InvalidToken otherwise.

        A token that verified is remembered by its exact string until its ``exp`` (never
        longer, so the leeway after it is judged by a full verification as before), in a
        bounded LRU. Its claims are a function of the string and the keys alone, which
        never change while the service runs; what can change (the account's state, its
        role) is read from the database by the caller on every request. Tokens that fail
        are never remembered, so forged ones cannot evict real ones."""
        hit = self._verified.get(token)
        if hit is not None:
            if time.time() < hit.expires_at:
                self._verified.move_to_end(token)
                return hit
            del self._verified[token]
        claims = self._verify(token)
        if time.time() < claims.expires_at:
            self._verified[token] = claims
            if len(self._verified) > VERIFIED_CACHE_SIZE:
                self._verified.popitem(last=False)
        return claims

    def _verify(self, token: str) -> AccessClaims:
        if token.startswith(REFRESH_TOKEN_PREFIX):
            raise InvalidToken("a refresh token cannot be used as an access token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise InvalidToken("malformed token") from exc
        key = self._keys.get(str(header.get("kid", "")))
        if key is None or header.get("alg") != ALGORITHM:
            raise InvalidToken("token not signed by a known key")
        try:
            claims = jwt.decode(token, key.public_key, algorithms=[ALGORITHM],
                                audience=self._cfg.audience, issuer=self._cfg.issuer,
                                leeway=CLOCK_SKEW_S,
                                options={"require": ["exp", "iat", "sub", "typ", "aud", "iss"]})
        except jwt.ExpiredSignatureError as exc:
            raise InvalidToken("token expired") from exc
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"invalid token: {exc}") from exc
        if claims.get("typ") != ACCESS:
            raise InvalidToken("not an access token")
        try:
            user_id = uuid.UUID(str(claims["sub"]))
        except ValueError as exc:
            raise InvalidToken("invalid subject") from exc
        return AccessClaims(user_id, str(claims.get("role", "user")), str(claims.get("jti")),
                            int(claims["exp"]))

    def jwks(self) -> dict[str, Any]:
        keys = []
        for kid, key in sorted(self._keys.items()):
            numbers = key.public_key.public_numbers()
            keys.append({"kty": "EC", "crv": "P-256", "alg": ALGORITHM, "use": "sig",
                         "kid": kid, "x": _b64(numbers.x), "y": _b64(numbers.y)})
        return {"keys": keys}

    @property
    def current_key(self) -> SigningKey:
        return self._current
