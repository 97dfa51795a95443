"""The chunk-level upload API's pure parts: parsing hashes and commit manifests, the 409
naming missing chunks, the routes' literal segments, the GC's reference clause and the
error codes of PutChunk's refusals."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from dfms.chunkservice import errors as chunk_errors
from dfms.chunkservice.status import ERROR_TYPES, status_for
from dfms.config import Config
from dfms.gateway.context import CONFIG_KEY, path_param
from dfms.gateway.error_table import api_error
from dfms.gateway.errors import ApiError
from dfms.gateway.http import read_json
from dfms.gateway.middleware import error_middleware, request_id_middleware
from dfms.gateway.routes_chunks import missing_chunks_error, parse_commit, parse_digests
from dfms.gc import collector

CFG = Config()
MAX = CFG.chunker.max_size_bytes


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def body(**over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": "a.bin", "size": 5, "sha256": sha(b"hello"),
                           "chunks": [{"sha256": sha(b"he"), "size": 2},
                                      {"sha256": sha(b"llo"), "size": 3}]}
    return {**doc, **over}


def refused(doc: dict[str, Any]) -> ApiError:
    with pytest.raises(ApiError) as info:
        parse_commit(doc, CFG)
    return info.value


def test_a_commit_manifest_gets_offsets_in_file_order() -> None:
    plan = parse_commit(body(), CFG)
    assert plan.name == "a.bin" and plan.size == 5 and plan.sha256.hex() == sha(b"hello")
    assert plan.entries == [(bytes.fromhex(sha(b"he")), 0, 2),
                            (bytes.fromhex(sha(b"llo")), 2, 3)]


def test_a_repeated_chunk_is_listed_twice_but_checked_once() -> None:
    twice = [{"sha256": sha(b"ab"), "size": 2}] * 2
    plan = parse_commit(body(size=4, chunks=twice), CFG)
    assert [offset for _, offset, _ in plan.entries] == [0, 2]
    assert plan.digests == [bytes.fromhex(sha(b"ab"))]


def test_an_empty_file_has_no_chunks() -> None:
    assert parse_commit(body(size=0, chunks=[]), CFG).entries == []


@pytest.mark.parametrize(("doc", "code"), [
    (body(size=6), "size_mismatch"),
    (body(chunks=[{"sha256": sha(b"hello"), "size": 0}], size=0), "validation_error"),
    (body(chunks=[{"sha256": sha(b"x"), "size": MAX + 1}], size=MAX + 1), "validation_error"),
    (body(chunks=[{"sha256": "zz" * 32, "size": 5}]), "validation_error"),
    (body(chunks=[{"sha256": sha(b"hello"), "size": True}]), "validation_error"),
    (body(chunks=[{"sha256": sha(b"hello"), "size": 5, "extra": 1}]), "validation_error"),
    (body(chunks=["nope"]), "validation_error"),
    (body(sha256="abc"), "validation_error"),
    (body(size=-1), "validation_error"),
    (body(name="a/b"), "invalid_name"),
])
def test_a_bad_commit_is_a_400_with_a_stable_code(doc: dict[str, Any], code: str) -> None:
    err = refused(doc)
    assert (err.status, err.code) == (400, code)


def test_a_manifest_longer_than_the_bound_is_refused() -> None:
    chunks = [{"sha256": sha(b"a"), "size": 1}] * (CFG.lifecycle.commit_max_chunks + 1)
    err = refused(body(chunks=chunks, size=len(chunks)))
    assert err.code == "validation_error" and "commit_max_chunks" in err.message


def test_digests_are_unique_in_the_order_given_and_bounded() -> None:
    a, b = sha(b"a"), sha(b"b").upper()
    assert parse_digests([a, b, a], 3) == [bytes.fromhex(a), bytes.fromhex(b)]
    with pytest.raises(ApiError, match="at most 2 chunks"):
        parse_digests([a, b, a], 2)
    with pytest.raises(ApiError, match="64 hex digits"):
        parse_digests([a[:-1]], 10)
    with pytest.raises(ApiError, match="64 hex digits"):
        parse_digests([42], 10)


def test_the_409_names_the_first_missing_chunks_and_counts_the_rest() -> None:
    digests = [hashlib.sha256(bytes([i])).digest() for i in range(25)]
    err = missing_chunks_error(digests)
    assert (err.status, err.code) == (409, "missing_chunks")
    assert digests[19].hex() in err.message and digests[20].hex() not in err.message
    assert "25 chunk(s)" in err.message and "and 5 more" in err.message


def test_a_path_parameter_can_leave_several_literal_segments_to_its_siblings() -> None:
    pattern = path_param("file_id", besides=("upload", "commit"))
    regex = re.compile(pattern[pattern.index(":") + 1:-1] + "$")
    assert not regex.match("upload") and not regex.match("commit")
    assert regex.match("committed") and regex.match("0b8e7c9a-1d6f-4f52-9a51-5e2f1b0c7d3e")


def test_putchunk_refusals_cross_grpc_and_answer_their_codes() -> None:
    for cls, status, code in ((chunk_errors.DigestMismatch, 400, "digest_mismatch"),
                              (chunk_errors.ChunkTooLarge, 413, "chunk_too_large")):
        assert status_for(cls("x")) is not None
        assert ERROR_TYPES[cls.__name__] is cls  # rebuilt by the client from the trailer
        err = api_error(cls("why"))
        assert (err.status, err.code, err.message) == (status, code, "why")


def test_the_gc_counts_upload_sessions_as_references_and_negates_the_whole_clause() -> None:
    clause = collector._UNREFERENCED
    assert "upload_session_chunks" in clause and "manifest_entries" in clause
    assert clause.startswith("(") and clause.endswith(")")  # _RESCUE puts NOT before it
    assert f"NOT {clause}" in collector._RESCUE


async def test_a_json_body_arriving_in_pieces_is_read_whole_up_to_the_limit() -> None:
    """A commit's manifest may be megabytes long: one read of the stream answers only
    what has arrived so far, so the body is read until it ends."""
    async def echo(request: web.Request) -> web.Response:
        doc = await read_json(request, limit=8 * 1024 * 1024)
        return web.json_response({"items": len(doc["chunks"])})

    app = web.Application()
    app[CONFIG_KEY] = CFG
    app.router.add_post("/", echo)
    raw = json.dumps({"chunks": [{"sha256": sha(b"x"), "size": 1}] * 40000}).encode()
    assert len(raw) > 2 * 1024 * 1024

    async def pieces() -> AsyncIterator[bytes]:
        for pos in range(0, len(raw), 64 * 1024):
            await asyncio.sleep(0)
            yield raw[pos:pos + 64 * 1024]

    async with TestClient(TestServer(app)) as client:
        resp = await client.post("/", data=pieces())
        assert resp.status == 200, await resp.text()
        assert await resp.json() == {"items": 40000}


async def test_a_json_body_that_stalls_is_an_incomplete_body() -> None:
    async def parse(request: web.Request) -> web.Response:
        await read_json(request)
        return web.json_response({})

    app = web.Application(middlewares=[request_id_middleware, error_middleware])
    app[CONFIG_KEY] = Config(gateway=dataclasses.replace(CFG.gateway, body_idle_timeout_s=1.0))
    app.router.add_post("/", parse)

    async def stalls() -> AsyncIterator[bytes]:
        yield b'{"chunks": ['
        await asyncio.sleep(5)
        yield b"]}"

    async with TestClient(TestServer(app)) as client:
        resp = await client.post("/", data=stalls())
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "incomplete_body"
