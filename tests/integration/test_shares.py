"""Share links (presigned download URLs) against the real cluster."""

from __future__ import annotations

import asyncio
import os
import uuid
from datetime import datetime
from typing import Any
from urllib.parse import quote

import asyncpg
import pytest
from multidict import CIMultiDictProxy

from tests.support.api import Api, ApiUser
from tests.support.cluster import ClusterHandle

pytestmark = pytest.mark.cluster

KIB = 1024


def assert_error(status: int, body: object, expected_status: int, code: str) -> None:
    assert status == expected_status, body
    assert isinstance(body, dict), body
    err = body["error"]
    assert err["code"] == code and err["message"] and err["request_id"], body


async def uploaded(api: Api, user: ApiUser, data: bytes, name: str | None = None) -> str:
    status, body = await api.upload(user, quote(name or f"f-{uuid.uuid4().hex}.bin"), data)
    assert status == 201, body
    return str(body["id"])


async def share(api: Api, user: ApiUser, file_id: str, **fields: Any) -> dict[str, Any]:
    status, body, headers = await api.request("POST", f"/files/{file_id}/share", user,
                                              json=fields)
    assert status == 201, body
    assert headers["Cache-Control"] == "no-store"
    return dict(body)


async def fetch(api: Api, url: str, method: str = "GET", **headers: str
                ) -> tuple[int, Any, CIMultiDictProxy[str]]:
    async with api.session.request(method, url, headers=headers) as resp:
        body: Any = await resp.read()
        if "json" in resp.headers.get("Content-Type", ""):
            body = await resp.json()
        return resp.status, body, resp.headers


def link(cluster: ClusterHandle, token: str) -> str:
    return f"{cluster.gateway_url}/s/{token}"


async def test_create_and_download_without_an_account(api: Api, user: ApiUser,
                                                      cluster: ClusterHandle) -> None:
    data = os.urandom(300 * KIB + 5)
    file_id = await uploaded(api, user, data, "rapport d'été ✓.bin")
    body = await share(api, user, file_id)
    assert set(body) >= {"url", "token", "expires_at", "max_downloads", "has_password",
                         "created_at", "file_id", "id"}
    assert body["file_id"] == file_id and body["file_name"] == "rapport d'été ✓.bin"
    assert body["max_downloads"] is None and body["has_password"] is False
    assert body["state"] == "active" and body["download_count"] == 0
    assert body["url"] == link(cluster, body["token"])
    status, got, headers = await fetch(api, body["url"])
    assert status == 200 and got == data
    assert "filename*=UTF-8''rapport%20d%27%C3%A9t%C3%A9%20%E2%9C%93.bin" in \
        headers["Content-Disposition"]
    assert headers["Accept-Ranges"] == "bytes" and headers["X-Request-Id"]
    # HEAD answers the headers and does not count.
    status, got, headers = await fetch(api, body["url"], "HEAD")
    assert status == 200 and got == b"" and int(headers["Content-Length"]) == len(data)
    status, page, _ = await api.request("GET", "/shares", user)
    assert status == 200
    mine = next(item for item in page["items"] if item["id"] == body["id"])
    assert mine["download_count"] == 1 and "token" not in mine and "url" not in mine


async def test_default_and_explicit_expiry(api: Api, user: ApiUser,
                                           cluster: ClusterHandle) -> None:
    file_id = await uploaded(api, user, b"expiry")
    cfg = cluster.config.shares
    default = await share(api, user, file_id)
    lifetime = (datetime.fromisoformat(default["expires_at"])
                - datetime.fromisoformat(default["created_at"])).total_seconds()
    assert lifetime == pytest.approx(cfg.default_expiry_s, abs=2)
    longest = await share(api, user, file_id, expires_in_s=cfg.max_expiry_s)
    lifetime = (datetime.fromisoformat(longest["expires_at"])
                - datetime.fromisoformat(longest["created_at"])).total_seconds()
    assert lifetime == pytest.approx(cfg.max_expiry_s, abs=2)


async def test_ranges_through_the_link(api: Api, user: ApiUser,
                                       cluster: ClusterHandle) -> None:
    data = os.urandom(64 * KIB)
    body = await share(api, user, await uploaded(api, user, data))
    status, got, headers = await fetch(api, body["url"], Range="bytes=100-1099")
    assert status == 206 and got == data[100:1100]
    assert headers["Content-Range"] == f"bytes 100-1099/{len(data)}"
    status, got, _ = await fetch(api, body["url"], Range="bytes=-10")
    assert status == 206 and got == data[-10:]
    status, got, headers = await fetch(api, body["url"], Range=f"bytes={len(data)}-")
    assert_error(status, got, 416, "range_not_satisfiable")
    assert headers["Content-Range"] == f"bytes */{len(data)}"


