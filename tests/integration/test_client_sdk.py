"""The Python SDK (dfms.client) against the real cluster: chunk-level puts and their dedup,
verified and resumed downloads, the error tree, token refresh and the sync wrapper."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from dfms.client import (
    Conflict,
    DfmsClient,
    Folder,
    NotFound,
    PreconditionFailed,
    QuotaExceeded,
    Unauthorized,
    make_folders,
    resolve,
    resolve_folder,
)
from dfms.client.sync import Client
from tests.support.api import PASSWORD, ApiUser
from tests.support.cluster import ClusterHandle

KIB = 1024
MIB = 1024 * KIB


@pytest.fixture
async def sdk(cluster: ClusterHandle, user: ApiUser) -> AsyncIterator[DfmsClient]:
    async with DfmsClient(cluster.gateway_url, token=user.access_token,
                          refresh_token=user.refresh_token) as client:
        yield client


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


async def test_put_chunked_round_trip_then_nothing_to_send(
        sdk: DfmsClient, tmp_path: Path) -> None:
    data = os.urandom(5 * MIB + 12345)
    src = write(tmp_path, "round.bin", data)
    first = await sdk.put_chunked(src)
    assert first.chunked and first.file.name == "round.bin"
    assert first.file.size == len(data) and first.chunks_total > 1
    assert (first.bytes_read, first.bytes_sent, first.chunks_sent) == (
        len(data), len(data), first.chunks_total)
    got = await sdk.download(first.file.id, tmp_path / "copy.bin")
    assert got.sha256 == first.file.sha256
    assert (tmp_path / "copy.bin").read_bytes() == data
    assert not (tmp_path / "copy.bin.part").exists()

    again = await sdk.put_chunked(src)
    print(f"\nfirst put: {first}\nsecond put: {again}")  # shown with -s
    assert (again.bytes_sent, again.chunks_sent) == (0, 0)
    assert again.file.id == first.file.id and again.file.unchanged


async def test_a_one_byte_edit_sends_only_a_few_chunks(sdk: DfmsClient, tmp_path: Path) -> None:
    data = bytearray(os.urandom(12 * MIB))
    src = write(tmp_path, "big.bin", bytes(data))
    first = await sdk.put_chunked(src)
    data[7 * MIB] ^= 0xFF
    src.write_bytes(bytes(data))
    edit = await sdk.put_chunked(src)
    print(f"\nfirst put: {first}\none-byte edit: {edit}")  # shown with -s
    assert edit.file.id == first.file.id and edit.file.version == 2
    assert 1 <= edit.chunks_sent <= 3, edit
    assert edit.bytes_sent <= 3 * 4 * MIB and edit.bytes_sent < len(data) // 2, edit
    await sdk.download(edit.file.id, tmp_path / "big.copy")
    assert (tmp_path / "big.copy").read_bytes() == bytes(data)


class RecordingClient(DfmsClient):
    """Records the headers of each request, to see the Range a download sent."""

    sent: list[dict[str, str]]

    async def _send(self, method: str, path: str, **kw: Any) -> Any:
        self.sent = [*getattr(self, "sent", []), dict(kw.get("headers") or {})]
        return await super()._send(method, path, **kw)


async def test_download_resumes_a_partial_file(cluster: ClusterHandle, user: ApiUser,
                                               tmp_path: Path) -> None:
    data = os.urandom(3 * MIB + 7)
    async with RecordingClient(cluster.gateway_url, token=user.access_token) as sdk:
        file = await sdk.upload(write(tmp_path, "r.bin", data), "r.bin")
        dest = tmp_path / "r.out"
        (tmp_path / "r.out.part").write_bytes(data[:MIB])
        await sdk.download(file.id, dest)
        assert dest.read_bytes() == data
        assert sdk.sent[-1]["Range"] == f"bytes={MIB}-"
        # A partial file that is not this content: verified, found bad, fetched whole.
        (tmp_path / "r.out.part").write_bytes(b"\0" * MIB)
        await sdk.download(file.id, dest)
        assert dest.read_bytes() == data and "Range" not in sdk.sent[-1]


async def test_errors_carry_status_and_code(cluster: ClusterHandle, sdk: DfmsClient) -> None:
    with pytest.raises(NotFound) as nf:
        await sdk.stat(str(uuid.uuid4()))
    assert (nf.value.status, nf.value.code) == (404, "not_found")
    await sdk.create_folder("twice")
    with pytest.raises(Conflict) as taken:
        await sdk.create_folder("twice")
    assert (taken.value.status, taken.value.code) == (409, "name_taken")
    async with DfmsClient(cluster.gateway_url, token="not-a-jwt") as bad:
        with pytest.raises(Unauthorized) as unauth:
            await bad.me()
    assert (unauth.value.status, unauth.value.code) == (401, "invalid_token")
    await sdk.logout()
    assert sdk.tokens is None
    with pytest.raises(Unauthorized) as after:
        await sdk.me()
    assert after.value.status == 401


async def test_refreshes_the_access_token_before_it_expires(cluster: ClusterHandle,
                                                            user: ApiUser) -> None:
    now = [0.0]
    async with DfmsClient(cluster.gateway_url, clock=lambda: now[0]) as sdk:
        await sdk.login(user.email, PASSWORD)
        before = sdk.tokens
        assert before is not None and before.expires_in
        now[0] += before.expires_in  # past its expiry (as far as the client can tell)
        assert (await sdk.me()).email == user.email
        after = sdk.tokens
        assert after is not None and after.refresh_token != before.refresh_token


async def test_upload_stream_folders_paging_and_delete(sdk: DfmsClient) -> None:
    folder = await sdk.create_folder("inbox")

    async def blocks() -> AsyncIterator[bytes]:
        for i in range(3):
            yield bytes([i]) * 1000

    names = ["a.txt", "b.txt", "c.txt"]
    files = [await sdk.upload(blocks(), n, folder.id) for n in names]
    assert all(f.size == 3000 and f.folder_id == folder.id for f in files)
    page = await sdk.list_files_page(folder.id, per_page=2)
    assert len(page.items) == 2 and page.total == 3 and page.next_cursor
    assert sorted(f.name for f in await sdk.list_files(folder.id)) == names
    root = await sdk.list_folder()
    assert [f.name for f in root.folders] == ["inbox"] and root.folder is None
    await sdk.delete(files[0].id)
    assert sorted(f.name for f in await sdk.list_files(folder.id)) == names[1:]


def test_the_sync_wrapper(cluster: ClusterHandle, tmp_path: Path) -> None:
    data = os.urandom(2 * MIB + 1)
    src = write(tmp_path, "s.bin", data)
    with Client(cluster.gateway_url) as c:
        user = c.register(f"sync-{uuid.uuid4().hex[:10]}@example.com", PASSWORD, "Sync")
        assert c.me().id == user.id
        put = c.put_chunked(src)
        assert put.bytes_sent == len(data)
        c.download(put.file.id, tmp_path / "s.out")
        assert (tmp_path / "s.out").read_bytes() == data
        assert [f.name for f in c.list_files()] == ["s.bin"]
        with pytest.raises(NotFound):
            c.stat(str(uuid.uuid4()))


async def test_versions_trash_and_usage(sdk: DfmsClient, tmp_path: Path) -> None:
    src = write(tmp_path, "v.txt", b"one")
    first = await sdk.upload(src, "v.txt")
    src.write_bytes(b"two!")
    second = await sdk.put_chunked(src)
    assert second.file.id == first.id and second.file.version == 2
    versions = await sdk.versions(first.id)
    assert [(v.version, v.size, v.current) for v in versions] == [(2, 4, True), (1, 3, False)]
    usage = await sdk.usage()
    assert (usage.file_count, usage.version_count, usage.used_bytes) == (1, 2, 7)
    await sdk.delete(first.id)
    trash = await sdk.trash_page()
    assert [(i.id, i.type, i.name, i.size) for i in trash.items] == [
        (first.id, "file", "v.txt", 4)]


async def test_paths_resolve_and_mkdir_p(sdk: DfmsClient, tmp_path: Path) -> None:
    folder_id = await make_folders(sdk, "/photos/2024")
    assert folder_id and await make_folders(sdk, "photos/2024/") == folder_id  # idempotent
    put = await sdk.put_chunked(write(tmp_path, "a.jpg", b"jpeg"), folder_id=folder_id)
    entry = await resolve(sdk, "/photos/2024/a.jpg")
    assert entry.file is not None and entry.file.id == put.file.id
    assert entry.folder_id == folder_id and entry.path == "/photos/2024/a.jpg"
    assert (await resolve(sdk, "/")).folder is None
    assert await resolve_folder(sdk, "/photos/2024") == folder_id
    with pytest.raises(NotFound, match="/photos/2025"):
        await resolve(sdk, "/photos/2025/a.jpg")
    with pytest.raises(NotFound, match="not a folder"):
        await resolve(sdk, "/photos/2024/a.jpg/x")
    with pytest.raises(Conflict):
        await make_folders(sdk, "/photos/2024/a.jpg/deeper")


async def test_rename_move_trash_restore_and_purge(sdk: DfmsClient, tmp_path: Path) -> None:
    docs = await sdk.create_folder("docs")
    old = await sdk.create_folder("old")
    file = (await sdk.put_chunked(write(tmp_path, "r.txt", b"report"))).file
    moved = await sdk.update_file(file.id, name="report.txt", folder_id=docs.id)
    assert (moved.name, moved.folder_id) == ("report.txt", docs.id)
    assert (await sdk.update_file(file.id, folder_id="root")).folder_id is None
    sub = await sdk.update_folder(old.id, name="archive", parent_id=docs.id)
    assert (sub.name, sub.parent_id) == ("archive", docs.id)
    await sdk.delete(file.id)
    await sdk.delete_folder(docs.id, recursive=True)
    trash = [i async for i in sdk.iter_trash()]
    assert [(i.type, i.name) for i in trash] == [("folder", "docs"), ("file", "report.txt")]
    back = await sdk.restore_trash_item(docs.id)
    assert isinstance(back, Folder) and back.name == "docs"
    assert (await resolve(sdk, "/docs/archive")).folder_id == old.id
    await sdk.purge_trash_item(file.id)
    assert [i async for i in sdk.iter_trash()] == []
    with pytest.raises(NotFound):
        await sdk.stat(file.id)


async def test_version_restore_if_match_search_and_shares(sdk: DfmsClient,
                                                          tmp_path: Path) -> None:
    src = write(tmp_path, "quarterly_report.txt", b"v1")
    v1 = (await sdk.put_chunked(src)).file
    src.write_bytes(b"v2")
    with pytest.raises(PreconditionFailed):
        await sdk.put_chunked(src, if_match="00" * 32)
    v2 = (await sdk.put_chunked(src, if_match=v1.sha256)).file
    assert v2.version == 2
    back = await sdk.restore_version(v1.id, 1)
    assert (back.version, back.sha256) == (3, v1.sha256)
    hits = await sdk.search("quarterly")
    assert [(h.item.id, h.path) for h in hits.items] == [(v1.id, "/")]
    share = await sdk.create_share(v1.id, max_downloads=2)
    assert share.token and share.url and share.url.endswith(share.token)
    listed = await sdk.list_shares(file_id=v1.id)
    assert [(s.id, s.state, s.token) for s in listed.items] == [(share.id, "active", None)]
    await sdk.revoke_share(share.id)
    assert (await sdk.list_shares()).items[0].state == "revoked"


async def test_quota_exceeded_mid_put_frees_its_session(
        sdk: DfmsClient, user: ApiUser, db: Any, tmp_path: Path) -> None:
    await db.execute("UPDATE users SET quota_bytes = $2 WHERE id = $1", uuid.UUID(user.id),
                     8 * MIB)
    with pytest.raises(QuotaExceeded):
        await sdk.put_chunked(write(tmp_path, "big.bin", os.urandom(12 * MIB)))
    assert await sdk.list_files() == []
    # The failed put's chunks no longer hold the quota: 6 MiB more fit.
    put = await sdk.put_chunked(write(tmp_path, "fits.bin", os.urandom(6 * MIB)))
    assert put.file.size == 6 * MIB
