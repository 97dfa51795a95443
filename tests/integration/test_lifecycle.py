"""File lifecycle against the real cluster: versions, trash, multipart, quotas, retention."""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg

from tests.integration.test_files import assert_error
from tests.support.api import Api, ApiUser
from tests.support.cluster import ClusterHandle
from tests.support.gc import gc_pass

MIB = 1024 * 1024


async def body_of(api: Api, user: ApiUser, path: str) -> bytes:
    status, body, _ = await api.request("GET", path, user)
    assert status == 200, body
    return bytes(body)


# --- versions -----------------------------------------------------------------------------

async def test_versions_create_list_download_restore_delete(
        api: Api, user: ApiUser, db: asyncpg.Connection) -> None:
    v1, v2 = b"first version", b"second version, longer"
    _, first = await api.upload(user, "notes.txt", v1)
    status, second = await api.upload(user, "notes.txt", v2)
    assert status == 201 and second["id"] == first["id"] and second["version"] == 2
    fid = first["id"]
    _, listing, _ = await api.request("GET", f"/files/{fid}/versions", user)
    assert [(v["version"], v["size"], v["current"]) for v in listing["versions"]] == \
        [(2, len(v2), True), (1, len(v1), False)]
    assert await body_of(api, user, f"/files/{fid}/versions/1/download") == v1
    assert await body_of(api, user, f"/files/{fid}/download") == v2
    status, ranged, _ = await api.request("GET", f"/files/{fid}/versions/1/download", user,
                                          headers={"Range": "bytes=0-4"})
    assert status == 206 and ranged == v1[:5]

    status, restored, _ = await api.request("POST", f"/files/{fid}/versions/1/restore", user)
    assert status == 201 and restored["version"] == 3 and restored["sha256"] == first["sha256"]
    manifests = await db.fetch("SELECT version, manifest_id FROM file_versions "
                               "WHERE file_id = $1 ORDER BY version", uuid.UUID(fid))
    assert manifests[2]["manifest_id"] == manifests[0]["manifest_id"]  # no bytes copied
    assert await body_of(api, user, f"/files/{fid}/download") == v1

    assert (await api.request("DELETE", f"/files/{fid}/versions/3", user))[0] == 204
    _, meta, _ = await api.request("GET", f"/files/{fid}", user)
    assert meta["version"] == 2  # deleting the current version promotes the previous
    assert await body_of(api, user, f"/files/{fid}/download") == v2
    assert (await api.request("DELETE", f"/files/{fid}/versions/1", user))[0] == 204
    status, body, _ = await api.request("DELETE", f"/files/{fid}/versions/2", user)
    assert_error(status, body, 409, "last_version")
    for path in (f"/files/{fid}/versions/9/download", f"/files/{fid}/versions/x/download"):
        status, body, _ = await api.request("GET", path, user)
        assert_error(status, body, 404, "not_found")
    stranger = await api.register()
    status, body, _ = await api.request("GET", f"/files/{fid}/versions", stranger)
    assert_error(status, body, 404, "not_found")


async def test_concurrent_uploads_to_one_name_make_one_file(
        api: Api, user: ApiUser, db: asyncpg.Connection) -> None:
    contents = [os.urandom(200_000) for _ in range(8)]
    results = await asyncio.gather(*(api.upload(user, "race.bin", c) for c in contents))
    assert all(status == 201 for status, _ in results), results
    ids = {body["id"] for _, body in results}
    assert len(ids) == 1
    versions = sorted(body["version"] for _, body in results)
    assert versions == list(range(1, 9))
    count = await db.fetchval("SELECT count(*) FROM files WHERE owner_id = $1 AND name = $2",
                              uuid.UUID(user.id), "race.bin")
    assert count == 1


async def test_if_match_guards_against_lost_updates(api: Api, user: ApiUser) -> None:
    _, first = await api.upload(user, "doc.txt", b"v1")
    etag = f'"{first["sha256"]}"'
    status, second = await api.upload(user, "doc.txt", b"v2", **{"If-Match": etag})
    assert status == 201 and second["version"] == 2
    status, body = await api.upload(user, "doc.txt", b"v3", **{"If-Match": etag})  # stale
    assert_error(status, body, 412, "precondition_failed")
    status, body = await api.upload(user, "new.txt", b"x", **{"If-Match": '"abc"'})
    assert_error(status, body, 412, "precondition_failed")
    assert (await api.upload(user, "doc.txt", b"v3", **{"If-Match": "*"}))[0] == 201