async def test_what_counts_as_a_download(api: Api, user: ApiUser,
                                         cluster: ClusterHandle) -> None:
    data = os.urandom(10 * KIB)
    body = await share(api, user, await uploaded(api, user, data), max_downloads=2)
    url = body["url"]
    status, _, headers = await fetch(api, url, "HEAD")
    assert status == 200
    etag = headers["ETag"]
    status, _, _ = await fetch(api, url, **{"If-None-Match": etag})
    assert status == 304
    status, got, _ = await fetch(api, url, Range="bytes=999999-")
    assert_error(status, got, 416, "range_not_satisfiable")
    status, got, _ = await fetch(api, url, Range="bytes=0-9")  # ranged: counts
    assert status == 206 and got == data[:10]
    status, got, _ = await fetch(api, url)
    assert status == 200 and got == data
    status, got, _ = await fetch(api, url)
    assert_error(status, got, 410, "link_exhausted")
    status, got, _ = await fetch(api, url, "HEAD")
    assert status == 410
    status, page, _ = await api.request("GET", f"/shares?file_id={body['file_id']}", user)
    assert status == 200 and page["total"] == 1
    assert page["items"][0]["download_count"] == 2
    assert page["items"][0]["state"] == "exhausted"


async def test_expired_link(api: Api, user: ApiUser, cluster: ClusterHandle) -> None:
    body = await share(api, user, await uploaded(api, user, b"soon gone"), expires_in_s=60)
    assert (await fetch(api, body["url"]))[0] == 200
    conn = await asyncpg.connect(cluster.postgres_dsn)
    try:
        await conn.execute("UPDATE share_links SET expires_at = now() - interval '1 second' "
                           "WHERE id = $1", uuid.UUID(body["id"]))
    finally:
        await conn.close()
    status, got, headers = await fetch(api, body["url"])
    assert_error(status, got, 410, "link_expired")
    assert headers["Cache-Control"] == "no-store"
    status, page, _ = await api.request("GET", f"/shares?file_id={body['file_id']}", user)
    assert page["items"][0]["state"] == "expired"


async def test_revocation_by_token_and_by_id(api: Api, user: ApiUser,
                                             cluster: ClusterHandle) -> None:
    file_id = await uploaded(api, user, b"revocable")
    first, second = await share(api, user, file_id), await share(api, user, file_id)
    status, _, _ = await api.request("DELETE", f"/shares/{first['token']}", user)
    assert status == 204
    status, _, _ = await api.request("DELETE", f"/shares/{second['id']}", user)
    assert status == 204
    status, _, _ = await api.request("DELETE", f"/shares/{second['id']}", user)
    assert status == 204  # again: a no-op
    for body in (first, second):
        status, got, _ = await fetch(api, body["url"])
        assert_error(status, got, 410, "link_revoked")
    status, page, _ = await api.request("GET", f"/shares?file_id={file_id}", user)
    assert {i["state"] for i in page["items"]} == {"revoked"}
    assert all(i["revoked"] and i["revoked_at"] for i in page["items"])


async def test_single_download_link(api: Api, user: ApiUser, cluster: ClusterHandle) -> None:
    data = os.urandom(KIB)
    body = await share(api, user, await uploaded(api, user, data), max_downloads=1)
    assert body["max_downloads"] == 1
    status, got, _ = await fetch(api, body["url"])
    assert status == 200 and got == data
    status, got, _ = await fetch(api, body["url"])
    assert_error(status, got, 410, "link_exhausted")


async def test_concurrent_downloads_of_a_single_download_link(
        api: Api, user: ApiUser, cluster: ClusterHandle) -> None:
    data = os.urandom(2 * 1024 * KIB)
    file_id = await uploaded(api, user, data)
    for _ in range(3):
        body = await share(api, user, file_id, max_downloads=1)
        results = await asyncio.gather(*(fetch(api, body["url"]) for _ in range(2)))
        statuses = sorted(r[0] for r in results)
        assert statuses == [200, 410], [r[1] if r[0] != 200 else 200 for r in results]
        winner = next(r for r in results if r[0] == 200)
        loser = next(r for r in results if r[0] == 410)
        assert winner[1] == data
        assert_error(loser[0], loser[1], 410, "link_exhausted")


