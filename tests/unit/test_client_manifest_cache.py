"""The client's manifest cache: a file put again unchanged is not read; any change to
its size, times or identity, a record taken in the file's last moment of change, another
chunker or a damaged record all mean reading it again."""

from __future__ import annotations

import hashlib
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from aiohttp import web

from dfms.chunker import ChunkerParams, make_chunker_from
from dfms.client import DfmsClient
from dfms.client import client as client_mod
from dfms.client.chunking import Manifest, build_manifest
from dfms.client.manifest_cache import RACY_NS, FileStat, ManifestCache
from dfms.client.models import ChunkerInfo
from tests.support.loopback import fake_gateway

KIB = 1024
INFO = ChunkerInfo("fastcdc", 2 * KIB, 8 * KIB, 32 * KIB, "sha256", 1000, 10000)
OLD_NS = time.time_ns() - 3600 * 10**9  # an hour ago: far outside the racy window


def cut(path: Path, info: ChunkerInfo = INFO) -> Manifest:
    params = ChunkerParams(info.algorithm, info.min_size_bytes, info.avg_size_bytes,
                           info.max_size_bytes)
    return build_manifest(path, make_chunker_from(params))


def aged_file(tmp_path: Path, data: bytes, name: str = "f.bin") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    os.utime(path, ns=(OLD_NS, OLD_NS))
    return path


def recorded(tmp_path: Path, path: Path) -> ManifestCache:
    """A cache holding ``path``'s manifest, recorded as if checked now."""
    cache = ManifestCache(tmp_path / "cache")
    # ctime is the kernel's (now): record as if the check came after the racy window.
    cache.put(path, INFO, FileStat.of(path), cut(path), time.time_ns() + RACY_NS + 1)
    return cache


def test_an_unchanged_file_gets_its_manifest_back(tmp_path: Path) -> None:
    path = aged_file(tmp_path, os.urandom(100 * KIB))
    cache = recorded(tmp_path, path)
    assert cache.get(path, INFO, FileStat.of(path)) == cut(path)
    mode = stat.S_IMODE(os.stat(cache.directory).st_mode)
    files = list(cache.directory.iterdir())
    assert mode == 0o700 and len(files) == 1
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600