# --- trash --------------------------------------------------------------------------------

async def test_trash_restore_into_a_deleted_folder(api: Api, user: ApiUser) -> None:
    _, docs = (await api.request("POST", "/folders", user, json={"name": "docs"}))[:2]
    _, sub = (await api.request("POST", "/folders", user,
                                json={"name": "2024", "parent_id": docs["id"]}))[:2]
    _, f = await api.upload(user, "report.pdf", b"%PDF-1.4 report", folder_id=sub["id"])
    assert (await api.request("DELETE", f"/files/{f['id']}", user))[0] == 204
    assert (await api.request("DELETE", f"/folders/{docs['id']}?recursive=true", user))[0] \
        == 204
    _, listing, _ = await api.request("GET", "/trash", user)
    by_name = {i["name"]: i for i in listing["items"]}
    assert set(by_name) == {"report.pdf", "docs"}  # the folder's contents are not listed
    assert by_name["report.pdf"]["original_path"] == "/docs/2024"
    assert by_name["docs"]["original_path"] == "/"
    status, restored, _ = await api.request("POST", f"/trash/{f['id']}/restore", user)
    assert status == 200 and restored["name"] == "report.pdf"
    # /docs/2024 was recreated (the originals are still in the trash).
    new_sub = restored["folder_id"]
    assert new_sub not in (None, sub["id"])
    _, root, _ = await api.request("GET", "/folders/root/contents", user)
    new_docs = next(d for d in root["folders"] if d["name"] == "docs")
    _, inside, _ = await api.request("GET", f"/folders/{new_docs['id']}/contents", user)
    assert [d["id"] for d in inside["folders"]] == [new_sub]
    assert await body_of(api, user, f"/files/{f['id']}/download") == b"%PDF-1.4 report"
    # Restoring the old folder now clashes with the recreated one...
    status, body, _ = await api.request("POST", f"/trash/{docs['id']}/restore", user)
    assert_error(status, body, 409, "name_taken")
    # ...unless it may take another name; what it took along comes back with it.
    status, back, _ = await api.request("POST", f"/trash/{docs['id']}/restore?rename=true",
                                        user)
    assert status == 200 and back["name"] == "docs (restored)"
    _, inside, _ = await api.request("GET", f"/folders/{docs['id']}/contents", user)
    assert [d["name"] for d in inside["folders"]] == ["2024"]


async def test_purge_and_empty_trash_and_usage(api: Api, user: ApiUser) -> None:
    data = os.urandom(300_000)
    _, a = await api.upload(user, "a.bin", data)
    _, b = await api.upload(user, "b.bin", data)  # the same bytes: deduplicated
    _, usage, _ = await api.request("GET", "/storage/usage", user)
    assert usage["used_bytes"] == 2 * len(data) and usage["file_count"] == 2
    assert usage["version_count"] == 2 and usage["dedup_saved_bytes"] == len(data)
    for f in (a, b):
        await api.request("DELETE", f"/files/{f['id']}", user)
    _, usage, _ = await api.request("GET", "/storage/usage", user)
    assert usage["used_bytes"] == 2 * len(data) and usage["file_count"] == 0  # trash counts
    assert (await api.request("DELETE", f"/trash/{a['id']}", user))[0] == 204
    status, body, _ = await api.request("POST", f"/trash/{a['id']}/restore", user)
    assert_error(status, body, 404, "not_found")
    assert (await api.request("DELETE", "/trash", user))[0] == 204
    _, listing, _ = await api.request("GET", "/trash", user)
    assert listing["items"] == [] and listing["total"] == 0
    _, usage, _ = await api.request("GET", "/storage/usage", user)
    assert usage["used_bytes"] == 0  # purged data stops counting


