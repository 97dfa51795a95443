"""The Python SDK (dfms.client) against the real cluster: chunk-level puts and their dedup,
verified and resumed downloads, the error tree, token refresh and the sync wrapper."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from dfms.client import Conflict, DfmsClient, NotFound, Unauthorized
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