async def test_password_protected_link(api: Api, user: ApiUser,
                                       cluster: ClusterHandle) -> None:
    data = os.urandom(KIB)
    password = "pässwörd 100% s3cret"
    body = await share(api, user, await uploaded(api, user, data), password=password)
    assert body["has_password"] is True and "password" not in body
    url = body["url"]
    status, got, headers = await fetch(api, url)
    assert_error(status, got, 401, "password_required")
    assert headers["WWW-Authenticate"].startswith("SharePassword")
    status, got, _ = await fetch(api, url, "HEAD")
    assert status == 401
    status, got, _ = await fetch(api, url, **{"X-Share-Password": "nope"})
    assert_error(status, got, 401, "wrong_password")
    status, got, _ = await fetch(api, url, **{"X-Share-Password": quote(password)})
    assert status == 200 and got == data
    status, got, _ = await fetch(api, f"{url}?password={quote(password)}")
    assert status == 200 and got == data
    # The header wins over the query parameter.
    status, got, _ = await fetch(api, f"{url}?password={quote(password)}",
                                 **{"X-Share-Password": "wrong"})
    assert_error(status, got, 401, "wrong_password")


async def test_wrong_passwords_are_limited(api: Api, user: ApiUser,
                                           cluster: ClusterHandle) -> None:
    limit = cluster.config.shares.password_attempts_per_window
    file_id = await uploaded(api, user, b"guarded")
    body = await share(api, user, file_id, password="right")
    other = await share(api, user, file_id, password="right")
    for _ in range(limit):
        status, got, _ = await fetch(api, body["url"], **{"X-Share-Password": "wrong"})
        assert_error(status, got, 401, "wrong_password")
    status, got, headers = await fetch(api, body["url"], **{"X-Share-Password": "wrong"})
    assert_error(status, got, 429, "rate_limited")
    assert int(headers["Retry-After"]) >= 1
    # Locked out: even the right password waits, so guessing cannot go on.
    status, got, _ = await fetch(api, body["url"], **{"X-Share-Password": "right"})
    assert_error(status, got, 429, "rate_limited")
    # Per link: another link of the same file is not affected.
    status, got, _ = await fetch(api, other["url"], **{"X-Share-Password": "right"})
    assert status == 200 and got == b"guarded"


async def test_forged_and_unknown_tokens_are_not_found(api: Api, user: ApiUser,
                                                       cluster: ClusterHandle) -> None:
    body = await share(api, user, await uploaded(api, user, b"real"))
    token = body["token"]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    flipped = token[:5] + alphabet[(alphabet.index(token[5]) + 1) % 64] + token[6:]
    for bad in (flipped, "A" * 43, "short", token + "A"):
        status, got, headers = await fetch(api, link(cluster, bad))
        assert_error(status, got, 404, "not_found")
        assert headers["X-Request-Id"] == got["error"]["request_id"]


async def test_trashed_file(api: Api, user: ApiUser, cluster: ClusterHandle) -> None:
    file_id = await uploaded(api, user, b"to the trash")
    body = await share(api, user, file_id)
    status, _, _ = await api.request("DELETE", f"/files/{file_id}", user)
    assert status == 204
    status, got, _ = await fetch(api, body["url"])
    assert_error(status, got, 410, "file_unavailable")
    status, page, _ = await api.request("GET", f"/shares?file_id={file_id}", user)
    assert page["items"][0]["file_available"] is False
    status, got, _ = await api.request("POST", f"/files/{file_id}/share", user, json={})
    assert_error(status, got, 404, "not_found")


async def test_other_users_cannot_see_share_or_revoke(api: Api, user: ApiUser,
                                                      cluster: ClusterHandle) -> None:
    file_id = await uploaded(api, user, b"mine")
    body = await share(api, user, file_id)
    other = await api.register()
    status, got, _ = await api.request("POST", f"/files/{file_id}/share", other, json={})
    assert_error(status, got, 404, "not_found")
    status, page, _ = await api.request("GET", "/shares", other)
    assert status == 200 and page["items"] == [] and page["total"] == 0
    for ref in (body["token"], body["id"]):
        status, got, _ = await api.request("DELETE", f"/shares/{ref}", other)
        assert_error(status, got, 404, "not_found")
    status, got, _ = await fetch(api, body["url"])
    assert status == 200 and got == b"mine"
    status, got, _ = await api.request("DELETE", f"/shares/{uuid.uuid4()}", user)
    assert_error(status, got, 404, "not_found")
    status, got, _ = await api.request("DELETE", "/shares/not-a-token", user)
    assert_error(status, got, 404, "not_found")