async def test_gc_purges_trash_and_versions_past_retention(
        api: Api, user: ApiUser, db: asyncpg.Connection, cluster: ClusterHandle) -> None:
    _, old = await api.upload(user, "old.txt", b"old")
    _, fresh = await api.upload(user, "fresh.txt", b"fresh")
    for f in (old, fresh):
        await api.request("DELETE", f"/files/{f['id']}", user)
    days = cluster.config.lifecycle.trash_retention_days
    await db.execute("UPDATE files SET deleted_at = now() - $2::interval WHERE id = $1",
                     uuid.UUID(old["id"]), timedelta(days=days + 1))
    for i in range(4):
        await api.upload(user, "kept.txt", f"v{i}".encode())
    await db.execute("UPDATE users SET keep_versions = 2 WHERE id = $1", uuid.UUID(user.id))
    counters = await gc_pass(cluster.config)
    assert counters["trash_items_purged"] >= 1 and counters["versions_pruned"] >= 2
    _, listing, _ = await api.request("GET", "/trash", user)
    assert [i["id"] for i in listing["items"]] == [fresh["id"]]
    _, kept, _ = await api.request("GET", "/files", user)
    fid = kept["items"][0]["id"]
    _, versions, _ = await api.request("GET", f"/files/{fid}/versions", user)
    assert [v["version"] for v in versions["versions"]] == [4, 3]


# --- multipart ------------------------------------------------------------------------------

async def put_part(api: Api, user: ApiUser, upload_id: str, n: int,
                   data: bytes) -> tuple[int, dict]:
    status, body, _ = await api.request(
        "PUT", f"/files/upload/multipart/{upload_id}/part/{n}", user, data=data,
        headers={"X-Content-SHA256": hashlib.sha256(data).hexdigest()})
    return status, body


async def test_multipart_out_of_order_parallel_with_a_replaced_part(
        api: Api, user: ApiUser) -> None:
    parts = {1: os.urandom(5 * MIB), 2: os.urandom(5 * MIB), 3: os.urandom(MIB + 3)}
    total = sum(len(p) for p in parts.values())
    status, up, _ = await api.request("POST", "/files/upload/multipart/init", user,
                                      json={"file_name": "big.bin", "file_size": total})
    assert status == 201, up
    assert up["part_size_min"] == 5 * MIB and up["max_parts"] == 10000
    uid = up["upload_id"]
    results = await asyncio.gather(*(put_part(api, user, uid, n, parts[n]) for n in (3, 1, 2)))
    assert all(status == 200 for status, _ in results), results
    parts[2] = os.urandom(5 * MIB)  # an interrupted part is simply sent again
    status, body = await put_part(api, user, uid, 2, parts[2])
    assert status == 200 and body["sha256"] == hashlib.sha256(parts[2]).hexdigest()
    _, shown, _ = await api.request("GET", f"/files/upload/multipart/{uid}", user)
    assert [p["part_number"] for p in shown["parts"]] == [1, 2, 3]
    listed = [{"part_number": n, "sha256": hashlib.sha256(d).hexdigest()}
              for n, d in parts.items()]
    status, f, _ = await api.request("POST", f"/files/upload/multipart/{uid}/complete", user,
                                     json={"parts": listed})
    assert status == 201, f
    whole = parts[1] + parts[2] + parts[3]
    assert f["size"] == total and f["sha256"] == hashlib.sha256(whole).hexdigest()
    assert await body_of(api, user, f"/files/{f['id']}/download") == whole
    status, body = await put_part(api, user, uid, 1, b"late")
    assert_error(status, body, 409, "upload_closed")


