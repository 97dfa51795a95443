"""Uploading the current version's bytes again adds no version (200, "unchanged": true),
writes no manifest, version or event; ?force_version=true adds one anyway."""

from __future__ import annotations

import hashlib
import os
import uuid

import aiohttp
import asyncpg

from tests.integration.test_files import assert_error
from tests.integration.test_lifecycle import put_part
from tests.support.api import Api, ApiUser


async def footprint(db: asyncpg.Connection, file_id: str, sha256: str) -> tuple[int, int, int]:
    """(versions of the file, manifests of that content, outbox events of the file)."""
    fid = uuid.UUID(file_id)
    return (await db.fetchval("SELECT count(*) FROM file_versions WHERE file_id = $1", fid),
            await db.fetchval("SELECT count(*) FROM manifests WHERE sha256 = $1",
                              bytes.fromhex(sha256)),
            await db.fetchval("SELECT count(*) FROM outbox WHERE key = $1", file_id))


async def test_identical_reupload_is_unchanged(api: Api, user: ApiUser,
                                               db: asyncpg.Connection) -> None:
    data = os.urandom(300_000)
    status, first = await api.upload(user, "same.bin", data)
    assert status == 201, first
    before = await footprint(db, first["id"], first["sha256"])
    for _ in range(3):
        status, body, headers = await api.request(
            "POST", "/files/upload", user, data=data,
            headers={"X-File-Name": "same.bin", "Content-Type": "application/octet-stream"})
        assert status == 200, body
        assert body["unchanged"] is True and body["id"] == first["id"]
        assert body["version"] == 1 and body["sha256"] == first["sha256"]
        assert body["new_chunks"] == 0 and body["dedup_bytes"] == len(data)
        assert headers["Content-Location"] == f"/api/v1/files/{first['id']}"
        assert headers["ETag"] == f'"{first["sha256"]}"' and "Location" not in headers
    assert await footprint(db, first["id"], first["sha256"]) == before == (1, 1, 1)
    assert first["unchanged"] is False
    # A form upload is the same upload.
    form = aiohttp.FormData()
    form.add_field("file", data, filename="same.bin", content_type="application/octet-stream")
    status, body, _ = await api.request("POST", "/files/upload", user, data=form)
    assert status == 200 and body["unchanged"] is True and body["version"] == 1


async def test_only_the_current_version_counts_and_force_adds_one(
        api: Api, user: ApiUser, db: asyncpg.Connection) -> None:
    one, two = b"first content", b"second content"
    _, v1 = await api.upload(user, "doc.txt", one)
    status, v2 = await api.upload(user, "doc.txt", two)
    assert status == 201 and v2["version"] == 2
    status, v3 = await api.upload(user, "doc.txt", one)  # an older version's bytes: new
    assert status == 201 and v3["version"] == 3 and v3["unchanged"] is False
    status, body, _ = await api.request(
        "POST", "/files/upload?force_version=true", user, data=one,
        headers={"X-File-Name": "doc.txt"})
    assert status == 201 and body["version"] == 4 and body["unchanged"] is False, body
    assert (await footprint(db, v1["id"], v1["sha256"]))[0] == 4
    status, body, _ = await api.request(
        "POST", "/files/upload?force_version=maybe", user, data=one,
        headers={"X-File-Name": "doc.txt"})
    assert_error(status, body, 400, "validation_error")
    # If-Match still guards an unchanged upload.
    status, body = await api.upload(user, "doc.txt", one, **{"If-Match": '"00"'})
    assert_error(status, body, 412, "precondition_failed")


async def complete(api: Api, user: ApiUser, name: str, data: bytes,
                   query: str = "") -> tuple[int, dict]:
    _, up, _ = await api.request("POST", "/files/upload/multipart/init", user,
                                 json={"file_name": name, "file_size": len(data)})
    status, part = await put_part(api, user, up["upload_id"], 1, data)
    assert status == 200, part
    status, body, _ = await api.request(
        "POST", f"/files/upload/multipart/{up['upload_id']}/complete{query}", user)
    _, shown, _ = await api.request("GET", f"/files/upload/multipart/{up['upload_id']}", user)
    assert shown["state"] == "completed"
    return status, body


async def test_multipart_complete_of_the_same_bytes_is_unchanged(
        api: Api, user: ApiUser, db: asyncpg.Connection) -> None:
    data = os.urandom(100_000)
    status, first = await complete(api, user, "parts.bin", data)
    assert status == 201 and first["sha256"] == hashlib.sha256(data).hexdigest(), first
    status, again = await complete(api, user, "parts.bin", data)
    assert status == 200 and again["unchanged"] is True and again["version"] == 1, again
    assert first["unchanged"] is False
    # The parts' manifests are left to GC as after any completion; the file has one version.
    assert (await footprint(db, first["id"], first["sha256"]))[::2] == (1, 1)
    status, forced = await complete(api, user, "parts.bin", data, "?force_version=true")
    assert status == 201 and forced["version"] == 2 and forced["unchanged"] is False