async def test_authentication_is_required_to_manage_links(api: Api, user: ApiUser,
                                                          cluster: ClusterHandle) -> None:
    file_id = await uploaded(api, user, b"x")
    body = await share(api, user, file_id)
    for method, path in (("POST", f"/files/{file_id}/share"), ("GET", "/shares"),
                         ("DELETE", f"/shares/{body['id']}")):
        status, got, _ = await api.request(method, path)
        assert_error(status, got, 401, "unauthorized")


async def test_listing_is_paginated_newest_first(api: Api, user: ApiUser,
                                                 cluster: ClusterHandle) -> None:
    file_id = await uploaded(api, user, b"many links")
    made = [await share(api, user, file_id, max_downloads=i + 1) for i in range(5)]
    status, first, _ = await api.request("GET", "/shares?per_page=2", user)
    assert status == 200 and first["total"] == 5 and first["page"] == 1
    assert [i["id"] for i in first["items"]] == [made[4]["id"], made[3]["id"]]
    status, last, _ = await api.request("GET", "/shares?per_page=2&page=3", user)
    assert [i["id"] for i in last["items"]] == [made[0]["id"]]
    item = last["items"][0]
    assert item["file_name"] and item["max_downloads"] == 1 and item["has_password"] is False
    assert item["state"] == "active" and item["revoked"] is False
    for query in ("per_page=0", "page=0", "per_page=x", "file_id=nope", "file_id="):
        status, got, _ = await api.request("GET", f"/shares?{query}", user)
        assert_error(status, got, 400, "validation_error")


@pytest.mark.parametrize("fields", [
    {"expires_in_s": 59}, {"expires_in_s": 10**12}, {"expires_in_s": "3600"},
    {"expires_in_s": 3600.5}, {"expires_in_s": True}, {"max_downloads": 0},
    {"max_downloads": -1}, {"max_downloads": "1"}, {"max_downloads": 2**31},
    {"password": ""}, {"password": "x" * 1025}, {"password": 1234},
])
async def test_validation_errors(api: Api, user: ApiUser, cluster: ClusterHandle,
                                 fields: dict[str, Any]) -> None:
    file_id = await uploaded(api, user, b"v")
    status, got, _ = await api.request("POST", f"/files/{file_id}/share", user, json=fields)
    assert_error(status, got, 400, "validation_error")
    assert next(iter(fields)) in got["error"]["message"]


async def test_expiry_above_the_maximum_names_the_bounds(api: Api, user: ApiUser,
                                                         cluster: ClusterHandle) -> None:
    file_id = await uploaded(api, user, b"b")
    top = cluster.config.shares.max_expiry_s
    status, got, _ = await api.request("POST", f"/files/{file_id}/share", user,
                                       json={"expires_in_s": top + 1})
    assert_error(status, got, 400, "validation_error")
    assert f"between 60 and {top}" in got["error"]["message"]
    status, got, _ = await api.request("POST", f"/files/{file_id}/share", user,
                                       data=b"[1]", headers={"Content-Type":
                                                             "application/json"})
    assert_error(status, got, 400, "invalid_json")
    status, got, _ = await api.request("POST", f"/files/{uuid.uuid4()}/share", user, json={})
    assert_error(status, got, 404, "not_found")
    status, got, _ = await api.request("POST", f"/files/{file_id}/share", user)  # no body
    assert status == 201, got
    # JSON has one number type: an integral float is that integer.
    body = await share(api, user, file_id, expires_in_s=3600.0, max_downloads=2.0)
    assert body["max_downloads"] == 2


async def test_share_download_metrics(api: Api, user: ApiUser, cluster: ClusterHandle) -> None:
    body = await share(api, user, await uploaded(api, user, b"counted"))
    assert (await fetch(api, body["url"]))[0] == 200
    status, text, _ = await fetch(api, f"{cluster.gateway_url}/metrics")
    assert status == 200
    lines = text.decode().splitlines()
    ok = [line for line in lines if line.startswith('dfms_share_downloads_total{outcome="ok"}')]
    assert ok and float(ok[0].split()[-1]) >= 1
    assert any(line.startswith('dfms_share_downloads_total{outcome="expired"}')
               for line in lines)