async def test_multipart_errors(api: Api, user: ApiUser, db: asyncpg.Connection) -> None:
    _, up, _ = await api.request("POST", "/files/upload/multipart/init", user,
                                 json={"file_name": "gaps.bin"})
    uid = up["upload_id"]
    await put_part(api, user, uid, 1, os.urandom(5 * MIB))
    await put_part(api, user, uid, 3, b"tail")
    status, body, _ = await api.request("POST", f"/files/upload/multipart/{uid}/complete",
                                        user)
    assert_error(status, body, 400, "missing_parts")
    assert "2" in body["error"]["message"]
    await put_part(api, user, uid, 2, b"too small")
    status, body, _ = await api.request("POST", f"/files/upload/multipart/{uid}/complete",
                                        user)
    assert_error(status, body, 400, "part_too_small")
    status, body, _ = await api.request(
        "POST", f"/files/upload/multipart/{uid}/complete", user,
        json={"parts": [{"part_number": 1, "sha256": "0" * 64}]})
    assert_error(status, body, 400, "part_mismatch")
    stranger = await api.register()
    for method, path in (("GET", f"/files/upload/multipart/{uid}"),
                         ("DELETE", f"/files/upload/multipart/{uid}"),
                         ("POST", f"/files/upload/multipart/{uid}/complete")):
        status, body, _ = await api.request(method, path, stranger)
        assert_error(status, body, 404, "not_found")
    status, body = await put_part(api, stranger, uid, 4, b"x")
    assert_error(status, body, 404, "not_found")
    status, body = await put_part(api, user, uid, 0, b"x")
    assert_error(status, body, 400, "invalid_part_number")
    assert (await api.request("DELETE", f"/files/upload/multipart/{uid}", user))[0] == 204
    status, body = await put_part(api, user, uid, 4, b"x")
    assert_error(status, body, 409, "upload_closed")
    _, up2, _ = await api.request("POST", "/files/upload/multipart/init", user,
                                  json={"file_name": "stale.bin"})
    await db.execute("UPDATE multipart_uploads SET expires_at = now() - interval '1 second' "
                     "WHERE id = $1", uuid.UUID(up2["upload_id"]))
    status, body = await put_part(api, user, up2["upload_id"], 1, b"x")
    assert_error(status, body, 410, "upload_expired")


async def test_gc_expires_stale_multipart_uploads(
        api: Api, user: ApiUser, db: asyncpg.Connection, cluster: ClusterHandle) -> None:
    _, up, _ = await api.request("POST", "/files/upload/multipart/init", user,
                                 json={"file_name": "abandoned.bin"})
    await put_part(api, user, up["upload_id"], 1, os.urandom(100_000))
    _, usage, _ = await api.request("GET", "/storage/usage", user)
    assert usage["used_bytes"] == 100_000  # open parts count against the quota
    await db.execute("UPDATE multipart_uploads SET expires_at = now() - interval '1 hour' "
                     "WHERE id = $1", uuid.UUID(up["upload_id"]))
    assert (await gc_pass(cluster.config))["multipart_expired"] >= 1
    _, shown, _ = await api.request("GET", f"/files/upload/multipart/{up['upload_id']}", user)
    assert shown["state"] == "aborted" and shown["parts"] == []
    _, usage, _ = await api.request("GET", "/storage/usage", user)
    assert usage["used_bytes"] == 0


# --- quotas ---------------------------------------------------------------------------------

async def test_quota_refuses_before_and_while_streaming(
        api: Api, user: ApiUser, db: asyncpg.Connection) -> None:
    await db.execute("UPDATE users SET quota_bytes = $2 WHERE id = $1", uuid.UUID(user.id),
                     MIB)
    _, usage, _ = await api.request("GET", "/storage/usage", user)
    assert usage["quota_bytes"] == MIB
    status, body = await api.upload(user, "big.bin", os.urandom(2 * MIB))  # Content-Length
    assert_error(status, body, 507, "quota_exceeded")

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: caught mid-stream
        for _ in range(8):
            yield os.urandom(256 * 1024)

    status, body, _ = await api.request(
        "POST", "/files/upload", user, data=chunked(),
        headers={"X-File-Name": "streamed.bin", "Content-Type": "application/octet-stream"})
    assert_error(status, body, 507, "quota_exceeded")
    _, listing, _ = await api.request("GET", "/files", user)
    assert listing["items"] == []  # nothing visible
    assert (await api.upload(user, "fits.bin", os.urandom(MIB // 2)))[0] == 201
    status, body = await api.upload(user, "fits.bin", os.urandom(MIB // 2 + 1))  # version
    assert_error(status, body, 507, "quota_exceeded")
    status, up, _ = await api.request("POST", "/files/upload/multipart/init", user,
                                      json={"file_name": "mp.bin", "file_size": 2 * MIB})
    assert_error(status, up, 507, "quota_exceeded")
