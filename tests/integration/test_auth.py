"""Accounts and tokens against the real gateway of the session cluster."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from dfms.auth.tokens import TokenService
from dfms.keys import generate_key
from tests.support.api import PASSWORD, Api, ApiUser
from tests.support.cluster import ClusterHandle

Response = tuple[int, Any, Any]


def assert_error(resp: Response, status: int, code: str) -> dict[str, Any]:
    """The response is an error with the standard envelope and a request id."""
    got, body, headers = resp
    assert got == status, body
    err = body["error"]
    assert err["code"] == code, err
    assert err["message"]
    assert err["request_id"] and err["request_id"] == headers["X-Request-Id"]
    return dict(err)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def new_email(tag: str = "user") -> str:
    return f"{tag}-{uuid.uuid4().hex[:12]}@example.com"


async def login(api: Api, email: str, password: str = PASSWORD) -> Response:
    return await api.request("POST", "/auth/login", json={"email": email, "password": password})


async def refresh(api: Api, token: str) -> Response:
    return await api.request("POST", "/auth/refresh", json={"refresh_token": token})


# --- registration ---------------------------------------------------------------------------

async def test_register_answers_user_and_tokens(api: Api, cluster: ClusterHandle) -> None:
    email = new_email()
    status, body, headers = await api.request("POST", "/auth/register", json={
        "email": f"  {email.upper()} ", "password": PASSWORD, "display_name": " Ada "})
    assert status == 201, body
    assert headers["Cache-Control"] == "no-store"
    user, tokens = body["user"], body["tokens"]
    assert set(user) == {"id", "email", "display_name", "role", "created_at"}
    assert uuid.UUID(user["id"])
    assert (user["email"], user["display_name"], user["role"]) == (email, "Ada", "user")
    assert tokens["token_type"] == "Bearer"
    assert tokens["expires_in"] == cluster.config.auth.access_token_ttl_s
    assert tokens["refresh_token"].startswith("dfmsr_")
    assert jwt.get_unverified_header(tokens["access_token"])["alg"] == "ES256"
    for name in ("access_token", "refresh_token", "token_type", "expires_in"):
        assert body[name] == tokens[name]  # flat copies for older clients


async def test_duplicate_email_is_refused_case_insensitively(api: Api) -> None:
    email = new_email("dup")
    await api.register(email=email)
    resp = await api.request("POST", "/auth/register", json={
        "email": email.upper(), "password": PASSWORD, "display_name": "Again"})
    assert_error(resp, 409, "email_taken")


@pytest.mark.parametrize(("password", "words"), [
    ("short", "at least 10"), ("aaaaaaaaaaaaaaa", "repeated"), ("x" * 2000 + "y", "at most")])
async def test_weak_password_is_refused_with_the_rule(api: Api, password: str,
                                                      words: str) -> None:
    resp = await api.request("POST", "/auth/register", json={
        "email": new_email(), "password": password, "display_name": "Weak"})
    assert words in assert_error(resp, 400, "weak_password")["message"]


async def test_password_equal_to_email_is_refused(api: Api) -> None:
    email = new_email()
    resp = await api.request("POST", "/auth/register", json={
        "email": email, "password": email.upper(), "display_name": "Same"})
    assert "email" in assert_error(resp, 400, "weak_password")["message"]


@pytest.mark.parametrize("email", ["not-an-email", "a@b", "two@@example.com", "sp ace@x.com"])
async def test_invalid_email_is_refused(api: Api, email: str) -> None:
    resp = await api.request("POST", "/auth/register", json={
        "email": email, "password": PASSWORD, "display_name": "Bad"})
    assert_error(resp, 400, "invalid_email")


@pytest.mark.parametrize("body", [
    {"email": "x@example.com", "password": PASSWORD, "display_name": "   "},
    {"email": "x@example.com", "password": PASSWORD, "display_name": "a\x00b"},
    {"email": "x@example.com", "password": PASSWORD, "display_name": "n" * 101},
    {"email": "x@example.com", "password": PASSWORD},
    {"email": 5, "password": PASSWORD, "display_name": "Typed"},
])
async def test_bad_registration_fields(api: Api, body: dict[str, Any]) -> None:
    resp = await api.request("POST", "/auth/register", json=body)
    assert_error(resp, 400, "validation_error")


async def test_non_json_body_is_refused(api: Api) -> None:
    resp = await api.request("POST", "/auth/register", data=b"{not json")
    assert_error(resp, 400, "invalid_json")


# --- login and /me --------------------------------------------------------------------------

async def test_login_and_me(api: Api) -> None:
    user = await api.register(display_name="Grace")
    status, body, _ = await login(api, f" {user.email.upper()}")
    assert status == 200, body
    assert body["user"]["id"] == user.id
    assert body["tokens"]["refresh_token"] != user.refresh_token
    status, me, _ = await api.request("GET", "/auth/me",
                                      headers=bearer(body["tokens"]["access_token"]))
    assert status == 200, me
    assert me["id"] == user.id and me["email"] == user.email
    assert (me["display_name"], me["role"]) == ("Grace", "user")


async def test_wrong_password_and_unknown_email_look_the_same(api: Api) -> None:
    user = await api.register()
    wrong = assert_error(await login(api, user.email, PASSWORD + "!"), 401,
                         "invalid_credentials")
    unknown = assert_error(await login(api, new_email("ghost")), 401, "invalid_credentials")
    malformed = assert_error(await login(api, "not-an-email"), 401, "invalid_credentials")
    assert wrong["message"] == unknown["message"] == malformed["message"]


async def test_me_needs_a_token(api: Api) -> None:
    assert_error(await api.request("GET", "/auth/me"), 401, "unauthorized")


# --- refresh rotation -----------------------------------------------------------------------

async def test_refresh_rotates_and_reuse_revokes_the_family(api: Api) -> None:
    user = await api.register()
    status, first, _ = await refresh(api, user.refresh_token)
    assert status == 200, first
    new_access, new_refresh = first["access_token"], first["refresh_token"]
    assert new_refresh != user.refresh_token
    assert first["user"]["id"] == user.id
    status, _, _ = await api.request("GET", "/auth/me", headers=bearer(new_access))
    assert status == 200

    status, second, _ = await refresh(api, new_refresh)  # the new pair works
    assert status == 200, second
    newest = second["refresh_token"]

    # Replaying a retired token: reuse detected, every token of the family revoked.
    assert_error(await refresh(api, user.refresh_token), 401, "refresh_token_reused")
    assert_error(await refresh(api, newest), 401, "invalid_refresh_token")
    assert_error(await refresh(api, new_refresh), 401, "invalid_refresh_token")


async def test_reuse_revokes_only_that_family(api: Api) -> None:
    user = await api.register()
    _, other_session, _ = await login(api, user.email)
    assert (await refresh(api, user.refresh_token))[0] == 200
    assert_error(await refresh(api, user.refresh_token), 401, "refresh_token_reused")
    status, body, _ = await refresh(api, other_session["refresh_token"])
    assert status == 200, body


async def test_concurrent_refresh_of_one_token(api: Api) -> None:
    user = await api.register()
    results = await asyncio.gather(*(refresh(api, user.refresh_token) for _ in range(2)))
    ok = [r for r in results if r[0] == 200]
    failed = [r for r in results if r[0] != 200]
    assert len(ok) == 1 and len(failed) == 1, [r[:2] for r in results]
    assert_error(failed[0], 401, "refresh_token_reused")
    # The reuse revoked the family, including the token the winner just received.
    assert_error(await refresh(api, ok[0][1]["refresh_token"]), 401, "invalid_refresh_token")


async def test_expired_and_unknown_refresh_tokens(api: Api,
                                                  pg: asyncpg.Connection) -> None:
    user = await api.register()
    await pg.execute("UPDATE refresh_tokens SET expires_at = now() - interval '1 second' "
                     "WHERE user_id = $1", uuid.UUID(user.id))
    assert_error(await refresh(api, user.refresh_token), 401, "invalid_refresh_token")
    assert_error(await refresh(api, "dfmsr_" + "A" * 43), 401, "invalid_refresh_token")
    assert_error(await refresh(api, ""), 401, "invalid_refresh_token")
    assert_error(await api.request("POST", "/auth/refresh", json={}), 400, "validation_error")


async def test_refresh_tokens_are_stored_only_as_hashes(api: Api,
                                                        pg: asyncpg.Connection) -> None:
    user = await api.register()
    rows = await pg.fetch("SELECT token_hash FROM refresh_tokens WHERE user_id = $1",
                          uuid.UUID(user.id))
    assert [bytes(r["token_hash"]) for r in rows] == [
        hashlib.sha256(user.refresh_token.encode()).digest()]


# --- logout ---------------------------------------------------------------------------------

async def test_logout_with_a_token_ends_that_session_only(api: Api) -> None:
    user = await api.register()
    _, other, _ = await login(api, user.email)
    status, _, _ = await api.request("POST", "/auth/logout", user,
                                     json={"refresh_token": user.refresh_token})
    assert status == 204
    assert_error(await refresh(api, user.refresh_token), 401, "invalid_refresh_token")
    assert (await refresh(api, other["refresh_token"]))[0] == 200


async def test_logout_without_a_token_ends_every_session(api: Api) -> None:
    user = await api.register()
    _, other, _ = await login(api, user.email)
    status, _, _ = await api.request("POST", "/auth/logout", user)
    assert status == 204
    for token in (user.refresh_token, other["refresh_token"]):
        assert_error(await refresh(api, token), 401, "invalid_refresh_token")
    # As the README and the API say: an access token already issued lives out its
    # lifetime (verified by signature alone, no lookup per request).
    assert (await api.request("GET", "/auth/me", user))[0] == 200


async def test_logout_cannot_touch_someone_elses_session(api: Api) -> None:
    alice, bob = await api.register(), await api.register()
    status, _, _ = await api.request("POST", "/auth/logout", alice,
                                     json={"refresh_token": bob.refresh_token})
    assert status == 204
    assert (await refresh(api, bob.refresh_token))[0] == 200


async def test_logout_needs_authentication(api: Api) -> None:
    assert_error(await api.request("POST", "/auth/logout"), 401, "unauthorized")


# --- JWKS and bad tokens --------------------------------------------------------------------

async def test_jwks_verifies_issued_tokens(api: Api, cluster: ClusterHandle) -> None:
    user = await api.register()
    status, keys, headers = await api.request("GET", ".well-known/jwks.json")
    assert status == 200, keys
    assert "max-age" in headers["Cache-Control"]
    kid = jwt.get_unverified_header(user.access_token)["kid"]
    jwk = next(k for k in keys["keys"] if k["kid"] == kid)
    assert (jwk["kty"], jwk["crv"], jwk["alg"]) == ("EC", "P-256", "ES256")
    auth = cluster.config.auth
    claims = jwt.decode(user.access_token, jwt.PyJWK(jwk).key, algorithms=["ES256"],
                        audience=auth.audience, issuer=auth.issuer)
    assert (claims["sub"], claims["typ"], claims["role"]) == (user.id, "access", "user")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _claims(cluster: ClusterHandle, user_id: str) -> dict[str, Any]:
    now = int(time.time())
    auth = cluster.config.auth
    return {"iss": auth.issuer, "aud": auth.audience, "sub": user_id, "role": "admin",
            "typ": "access", "iat": now, "exp": now + 600, "jti": uuid.uuid4().hex}


def _unsigned(header: dict[str, Any], claims: dict[str, Any], key: bytes | None) -> str:
    head = _b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(claims).encode())
    sig = b"" if key is None else hmac.new(key, head.encode(), hashlib.sha256).digest()
    return f"{head}.{_b64url(sig)}"


def _expired(cluster: ClusterHandle, user: ApiUser, _: Path) -> str:
    service = TokenService(cluster.config.auth)
    return service.issue_access(uuid.UUID(user.id), "user", now=time.time() - 3600)


def _wrong_audience(cluster: ClusterHandle, user: ApiUser, _: Path) -> str:
    auth = dataclasses.replace(cluster.config.auth, audience="someone-else")
    return TokenService(auth).issue_access(uuid.UUID(user.id), "user")


def _unknown_key(cluster: ClusterHandle, user: ApiUser, tmp: Path) -> str:
    generate_key(tmp / "keys")
    return TokenService(cluster.config.auth, tmp / "keys").issue_access(uuid.UUID(user.id),
                                                                        "admin")


def _known_kid_other_key(cluster: ClusterHandle, user: ApiUser, tmp: Path) -> str:
    kid = jwt.get_unverified_header(user.access_token)["kid"]
    key = generate_key(tmp / "keys")
    return jwt.encode(_claims(cluster, user.id), key.private_key, algorithm="ES256",
                      headers={"kid": kid})


def _alg_none(cluster: ClusterHandle, user: ApiUser, _: Path) -> str:
    kid = jwt.get_unverified_header(user.access_token)["kid"]
    return _unsigned({"alg": "none", "typ": "JWT", "kid": kid}, _claims(cluster, user.id), None)


def _hmac_with_public_key(cluster: ClusterHandle, user: ApiUser, _: Path) -> str:
    service = TokenService(cluster.config.auth)
    pem = service.current_key.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header = {"alg": "HS256", "typ": "JWT", "kid": service.current_key.kid}
    return _unsigned(header, _claims(cluster, user.id), pem)


def _tampered_payload(cluster: ClusterHandle, user: ApiUser, _: Path) -> str:
    head, _payload, sig = user.access_token.split(".")
    return f"{head}.{_b64url(json.dumps(_claims(cluster, user.id)).encode())}.{sig}"


BAD_TOKENS: dict[str, Callable[[ClusterHandle, ApiUser, Path], str]] = {
    "expired": _expired,
    "wrong_audience": _wrong_audience,
    "unknown_key": _unknown_key,
    "known_kid_other_key": _known_kid_other_key,
    "alg_none": _alg_none,
    "hmac_with_public_key": _hmac_with_public_key,
    "tampered_payload": _tampered_payload,
    "refresh_token_as_access": lambda _c, user, _t: user.refresh_token,
    "garbage": lambda *_: "garbage",
    "three_dots": lambda *_: "a.b.c",
}


@pytest.mark.parametrize("make", BAD_TOKENS.values(), ids=BAD_TOKENS.keys())
async def test_bad_access_tokens_are_refused(api: Api, cluster: ClusterHandle, tmp_path: Path,
                                             make: Callable[[ClusterHandle, ApiUser, Path],
                                                            str]) -> None:
    user = await api.register()
    token = make(cluster, user, tmp_path)
    resp = await api.request("GET", "/auth/me", headers=bearer(token))
    assert_error(resp, 401, "invalid_token")
    assert "Bearer" in resp[2]["WWW-Authenticate"]


async def test_access_token_is_not_a_refresh_token(api: Api) -> None:
    user = await api.register()
    assert_error(await refresh(api, user.access_token), 401, "invalid_refresh_token")


# --- deactivation ---------------------------------------------------------------------------

async def test_deactivated_user_loses_access_at_once(api: Api, pg: asyncpg.Connection) -> None:
    user = await api.register()
    assert (await api.request("GET", "/auth/me", user))[0] == 200
    await pg.execute("UPDATE users SET is_active = false WHERE id = $1", uuid.UUID(user.id))
    assert_error(await api.request("GET", "/auth/me", user), 401, "invalid_token")
    assert_error(await refresh(api, user.refresh_token), 401, "invalid_refresh_token")
    assert_error(await login(api, user.email), 401, "account_disabled")
    # Without the right password nothing reveals that the account exists.
    assert_error(await login(api, user.email, "wrong password!"), 401, "invalid_credentials")


# --- metrics --------------------------------------------------------------------------------

async def test_auth_events_are_counted(api: Api) -> None:
    user = await api.register()
    await login(api, user.email, "wrong password!")
    status, text, _ = await api.request("GET", "metrics")
    assert status == 200
    metrics = text.decode() if isinstance(text, bytes) else str(text)
    for event in ("register_ok", "login_failed"):
        line = next(ln for ln in metrics.splitlines()
                    if ln.startswith(f'dfms_auth_events_total{{event="{event}"}}'))
        assert float(line.split()[-1]) >= 1


# --- CLI: the first admin -------------------------------------------------------------------

async def _dfms(cluster: ClusterHandle, *args: str, stdin: bytes = b"") -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DFMS_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dfms", "--data-dir", str(cluster.data_dir), *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env)
    out, err = await asyncio.wait_for(proc.communicate(stdin), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_creates_an_admin_who_can_log_in(api: Api, cluster: ClusterHandle) -> None:
    email = new_email("Admin")
    code, out, err = await _dfms(cluster, "admin", "create-user", "--admin", "--email", email,
                                 "--password", PASSWORD, "--display-name", "Root")
    assert code == 0, err
    user_id = str(uuid.UUID(out.strip()))
    status, body, _ = await login(api, email)
    assert status == 200, body
    assert body["user"]["id"] == user_id
    status, me, _ = await api.request("GET", "/auth/me",
                                      headers=bearer(body["tokens"]["access_token"]))
    assert status == 200, me
    assert (me["role"], me["display_name"], me["email"]) == ("admin", "Root", email.lower())

    code, out, err = await _dfms(cluster, "admin", "create-user", "--admin", "--email",
                                 email.upper(), "--password", PASSWORD)
    assert code != 0 and not out
    assert "already exists" in err


async def test_cli_applies_the_same_validation(cluster: ClusterHandle) -> None:
    code, _, err = await _dfms(cluster, "admin", "create-user", "--email", new_email(),
                               "--password", "short")
    assert code != 0
    assert "at least" in err


async def test_cli_reads_the_password_from_stdin(api: Api, cluster: ClusterHandle) -> None:
    email = new_email("plain")
    code, out, err = await _dfms(cluster, "admin", "create-user", "--email", email,
                                 stdin=f"{PASSWORD}\n".encode())
    assert code == 0, err
    status, body, _ = await login(api, email)
    assert status == 200, body
    assert body["user"] == {**body["user"], "id": out.strip(), "role": "user",
                            "display_name": email.partition("@")[0]}
