"""Rate limits on real gateway processes with tight limits, against the cluster's Redis.

The session cluster runs with huge limits, so these tests start their own
gateways (same config file, limits overridden by environment). Their counters
live in a separate Redis database so the main gateway's traffic never mixes in.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import pytest
import redis.asyncio as aioredis

from dfms.gateway.ratelimit import Limit, SlidingWindowLimiter
from dfms.localstack.ports import PortAllocator
from tests.support.api import Api
from tests.support.cluster import ClusterHandle

pytestmark = pytest.mark.cluster

RL_DB = 9  # Redis database of these tests' counters; the cluster uses 0
WINDOW_S = 2
TIGHT = {"DFMS_RATELIMIT__ENABLED": "true", "DFMS_RATELIMIT__WINDOW_S": str(WINDOW_S),
         "DFMS_RATELIMIT__GLOBAL_PER_WINDOW": "1000", "DFMS_RATELIMIT__USER_PER_WINDOW": "100",
         "DFMS_RATELIMIT__AUTH_PER_WINDOW": "3", "DFMS_RATELIMIT__OTHER_PER_WINDOW": "3",
         "DFMS_RATELIMIT__UPLOAD_PER_WINDOW": "2", "DFMS_RATELIMIT__DOWNLOAD_PER_WINDOW": "2"}
START_TIMEOUT_S = 30.0
RATE_HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")


def _db_url(url: str, db: int) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{db}"))


def _open_log(path: Path) -> IO[bytes]:
    return path.open("ab")


def _log_tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:]


async def _wait_healthy(url: str, proc: asyncio.subprocess.Process, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                raise RuntimeError(f"gateway exited with {proc.returncode}:\n"
                                   + _log_tail(log))
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.get(f"{url}/health") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise RuntimeError("gateway not healthy in time:\n" + _log_tail(log))


@contextlib.asynccontextmanager
async def gateway(cluster: ClusterHandle, log_dir: Path, **env: str) -> AsyncIterator[str]:
    """A second gateway process on the cluster; yields its base URL."""
    port = PortAllocator().get("ratelimit-gateway")
    log_path = log_dir / f"gateway-{port}.log"
    child_env = {**os.environ, "DFMS_CONFIG": str(cluster.data_dir / "dfms.yaml"),
                 "DFMS_GATEWAY__PORT": str(port),
                 "DFMS_REDIS__URL": _db_url(cluster.redis_url, RL_DB), **env}
    with _open_log(log_path) as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "dfms", "gateway", env=child_env,
            stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        await _wait_healthy(url, proc, log_path)
        yield url
    finally:
        if proc.returncode is None:
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()


@pytest.fixture(scope="module")
async def rl_redis(cluster: ClusterHandle) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(_db_url(cluster.redis_url, RL_DB))
    yield client
    await client.aclose()


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ratelimit-gateways")


@pytest.fixture(scope="module")
async def tight(cluster: ClusterHandle, log_dir: Path) -> AsyncIterator[str]:
    async with gateway(cluster, log_dir, **TIGHT) as url:
        yield url


@pytest.fixture
async def http(rl_redis: aioredis.Redis) -> AsyncIterator[aiohttp.ClientSession]:
    # Every test starts with empty counters, whatever ran in the last window.
    keys = [key async for key in rl_redis.scan_iter(match="rl:*")]
    if keys:
        await rl_redis.delete(*keys)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


def _rate(headers: aiohttp.typedefs.LooseHeaders) -> tuple[str, ...]:
    return tuple(headers[name] for name in RATE_HEADERS)  # type: ignore[index]


async def _login(http: aiohttp.ClientSession, url: str) -> aiohttp.ClientResponse:
    body = {"email": "nobody@example.com", "password": "wrong password, surely"}
    async with http.post(f"{url}/api/v1/auth/login", json=body) as resp:
        await resp.read()
        return resp


async def test_fourth_login_in_the_window_is_refused_until_it_slides(
        tight: str, http: aiohttp.ClientSession) -> None:
    for remaining in ("2", "1", "0"):
        resp = await _login(http, tight)
        assert resp.status != 429
        assert _rate(resp.headers) == ("3", remaining, str(WINDOW_S))
    async with http.post(f"{tight}/api/v1/auth/login", json={}) as resp:
        body = await resp.json()
        assert resp.status == 429
        assert body["error"]["code"] == "rate_limited"
        assert body["error"]["message"] == f"auth limit of 3 per {WINDOW_S}s exceeded"
        assert body["error"]["request_id"] == resp.headers["X-Request-Id"]
        limit, remaining, reset = _rate(resp.headers)
        retry_after = int(resp.headers["Retry-After"])
    assert (limit, remaining) == ("3", "0")
    assert 1 <= retry_after <= WINDOW_S and 1 <= int(reset) <= WINDOW_S
    await asyncio.sleep(retry_after)
    resp = await _login(http, tight)
    assert resp.status != 429
    assert resp.headers["X-RateLimit-Limit"] == "3"


async def test_classes_show_in_the_headers_and_ops_routes_are_never_limited(
        tight: str, http: aiohttp.ClientSession) -> None:
    # Unknown routes still pass the limiter before their 404.
    cases = [("GET", "/api/v1/no-such-thing", "3"), ("GET", "/s/no-such-share", "2"),
             ("GET", "/api/v1/files/0/download", "2"), ("POST", "/api/v1/files/upload", "2")]
    for method, path, limit in cases:
        async with http.request(method, f"{tight}{path}") as resp:
            assert resp.status != 429, path
            assert resp.headers["X-RateLimit-Limit"] == limit, path
            assert int(resp.headers["X-RateLimit-Remaining"]) < int(limit), path
    for path in ("/health", "/ready", "/metrics", "/.well-known/jwks.json",
                 "/api/v1/openapi.yaml"):
        for _ in range(5):  # more than any tight limit
            async with http.get(f"{tight}{path}") as resp:
                await resp.read()
                assert resp.status != 429, path
                assert "X-RateLimit-Limit" not in resp.headers, path


async def test_users_are_limited_separately(tight: str, api: Api,
                                            http: aiohttp.ClientSession) -> None:
    alice, bob = await api.register(), await api.register()
    for remaining in ("2", "1", "0"):
        async with http.get(f"{tight}/api/v1/no-such-thing", headers=alice.headers) as resp:
            assert resp.status != 429
            assert resp.headers["X-RateLimit-Remaining"] == remaining
    async with http.get(f"{tight}/api/v1/no-such-thing", headers=alice.headers) as resp:
        assert resp.status == 429
        assert (await resp.json())["error"]["message"] == (
            f"other limit of 3 per {WINDOW_S}s exceeded")
    async with http.get(f"{tight}/api/v1/no-such-thing", headers=bob.headers) as resp:
        assert resp.status != 429 and resp.headers["X-RateLimit-Remaining"] == "2"
    # Anonymous callers, and invalid tokens, count against the client address.
    bad_token = {"Authorization": "Bearer not.a.token"}
    for headers, remaining in (({}, "2"), (bad_token, "1")):
        async with http.get(f"{tight}/api/v1/no-such-thing", headers=headers) as resp:
            assert resp.status != 429 and resp.headers["X-RateLimit-Remaining"] == remaining


async def test_streamed_downloads_and_uploads_are_limited_per_class(
        tight: str, api: Api, http: aiohttp.ClientSession) -> None:
    user = await api.register()
    status, body = await api.upload(user, "limits.txt", b"rate limited content")
    assert status == 201, body
    download = f"{tight}/api/v1/files/{body['id']}/download"
    for remaining in ("1", "0"):  # the response is prepared inside the handler
        async with http.get(download, headers=user.headers) as resp:
            assert resp.status == 200 and await resp.read() == b"rate limited content"
            assert _rate(resp.headers) == ("2", remaining, str(WINDOW_S))
    async with http.get(download, headers=user.headers) as resp:
        assert resp.status == 429 and int(resp.headers["Retry-After"]) >= 1
    upload = {**user.headers, "X-File-Name": "again.txt",
              "Content-Type": "application/octet-stream"}
    for expected in (201, 200, 429):  # the second is the same bytes (unchanged); both count
        async with http.post(f"{tight}/api/v1/files/upload", data=b"x",
                             headers=upload) as resp:
            body = await resp.json()
            assert resp.status == expected, body
    assert body["error"]["message"] == f"upload limit of 2 per {WINDOW_S}s exceeded"


async def test_script_counts_a_request_only_when_every_key_allows(
        rl_redis: aioredis.Redis, http: aiohttp.ClientSession) -> None:
    limiter = SlidingWindowLimiter(rl_redis)
    roomy, full = Limit("roomy", "rl:t:roomy", 10), Limit("full", "rl:t:full", 1)
    assert (await limiter.check_all([roomy, full], 1)).allowed
    denied = await limiter.check_all([roomy, full], 1)
    assert (denied.allowed, denied.limit, denied.retry_after_s) == (False, full, 1)
    assert await rl_redis.zcard("rl:t:roomy") == 1
    assert 0 < await rl_redis.pttl("rl:t:roomy") <= 1000
    allowed = await limiter.check("rl:t:roomy", 10, 1)
    assert (allowed.allowed, allowed.remaining) == (True, 8)


async def _errors_metric(http: aiohttp.ClientSession, url: str) -> float:
    async with http.get(f"{url}/metrics") as resp:
        text = await resp.text()
    match = re.search(r"^dfms_ratelimit_redis_errors_total (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def _dead_redis() -> dict[str, str]:
    port = PortAllocator().get("dead-redis")  # nothing listens there
    return {"DFMS_REDIS__URL": f"redis://127.0.0.1:{port}/0",
            "DFMS_REDIS__SOCKET_TIMEOUT_S": "0.5"}


async def test_fail_open_lets_requests_through_and_counts_errors(
        cluster: ClusterHandle, log_dir: Path, http: aiohttp.ClientSession) -> None:
    async with gateway(cluster, log_dir, **TIGHT, **_dead_redis()) as url:
        for _ in range(5):  # more than the tight limit: nothing is counted
            async with http.get(f"{url}/api/v1/no-such-thing") as resp:
                assert resp.status == 404
                assert "X-RateLimit-Limit" not in resp.headers
        assert await _errors_metric(http, url) > 0


async def test_fail_closed_answers_503(cluster: ClusterHandle, log_dir: Path,
                                       http: aiohttp.ClientSession) -> None:
    env = {**TIGHT, **_dead_redis(), "DFMS_RATELIMIT__FAIL_OPEN": "false"}
    async with gateway(cluster, log_dir, **env) as url:
        async with http.get(f"{url}/api/v1/no-such-thing") as resp:
            body = await resp.json()
            assert resp.status == 503
            assert body["error"]["code"] == "rate_limiter_unavailable"
            assert int(resp.headers["Retry-After"]) >= 1
        async with http.get(f"{url}/health") as resp:
            assert resp.status == 200
        assert await _errors_metric(http, url) > 0


# --- client addresses behind a trusted proxy ------------------------------------------------

XFF = "X-Forwarded-For"


async def _login_as(http: aiohttp.ClientSession, url: str, forwarded: str | None
                    ) -> aiohttp.ClientResponse:
    body = {"email": "nobody@example.com", "password": "wrong password, surely"}
    headers = {XFF: forwarded} if forwarded is not None else {}
    async with http.post(f"{url}/api/v1/auth/login", json=body, headers=headers) as resp:
        await resp.read()
        return resp


async def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_limit(
        cluster: ClusterHandle, log_dir: Path, http: aiohttp.ClientSession,
        rl_redis: aioredis.Redis) -> None:
    # The test talks to the gateway from 127.0.0.1: it plays the trusted proxy.
    env = {**TIGHT, "DFMS_GATEWAY__TRUSTED_PROXIES": "127.0.0.0/8, ::1"}
    async with gateway(cluster, log_dir, **env) as url:
        for remaining in ("2", "1", "0"):
            resp = await _login_as(http, url, "203.0.113.7")
            assert resp.status == 401 and resp.headers["X-RateLimit-Remaining"] == remaining
        assert (await _login_as(http, url, "203.0.113.7")).status == 429
        # Another client behind the same proxy is not locked out with the first ...
        resp = await _login_as(http, url, "203.0.113.8")
        assert resp.status == 401 and resp.headers["X-RateLimit-Remaining"] == "2"
        # ... and the first cannot escape by claiming an address the proxy did not see:
        # what it sends is to the left of what the proxy appended.
        assert (await _login_as(http, url, "198.51.100.1, 203.0.113.7")).status == 429
        # A second trusted proxy in the chain (it appended the proxy before it) is skipped.
        assert (await _login_as(http, url, "203.0.113.7, 127.0.0.9")).status == 429
        # No header: the proxy itself is the client.
        resp = await _login_as(http, url, None)
        assert resp.status == 401 and resp.headers["X-RateLimit-Remaining"] == "2"
    assert await rl_redis.zcard("rl:auth:203.0.113.7") == 3
    assert await rl_redis.zcard("rl:auth:203.0.113.8") == 1
    assert await rl_redis.zcard("rl:auth:127.0.0.1") == 1


async def test_without_trusted_proxies_the_header_is_ignored(
        tight: str, http: aiohttp.ClientSession, rl_redis: aioredis.Redis) -> None:
    for i, remaining in enumerate(("2", "1", "0")):
        resp = await _login_as(http, tight, f"203.0.113.{i + 20}")
        assert resp.status == 401 and resp.headers["X-RateLimit-Remaining"] == remaining
    assert (await _login_as(http, tight, "203.0.113.99")).status == 429
    assert await rl_redis.zcard("rl:auth:127.0.0.1") == 3
    assert [key async for key in rl_redis.scan_iter(match="rl:auth:203.*")] == []


async def test_share_password_attempts_count_per_forwarded_client(
        cluster: ClusterHandle, log_dir: Path, api: Api, http: aiohttp.ClientSession,
        rl_redis: aioredis.Redis) -> None:
    owner = await api.register()
    status, body = await api.upload(owner, "secret.txt", b"behind a password")
    assert status == 201, body
    status, shared, _ = await api.request("POST", f"/files/{body['id']}/share", owner,
                                          json={"password": "the right one"})
    assert status == 201, shared
    env = {**TIGHT, "DFMS_GATEWAY__TRUSTED_PROXIES": "127.0.0.0/8"}
    async with gateway(cluster, log_dir, **env) as url:
        headers = {"X-Share-Password": "a wrong one", XFF: "203.0.113.40"}
        async with http.get(f"{url}/s/{shared['token']}", headers=headers) as resp:
            assert resp.status == 401 and (await resp.json())["error"]["code"] == (
                "wrong_password")
    assert await rl_redis.zcard(f"rl:sharepw:{shared['id']}:203.0.113.40") == 1
    assert [key async for key in rl_redis.scan_iter(match="rl:sharepw:*:127.0.0.1")] == []