CHANGES: dict[str, Callable[[Path], None]] = {
    # Same size, mtime put back as it was: only the ctime tells.
    "rewritten, mtime restored": lambda p: (p.write_bytes(os.urandom(100 * KIB)),
                                            os.utime(p, ns=(OLD_NS, OLD_NS))),
    "appended to": lambda p: p.write_bytes(p.read_bytes() + b"x"),
    "touched": lambda p: os.utime(p, ns=(OLD_NS + 10**9, OLD_NS + 10**9)),
    "replaced by another file": lambda p: (p.unlink(), p.write_bytes(os.urandom(100 * KIB))),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_any_change_to_the_file_is_a_miss(tmp_path: Path, change: str) -> None:
    path = aged_file(tmp_path, os.urandom(100 * KIB))
    cache = recorded(tmp_path, path)
    time.sleep(0.01)  # a later ctime even on a coarse clock
    CHANGES[change](path)
    assert cache.get(path, INFO, FileStat.of(path)) is None


def test_another_chunker_or_another_path_is_a_miss(tmp_path: Path) -> None:
    path = aged_file(tmp_path, os.urandom(100 * KIB))
    cache = recorded(tmp_path, path)
    other = ChunkerInfo("fastcdc", 4 * KIB, 16 * KIB, 64 * KIB, "sha256", 1000, 10000)
    assert cache.get(path, other, FileStat.of(path)) is None
    copy = aged_file(tmp_path, path.read_bytes(), "copy.bin")
    assert cache.get(copy, INFO, FileStat.of(copy)) is None


def test_a_record_taken_when_the_file_had_just_changed_is_not_kept(tmp_path: Path) -> None:
    path = tmp_path / "new.bin"
    path.write_bytes(os.urandom(10 * KIB))
    cache = ManifestCache(tmp_path / "cache")
    cache.put(path, INFO, FileStat.of(path), cut(path), time.time_ns())
    assert cache.get(path, INFO, FileStat.of(path)) is None


def test_a_damaged_record_is_a_miss(tmp_path: Path) -> None:
    path = aged_file(tmp_path, os.urandom(50 * KIB))
    cache = recorded(tmp_path, path)
    (record,) = cache.directory.iterdir()
    record.write_text('{"version": 1, "key": "x", "chunks": [[0, "a"]]')
    assert cache.get(path, INFO, FileStat.of(path)) is None
    cache = recorded(tmp_path, path)
    text = record.read_text()
    record.write_text(text.replace('"chunks":[[0,', '"chunks":[[0,1,"0"],[1,'))
    assert cache.get(path, INFO, FileStat.of(path)) is None  # sizes no longer add up


# --- through the SDK, against a loopback gateway that takes a chunk-level put --------------

def chunk_api(sent: list[str]) -> web.RouteTableDef:
    routes = web.RouteTableDef()
    stored: set[str] = set()

    @routes.get("/api/v1/chunker")
    async def config(_: web.Request) -> web.Response:
        return web.json_response({
            "algorithm": INFO.algorithm, "min_size_bytes": INFO.min_size_bytes,
            "avg_size_bytes": INFO.avg_size_bytes, "max_size_bytes": INFO.max_size_bytes,
            "digest": "sha256", "missing_max": 1000, "commit_max_chunks": 10000})

    @routes.post("/api/v1/chunks/sessions")
    async def session(_: web.Request) -> web.Response:
        return web.json_response({"upload_session": "s1"}, status=201)

    @routes.delete("/api/v1/chunks/sessions/s1")
    async def end(_: web.Request) -> web.Response:
        return web.Response(status=204)

    @routes.post("/api/v1/chunks/missing")
    async def missing(request: web.Request) -> web.Response:
        asked = (await request.json())["chunks"]
        return web.json_response({"missing": [c for c in asked if c not in stored]})

    @routes.put("/api/v1/chunks/{sha}")
    async def put(request: web.Request) -> web.Response:
        data = await request.read()
        assert hashlib.sha256(data).hexdigest() == request.match_info["sha"]
        stored.add(request.match_info["sha"])
        sent.append(request.match_info["sha"])
        return web.Response(status=204)

    @routes.post("/api/v1/files/commit")
    async def commit(request: web.Request) -> web.Response:
        body = await request.json()
        assert all(c["sha256"] in stored for c in body["chunks"])
        return web.json_response({
            "id": "f1", "name": body["name"], "folder_id": None, "size": body["size"],
            "sha256": body["sha256"], "mime_type": "application/octet-stream", "version": 1,
            "chunk_count": len(body["chunks"]),
            "created_at": "2026-12-02T00:00:00Z", "updated_at": "2026-12-02T00:00:00Z"},
            status=201)

    return routes


async def test_a_second_put_of_an_unchanged_file_does_not_read_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = aged_file(tmp_path, os.urandom(200 * KIB))
    cache = ManifestCache(tmp_path / "cache")
    monkeypatch.setattr("dfms.client.manifest_cache.RACY_NS", 0)  # ctime is now
    sent: list[str] = []
    runner, url = await fake_gateway(chunk_api(sent))
    try:
        async with DfmsClient(url, token="t") as c:
            first = await c.put_chunked(path, cache=cache)
            assert not first.manifest_cached and len(sent) == first.chunks_total > 1

            def no_reading(*_: object, **__: object) -> Manifest:
                raise AssertionError("the file was cut again")
            monkeypatch.setattr(client_mod, "build_manifest", no_reading)
            again = await c.put_chunked(path, cache=cache)
            assert again.manifest_cached and again.bytes_sent == 0
            assert again.file.sha256 == first.file.sha256 == hashlib.sha256(
                path.read_bytes()).hexdigest()
    finally:
        await runner.cleanup()
