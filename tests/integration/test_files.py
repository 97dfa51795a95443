"""Files through the public API against the real cluster."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import uuid
from urllib.parse import quote

import aiohttp
import asyncpg
import pytest

from dfms.storage import NodeClient, chunk_key
from tests.support.api import Api, ApiUser
from tests.support.cluster import ClusterHandle

MIB = 1024 * 1024


def assert_error(status: int, body: object, expected_status: int, code: str) -> None:
    assert status == expected_status, body
    assert isinstance(body, dict)
    err = body["error"]
    assert err["code"] == code and err["message"] and err["request_id"]


async def download(api: Api, user: ApiUser, file_id: str,
                   **headers: str) -> tuple[int, bytes, object]:
    status, body, hdrs = await api.request("GET", f"/files/{file_id}/download", user,
                                           headers=headers)
    return status, body, hdrs


async def test_raw_upload_and_download_round_trip(api: Api, user: ApiUser) -> None:
    data = os.urandom(3 * MIB + 17)
    status, body = await api.upload(user, "data.bin", data,
                                    **{"X-Content-SHA256": hashlib.sha256(data).hexdigest()})
    assert status == 201, body
    assert body["name"] == "data.bin" and body["size"] == len(data)
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    assert body["version"] == 1 and body["file"] == body["id"]
    assert body["chunk_count"] == body["new_chunks"] + body["dedup_chunks"] >= 1
    status, got, headers = await download(api, user, body["id"])
    assert status == 200 and got == data
    assert headers["ETag"] == f'"{body["sha256"]}"'
    assert headers["Accept-Ranges"] == "bytes"
    assert int(headers["Content-Length"]) == len(data)
    assert headers["X-Request-Id"]
    status, meta, _ = await api.request("GET", f"/files/{body['id']}", user)
    assert status == 200 and meta["sha256"] == body["sha256"]


async def test_multipart_form_upload(api: Api, user: ApiUser) -> None:
    data = os.urandom(MIB)
    form = aiohttp.FormData()
    form.add_field("file", data, filename="form ✓.bin",
                   content_type="application/octet-stream")
    status, body, _ = await api.request("POST", "/files/upload", user, data=form)
    assert status == 201, body
    assert body["name"] == "form ✓.bin" and body["size"] == len(data)
    assert (await download(api, user, body["id"]))[1] == data


async def test_empty_one_byte_and_200_mib_files(api: Api, user: ApiUser) -> None:
    for name, data in (("empty", b""), ("one", b"\x01")):
        status, body = await api.upload(user, name, data)
        assert status == 201 and body["size"] == len(data), body
        status, got, _ = await download(api, user, body["id"])
        assert status == 200 and got == data
    big = os.urandom(200 * MIB)
    status, body = await api.upload(user, "big.bin", big)
    assert status == 201, body
    assert body["sha256"] == hashlib.sha256(big).hexdigest()
    async with api.session.get(api.url(f"/files/{body['id']}/download"),
                               headers=user.headers) as resp:
        digest, total = hashlib.sha256(), 0
        async for piece in resp.content.iter_chunked(MIB):
            digest.update(piece)
            total += len(piece)
    assert total == len(big) and digest.hexdigest() == body["sha256"]


@pytest.mark.parametrize("name", ["naïve café ✓.txt", "with  spaces .txt",
                                  "quotes \"double\" 'single'.txt", "日本語のファイル名.txt",
                                  "x" * 251 + ".txt", "emoji 😀.txt"])
async def test_unusual_names_survive(api: Api, user: ApiUser, name: str) -> None:
    status, body = await api.upload(user, quote(name, safe=""), b"content")
    assert status == 201, body
    assert body["name"] == name
    status, _, headers = await download(api, user, body["id"])
    assert status == 200
    assert f"filename*=UTF-8''{quote(name, safe='')}" in headers["Content-Disposition"]


async def test_bad_upload_requests(api: Api, user: ApiUser) -> None:
    status, body, _ = await api.request("POST", "/files/upload", user, data=b"x")
    assert_error(status, body, 400, "missing_file_name")
    status, body = await api.upload(user, "..", b"x")
    assert_error(status, body, 400, "invalid_name")
    status, body = await api.upload(user, "a%2Fb", b"x")
    assert_error(status, body, 400, "invalid_name")
    status, body = await api.upload(user, "x", b"x", **{"X-Content-SHA256": "zz"})
    assert_error(status, body, 400, "invalid_checksum")
    status, body = await api.upload(user, "x", b"x", folder_id=str(uuid.uuid4()))
    assert_error(status, body, 404, "not_found")
    status, body, _ = await api.request("POST", "/files/upload", None,
                                        headers={"X-File-Name": "x"}, data=b"x")
    assert_error(status, body, 401, "unauthorized")


async def test_checksum_mismatch_leaves_no_file(api: Api, user: ApiUser) -> None:
    status, body = await api.upload(user, "wrong.bin", b"payload",
                                    **{"X-Content-SHA256": "0" * 64})
    assert_error(status, body, 422, "checksum_mismatch")
    status, listing, _ = await api.request("GET", "/files", user)
    assert status == 200 and listing["items"] == []


async def test_a_file_cannot_take_a_folders_name(api: Api, user: ApiUser) -> None:
    status, folder, _ = await api.request("POST", "/folders", user, json={"name": "dup"})
    assert status == 201, folder
    status, body = await api.upload(user, "dup", b"one")
    assert_error(status, body, 409, "name_taken")


async def test_ranges_and_conditional_requests(api: Api, user: ApiUser) -> None:
    data = os.urandom(9 * MIB)
    _, body = await api.upload(user, "ranged.bin", data)
    fid, etag = body["id"], f'"{body["sha256"]}"'
    status, got, headers = await download(api, user, fid, Range="bytes=100-199")
    assert status == 206 and got == data[100:200]
    assert headers["Content-Range"] == f"bytes 100-199/{len(data)}"
    status, got, _ = await download(api, user, fid, Range=f"bytes={5 * MIB}-")
    assert status == 206 and got == data[5 * MIB:]
    status, got, _ = await download(api, user, fid, Range="bytes=-1000")
    assert status == 206 and got == data[-1000:]
    status, got, headers = await download(api, user, fid, Range="bytes=0-9,4194300-4194310")
    assert status == 206
    ctype = headers["Content-Type"]
    assert ctype.startswith("multipart/byteranges; boundary=")
    parts = parse_byteranges(got, ctype.split("boundary=")[1])
    assert parts == [(f"bytes 0-9/{len(data)}", data[0:10]),
                     (f"bytes 4194300-4194310/{len(data)}", data[4194300:4194311])]
    assert int(headers["Content-Length"]) == len(got)
    status, body416, headers = await download(api, user, fid, Range=f"bytes={len(data)}-")
    assert_error(status, body416, 416, "range_not_satisfiable")
    assert headers["Content-Range"] == f"bytes */{len(data)}"
    status, got, _ = await download(api, user, fid, **{"If-None-Match": etag})
    assert status == 304 and got == b""
    status, got, _ = await download(api, user, fid, Range="bytes=0-3", **{"If-Range": etag})
    assert status == 206 and got == data[:4]
    status, got, _ = await download(api, user, fid, Range="bytes=0-3",
                                    **{"If-Range": '"stale"'})
    assert status == 200 and got == data  # validator changed: the whole body


def parse_byteranges(body: bytes, boundary: str) -> list[tuple[str, bytes]]:
    parts = []
    for raw in body.split(f"--{boundary}".encode())[1:-1]:
        head, _, payload = raw.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        fields = dict(line.split(": ", 1) for line in head.decode().split("\r\n"))
        parts.append((fields["Content-Range"], payload.removesuffix(b"\r\n")))
    return parts


async def test_listing_pagination_and_sorting(api: Api, user: ApiUser) -> None:
    sizes = {"c.txt": 30, "a.txt": 10, "e.txt": 50, "b.txt": 20, "d.txt": 40}
    for name, size in sizes.items():
        assert (await api.upload(user, name, os.urandom(size)))[0] == 201
    status, page, _ = await api.request("GET", "/files?per_page=2&sort=name", user)
    assert status == 200 and page["total"] == 5
    names, cursor = [i["name"] for i in page["items"]], page["next_cursor"]
    while cursor:
        _, page, _ = await api.request("GET", f"/files?per_page=2&sort=name&cursor={cursor}",
                                       user)
        names += [i["name"] for i in page["items"]]
        cursor = page["next_cursor"]
    assert names == sorted(sizes)
    _, page, _ = await api.request("GET", "/files?sort=size&order=desc&per_page=2&page=2",
                                   user)
    assert [i["name"] for i in page["items"]] == ["c.txt", "b.txt"]
    status, body, _ = await api.request("GET", "/files?sort=colour", user)
    assert_error(status, body, 400, "validation_error")
    status, body, _ = await api.request("GET", "/files?cursor=garbage", user)
    assert_error(status, body, 400, "invalid_cursor")


async def test_rename_move_and_delete(api: Api, user: ApiUser) -> None:
    _, f = await api.upload(user, "old.txt", b"text")
    _, folder, _ = await api.request("POST", "/folders", user, json={"name": "docs"})
    status, body, _ = await api.request("PATCH", f"/files/{f['id']}", user,
                                        json={"name": "new.txt", "folder_id": folder["id"]})
    assert status == 200 and body["name"] == "new.txt" and body["folder_id"] == folder["id"]
    _, listing, _ = await api.request("GET", f"/files?folder_id={folder['id']}", user)
    assert [i["id"] for i in listing["items"]] == [f["id"]]
    _, other = await api.upload(user, "taken.txt", b"x", folder_id=folder["id"])
    status, body, _ = await api.request("PATCH", f"/files/{f['id']}", user,
                                        json={"name": "taken.txt"})
    assert_error(status, body, 409, "name_taken")
    status, _, _ = await api.request("DELETE", f"/files/{f['id']}", user)
    assert status == 204
    for method, path in (("GET", f"/files/{f['id']}"), ("GET", f"/files/{f['id']}/download"),
                         ("DELETE", f"/files/{f['id']}")):
        status, body, _ = await api.request(method, path, user)
        assert_error(status, body, 404, "not_found")
    _, listing, _ = await api.request("GET", f"/files?folder_id={folder['id']}", user)
    assert [i["id"] for i in listing["items"]] == [other["id"]]
    # The name is free again once the file is deleted.
    assert (await api.upload(user, "new.txt", b"again", folder_id=folder["id"]))[0] == 201


async def test_another_users_files_are_404(api: Api, user: ApiUser) -> None:
    _, f = await api.upload(user, "mine.txt", b"secret")
    stranger = await api.register()
    for method, path, kw in (("GET", f"/files/{f['id']}", {}),
                             ("GET", f"/files/{f['id']}/download", {}),
                             ("PATCH", f"/files/{f['id']}", {"json": {"name": "x"}}),
                             ("DELETE", f"/files/{f['id']}", {})):
        status, body, _ = await api.request(method, path, stranger, **kw)
        assert_error(status, body, 404, "not_found")
    status, listing, _ = await api.request("GET", "/files", stranger)
    assert listing["items"] == []
    assert (await download(api, user, f["id"]))[1] == b"secret"  # untouched


async def test_truncated_upload_leaves_no_file(api: Api, user: ApiUser,
                                               cluster: ClusterHandle) -> None:
    host, port = cluster.gateway_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = (f"POST /api/v1/files/upload HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {user.access_token}\r\nX-File-Name: cut.bin\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {10 * MIB}\r\n\r\n")
    writer.write(head.encode() + os.urandom(3 * MIB))
    await writer.drain()
    writer.close()  # the client goes away with 7 MiB unsent
    await writer.wait_closed()
    del reader
    for _ in range(20):  # give the gateway time to notice and clean up
        await asyncio.sleep(0.25)
        _, listing, _ = await api.request("GET", "/files", user)
        assert all(i["name"] != "cut.bin" for i in listing["items"])
    assert (await api.upload(user, "cut.bin", b"whole"))[0] == 201  # name never taken


async def test_a_failure_after_headers_aborts_the_connection(
        api: Api, user: ApiUser, cluster: ClusterHandle) -> None:
    data = os.urandom(12 * MIB)
    _, body = await api.upload(user, "doomed.bin", data)
    conn = await asyncpg.connect(cluster.postgres_dsn)
    try:
        last = await conn.fetchval(
            "SELECT e.chunk_sha256 FROM files f JOIN file_versions v ON v.file_id = f.id "
            "JOIN manifest_entries e ON e.manifest_id = v.manifest_id WHERE f.id = $1 "
            "ORDER BY e.idx DESC LIMIT 1", uuid.UUID(body["id"]))
    finally:
        await conn.close()
    assert body["chunk_count"] > 2
    for node in cluster.s3_nodes:  # every replica of the last chunk goes bad
        async with NodeClient(node["id"], node["endpoint"], cluster.config.s3) as raw:
            await raw.put(chunk_key(bytes(last).hex()), b"rotten")
    got = bytearray()
    with pytest.raises(aiohttp.ClientPayloadError):
        async with api.session.get(api.url(f"/files/{body['id']}/download"),
                                   headers=user.headers) as resp:
            assert resp.status == 200  # headers went out before the bad chunk was reached
            async for piece in resp.content.iter_chunked(MIB):
                got += piece
    assert len(got) < len(data)  # a short body, never presented as complete


async def test_malformed_forms_and_forged_cursors_are_400(api: Api, user: ApiUser) -> None:
    status, body, _ = await api.request(
        "POST", "/files/upload", user, data=b"--x\r\n",
        headers={"Content-Type": "multipart/form-data"})  # no boundary
    assert_error(status, body, 400, "invalid_form")
    status, body, _ = await api.request(
        "POST", "/files/upload", user,
        data=b"--b\r\nContent-Disposition: form-data; name=\"file\"\x01\r\n\r\nx\r\n--b--\r\n",
        headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert_error(status, body, 400, "invalid_form")
    import base64

    def cursor(doc: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).decode().rstrip("=")

    for forged, sort in ((["name", "asc", "a", 5], "name"),
                         (["name", "asc", "a\x00b", str(uuid.uuid4())], "name"),
                         (["size", "asc", 10**23, str(uuid.uuid4())], "size"),
                         (["size", "asc", True, str(uuid.uuid4())], "size")):
        status, body, _ = await api.request(
            "GET", f"/files?sort={sort}&cursor={cursor(forged)}", user)
        assert_error(status, body, 400, "invalid_cursor")
