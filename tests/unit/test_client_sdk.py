"""dfms.client's pure logic: error translation, the retry policy (on a fake clock), JSON to
dataclasses, and client-side chunking matching the server's chunker."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiohttp import web

from dfms.chunker import make_chunker
from dfms.client import DfmsClient, errors
from dfms.client.chunking import build_manifest, local_chunker, read_chunk
from dfms.client.errors import DfmsError, error_from_response
from dfms.client.models import (
    ChunkerInfo,
    File,
    FilePage,
    FileVersion,
    Folder,
    FolderContents,
    PutResult,
    SearchPage,
    Share,
    SharePage,
    StorageUsage,
    Tokens,
    TrashPage,
    file_or_folder,
)
from dfms.client.paths import split_path
from dfms.client.retry import RetryPolicy, with_retries
from tests.support.loopback import fake_gateway

THIS_FILE = Path(__file__).read_bytes()
ENVELOPE = {"error": {"code": "name_taken", "message": "taken", "request_id": "r1"}}


@pytest.mark.parametrize(("status", "cls"), [
    (400, errors.BadRequest), (401, errors.Unauthorized), (403, errors.Forbidden),
    (404, errors.NotFound), (409, errors.Conflict), (412, errors.PreconditionFailed),
    (413, errors.PayloadTooLarge), (416, errors.RangeNotSatisfiable),
    (422, errors.ChecksumMismatch), (429, errors.RateLimited), (503, errors.Unavailable),
    (507, errors.QuotaExceeded), (500, errors.ServerError), (502, errors.ServerError),
    (418, errors.DfmsError)])
def test_status_picks_the_class(status: int, cls: type[DfmsError]) -> None:
    error = error_from_response(status, ENVELOPE, {})
    assert type(error) is cls
    assert (error.status, error.code, error.message, error.request_id) == (
        status, "name_taken", "taken", "r1")


def test_retry_after_and_bodies_that_are_no_envelope() -> None:
    limited = error_from_response(429, ENVELOPE, {"Retry-After": "7"})
    assert isinstance(limited, errors.RateLimited) and limited.retry_after == 7.0
    assert error_from_response(503, ENVELOPE, {"Retry-After": "soon"}).retry_after is None
    proxy = error_from_response(502, b"<html>bad gateway</html>", {"X-Request-Id": "x"})
    assert (proxy.code, proxy.request_id) == ("http_502", "x")
    assert "bad gateway" in proxy.message
    assert isinstance(proxy, errors.ServerError)
    # One tree with the project's errors: `except dfms.errors.DfmsError` catches it too.
    from dfms.errors import DfmsError as ProjectError
    assert isinstance(proxy, ProjectError)


def test_backoff_doubles_is_capped_and_honours_retry_after() -> None:
    policy = RetryPolicy(attempts=5, base_delay_s=0.5, max_delay_s=4.0, jitter=0.0)
    assert [policy.delay(n, None) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert policy.delay(1, 3.0) == 3.0  # the server's wait wins over a shorter backoff
    assert policy.delay(3, 1.0) == 2.0  # ... and never shortens it
    assert policy.delay(1, 3600.0) == 4.0  # a huge Retry-After is capped
    jittery = RetryPolicy(base_delay_s=1.0, jitter=0.5, rng=lambda: 1.0)
    assert jittery.delay(1, None) == 1.5


async def test_with_retries_retries_only_what_says_try_again() -> None:
    slept: list[float] = []

    async def fake_sleep(s: float) -> None:
        slept.append(s)

    policy = RetryPolicy(attempts=3, base_delay_s=1.0, jitter=0.0)
    failures = [errors.RateLimited(429, "rate_limited", "", retry_after=5.0),
                errors.TransportError(0, "connection_error", "reset")]

    async def flaky() -> str:
        if failures:
            raise failures.pop(0)
        return "ok"

    assert await with_retries(flaky, policy, fake_sleep) == "ok"
    assert slept == [5.0, 2.0]

    async def always_503() -> str:
        raise errors.Unavailable(503, "overloaded", "", retry_after=1.0)

    slept.clear()
    with pytest.raises(errors.Unavailable):
        await with_retries(always_503, policy, fake_sleep)
    assert len(slept) == 2  # three tries in all

    async def not_found() -> str:
        raise errors.NotFound(404, "not_found", "")

    slept.clear()
    with pytest.raises(errors.NotFound):
        await with_retries(not_found, policy, fake_sleep)
    assert slept == []


FILE_JSON = {"id": "f1", "type": "file", "name": "a.txt", "folder_id": None, "size": 3,
             "sha256": "ab" * 32, "mime_type": "text/plain", "version": 2, "chunk_count": 1,
             "created_at": "2026-12-01T10:00:00Z", "updated_at": "2026-12-01T11:00:00+00:00",
             "some_future_field": 1}
FOLDER_JSON = {"id": "d1", "type": "folder", "name": "docs", "parent_id": None,
               "created_at": "2026-12-01T10:00:00Z", "updated_at": "2026-12-01T10:00:00Z"}


def test_json_to_dataclasses() -> None:
    f = File.from_json(FILE_JSON)
    assert (f.id, f.folder_id, f.size, f.version, f.unchanged) == ("f1", None, 3, 2, False)
    assert f.created_at == datetime(2026, 12, 1, 10, tzinfo=UTC)
    assert File.from_json({**FILE_JSON, "unchanged": True}).unchanged
    with pytest.raises(AttributeError):
        f.size = 4  # type: ignore[misc]  # frozen
    page = FilePage.from_json({"items": [FILE_JSON], "total": 9, "page": None,
                               "per_page": 1, "next_cursor": "c2"})
    assert (len(page.items), page.total, page.next_cursor) == (1, 9, "c2")
    contents = FolderContents.from_json({"folder": None, "folders": [FOLDER_JSON],
                                         "files": [FILE_JSON], "total_files": 1,
                                         "next_cursor": None})
    assert contents.folder is None and contents.folders[0].name == "docs"
    tokens = Tokens.from_session({"tokens": {"access_token": "a", "refresh_token": "dfmsr_r",
                                             "expires_in": 900}})
    assert tokens == Tokens("a", "dfmsr_r", 900.0)
    put = PutResult(f, 100, 25, 4, 1, True)
    assert put.dedup_ratio == 4.0


def info(**kw: object) -> ChunkerInfo:
    base: dict[str, object] = {
        "algorithm": "fastcdc", "min_size_bytes": 2048, "avg_size_bytes": 8192,
        "max_size_bytes": 32768, "digest": "sha256", "missing_max": 10000,
        "commit_max_chunks": 100000}
    return ChunkerInfo.from_json({**base, **kw, "upload_session_expiry_s": 86400})


def test_a_chunker_the_client_cannot_reproduce_is_none() -> None:
    assert local_chunker(info()) is not None
    assert local_chunker(info(algorithm="rabin")) is not None
    assert local_chunker(info(algorithm="buzhash")) is None
    assert local_chunker(info(digest="blake3")) is None
    assert local_chunker(info(min_size_bytes=1)) is None  # below fastcdc's bounds


@pytest.mark.parametrize("algorithm", ["fastcdc", "rabin"])
def test_manifest_is_the_servers_cut_whatever_the_read_block(tmp_path: Path,
                                                             algorithm: str) -> None:
    data = os.urandom(300_000)
    path = tmp_path / "x.bin"
    path.write_bytes(data)
    chunker = make_chunker(algorithm, 2048, 8192, 32768)
    want = [(o, n, hashlib.sha256(data[o:o + n]).hexdigest()) for o, n in chunker.cut(data)]
    for block in (1000, 32768, 100_000, 1 << 20):
        m = build_manifest(path, chunker, block)
        assert [(c.offset, c.size, c.sha256) for c in m.chunks] == want
        assert (m.size, m.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert read_chunk(path, m.chunks[1]) == data[want[1][0]:want[1][0] + want[1][1]]
    path.write_bytes(b"changed" + data)
    with pytest.raises(errors.FileChanged):
        read_chunk(path, m.chunks[1])


def test_empty_file_has_no_chunks(tmp_path: Path) -> None:
    (tmp_path / "e").write_bytes(b"")
    m = build_manifest(tmp_path / "e", make_chunker())
    assert (m.size, m.chunks, m.sha256) == (0, (), hashlib.sha256(b"").hexdigest())


def test_the_sdk_imports_nothing_of_the_server() -> None:
    code = ("import sys, dfms.client, dfms.client.sync; print(' '.join(sorted(m for m in "
            "sys.modules if m.split('.')[0] in ('asyncpg', 'grpc', 'redis', 'aiokafka', "
            "'opentelemetry', 'yaml') or m.startswith(('dfms.gateway', 'dfms.auth', "
            "'dfms.storage', 'dfms.config', 'dfms.metadata', 'dfms.chunkservice')))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == ""


# --- the request path, against a tiny loopback aiohttp server ---------------------------

def envelope(status: int, code: str, **headers: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": code, "request_id": "r"}},
                             status=status, headers=headers)


async def test_503_then_success_is_retried_after_retry_after() -> None:
    routes = web.RouteTableDef()
    answers = [envelope(503, "overloaded", **{"Retry-After": "2"}),
               envelope(429, "rate_limited", **{"Retry-After": "1"})]
    bodies: list[bytes] = []

    @routes.post("/api/v1/files/upload")
    async def upload(request: web.Request) -> web.Response:
        bodies.append(await request.read())
        return answers.pop(0) if answers else web.json_response(FILE_JSON, status=201)

    runner, url = await fake_gateway(routes)
    slept: list[float] = []

    async def fake_sleep(s: float) -> None:
        slept.append(s)

    try:
        async with DfmsClient(url, token="t", sleep=fake_sleep,
                              retry=RetryPolicy(base_delay_s=0.1, jitter=0.0)) as sdk:
            file = await sdk.upload(Path(__file__), "a.txt")
    finally:
        await runner.cleanup()
    assert file.id == "f1" and slept == [2.0, 1.0]
    assert bodies == [THIS_FILE] * 3  # a path is sent whole again on each try


async def test_an_expired_token_is_refreshed_once_and_the_call_repeated() -> None:
    routes = web.RouteTableDef()
    seen: list[str] = []

    @routes.get("/api/v1/files/{id}")
    async def stat(request: web.Request) -> web.Response:
        seen.append(request.headers["Authorization"])
        if request.headers["Authorization"] != "Bearer new":
            return envelope(401, "invalid_token")
        return web.json_response(FILE_JSON)

    @routes.post("/api/v1/auth/refresh")
    async def refresh(request: web.Request) -> web.Response:
        assert (await request.json()) == {"refresh_token": "dfmsr_old"}
        return web.json_response({"tokens": {"access_token": "new",
                                             "refresh_token": "dfmsr_new", "expires_in": 900}})

    runner, url = await fake_gateway(routes)
    try:
        async with DfmsClient(url, token="old", refresh_token="dfmsr_old") as sdk:
            assert (await sdk.stat("f1")).id == "f1"
            assert sdk.tokens == Tokens("new", "dfmsr_new", 900.0)
        async with DfmsClient(url, token="old") as no_refresh:
            with pytest.raises(errors.Unauthorized):
                await no_refresh.stat("f1")
    finally:
        await runner.cleanup()
    assert seen == ["Bearer old", "Bearer new", "Bearer old"]


async def test_a_connection_refused_is_a_transport_error_after_bounded_tries() -> None:
    runner, url = await fake_gateway(web.RouteTableDef())
    await runner.cleanup()  # nothing listens there now
    slept: list[float] = []

    async def fake_sleep(s: float) -> None:
        slept.append(s)

    async with DfmsClient(url, token="t", sleep=fake_sleep,
                          retry=RetryPolicy(attempts=3, jitter=0.0)) as sdk:
        with pytest.raises(errors.TransportError) as e:
            await sdk.stat("f1")
    assert e.value.status == 0 and len(slept) == 2


def test_versions_trash_and_usage_json() -> None:
    v = FileVersion.from_json({"version": 1, "size": 3, "sha256": "ab" * 32, "mime_type": "x",
                               "chunk_count": 1, "created_at": "2026-12-01T10:00:00Z",
                               "current": True})
    assert (v.version, v.current) == (1, True)
    page = TrashPage.from_json({"items": [{
        "id": "t1", "type": "file", "name": "a", "original_path": "/", "size": 3,
        "original_folder_id": None, "deleted_at": "2026-12-01T10:00:00Z",
        "purge_after": "2026-12-31T10:00:00Z"}], "total": 1, "page": 1, "per_page": 100,
        "next_cursor": None})
    assert page.items[0].original_folder_id is None and page.next_cursor is None
    usage = StorageUsage.from_json({"used_bytes": 7, "quota_bytes": None, "file_count": 1,
                                    "version_count": 2, "dedup_saved_bytes": 0})
    assert usage.quota_bytes is None and usage.used_bytes == 7


def test_search_shares_and_restored_items_json() -> None:
    hits = SearchPage.from_json({"items": [
        {**FILE_JSON, "type": "file", "score": 3.5, "path": "/docs"},
        {**FOLDER_JSON, "type": "folder", "score": 1, "path": "/"}],
        "total": 2, "page": 1, "per_page": 50})
    assert [(type(h.item).__name__, h.score, h.path) for h in hits.items] == [
        ("File", 3.5, "/docs"), ("Folder", 1.0, "/")]
    share = {"id": "s1", "file_id": "f1", "file_name": "a", "file_available": True,
             "created_at": "2026-12-01T10:00:00Z", "expires_at": "2026-12-08T10:00:00Z",
             "max_downloads": None, "download_count": 0, "has_password": False,
             "revoked": False, "revoked_at": None, "state": "active"}
    listed = SharePage.from_json({"items": [share], "total": 1, "page": 1, "per_page": 100})
    assert listed.items[0].token is None and listed.items[0].max_downloads is None
    made = Share.from_json({**share, "url": "http://h/s/t", "token": "t" * 43,
                            "max_downloads": 3})
    assert (made.url, made.max_downloads) == ("http://h/s/t", 3)
    assert isinstance(file_or_folder({**FOLDER_JSON, "type": "folder", "folder_id": None}),
                      Folder)
    assert isinstance(file_or_folder({**FILE_JSON, "type": "file"}), File)


@pytest.mark.parametrize(("path", "parts"), [
    ("/", []), ("", []), ("/photos/2024/a.jpg", ["photos", "2024", "a.jpg"]),
    ("photos//./2024/", ["photos", "2024"]), ("/ a b /", ["a b"]),
    # NFD typed (as macOS file names are) finds the NFC name the server stores.
    ("/cafe\u0301", ["caf\u00e9"]),
])
def test_split_path(path: str, parts: list[str]) -> None:
    assert split_path(path) == parts


def test_split_path_refuses_dot_dot() -> None:
    with pytest.raises(errors.BadRequest) as e:
        split_path("/a/../b")
    assert e.value.code == "invalid_path"


def test_if_match_quotes_a_bare_digest() -> None:
    from dfms.client.client import _if_match
    assert _if_match(None) == {}
    assert _if_match("ab" * 32) == {"If-Match": f'"{"ab" * 32}"'}
    assert _if_match('"x"') == {"If-Match": '"x"'} and _if_match("*") == {"If-Match": "*"}


def test_manifest_reports_bytes_read(tmp_path: Path) -> None:
    src = tmp_path / "p.bin"
    src.write_bytes(os.urandom(3 * 1024 * 1024 + 5))
    seen: list[int] = []
    build_manifest(src, make_chunker("fastcdc", 256 * 1024, 1024 * 1024, 4 * 1024 * 1024),
                   block=1024 * 1024, on_read=seen.append)
    assert seen == [1024 * 1024, 2 * 1024 * 1024, 3 * 1024 * 1024, 3 * 1024 * 1024 + 5]
