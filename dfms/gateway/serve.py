"""Serving stored content: byte ranges (one or many), validators and conditional
requests, and streaming from the chunk service. Shared by downloads of files, of
versions and of share links."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import uuid
from collections.abc import AsyncGenerator
from urllib.parse import quote

from aiohttp import web

from dfms.chunkservice.errors import ChunkServiceError, ChunkUnavailable
from dfms.errors import DependencyUnavailable
from dfms.gateway import ranges
from dfms.gateway.context import CONFIG_KEY, READER_KEY
from dfms.gateway.error_table import api_error
from dfms.gateway.errors import ApiError
from dfms.metadata import namespace as ns
from dfms.runtime.logs import get_logger

log = get_logger("gateway.files")


def content_disposition(name: str) -> str:
    """RFC 6266: an ASCII fallback plus the exact name as RFC 8187 ``filename*``."""
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\%' else "_" for c in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


def _validators(row: ns.FileRow) -> tuple[str, str]:
    etag = f'"{row.sha256.hex()}"'
    return etag, email.utils.format_datetime(row.updated_at, usegmt=True)


async def serve_content(request: web.Request, row: ns.FileRow) -> web.StreamResponse:
    """Everything a download supports, for any manifest: ranges, validators, streaming."""
    etag, last_modified = _validators(row)
    headers = {"ETag": etag, "Last-Modified": last_modified, "Accept-Ranges": "bytes",
               "Cache-Control": "private, no-cache", "X-Content-SHA256": row.sha256.hex(),
               "Content-Disposition": content_disposition(row.name)}
    if ranges.etag_matches(request.headers.get("If-None-Match"), etag):
        return web.Response(status=304, headers=headers)
    wanted: list[ranges.ByteRange] | None = None
    if ranges.if_range_allows(request.headers.get("If-Range"), etag, last_modified):
        try:
            wanted = ranges.parse_range(request.headers.get("Range"), row.size)
        except ranges.Unsatisfiable:
            raise ApiError(416, "range_not_satisfiable",
                           f"no requested range lies within the {row.size} bytes",
                           {"Content-Range": f"bytes */{row.size}"}) from None
    if wanted is None:
        return await _stream(request, row, headers, 200, row.mime_type,
                             [(0, row.size, b"")], b"")
    if len(wanted) == 1:
        only = wanted[0]
        headers["Content-Range"] = only.content_range(row.size)
        return await _stream(request, row, headers, 206, row.mime_type,
                             [(only.start, only.length, b"")], b"")
    boundary = uuid.uuid4().hex
    parts = [(r.start, r.length,
              (f"\r\n--{boundary}\r\nContent-Type: {row.mime_type}\r\n"
               f"Content-Range: {r.content_range(row.size)}\r\n\r\n").encode())
             for r in wanted]
    return await _stream(request, row, headers, 206,
                         f"multipart/byteranges; boundary={boundary}", parts,
                         f"\r\n--{boundary}--\r\n".encode())


async def _stream(request: web.Request, row: ns.FileRow, headers: dict[str, str],
                  status: int, content_type: str, parts: list[tuple[int, int, bytes]],
                  trailer: bytes) -> web.StreamResponse:
    resp = web.StreamResponse(status=status, headers=headers)
    resp.content_type = content_type
    resp.content_length = sum(length + len(head) for _, length, head in parts) + len(trailer)
    first: AsyncGenerator[bytes, None] | None = None
    head_piece = b""
    if row.size and request.method != "HEAD":
        first, head_piece = await _first_piece(request, row, parts[0])
    await resp.prepare(request)
    if first is None:
        await resp.write_eof()
        return resp
    try:
        await _write_parts(request, resp, row, first, head_piece, parts, trailer)
    except Exception as exc:
        # Headers (with Content-Length) are out: never end a short body as if complete.
        log.warning("download aborted", extra={"file": str(row.id), "error": str(exc)})
        if request.transport is not None:
            request.transport.abort()
        raise ConnectionResetError("download aborted") from exc
    return resp


async def _first_piece(request: web.Request, row: ns.FileRow, part: tuple[int, int, bytes]
                       ) -> tuple[AsyncGenerator[bytes, None], bytes]:
    """The first part's stream and its first piece, read before the headers go out, so
    a missing manifest or an unreadable first chunk is still a proper error response."""
    start, length, _ = part
    first = request.app[READER_KEY].download(manifest_id=str(row.manifest_id), offset=start,
                                             length=length)
    try:
        return first, await anext(first, b"")
    except ChunkUnavailable as exc:
        raise api_error(exc) from exc
    except DependencyUnavailable:
        raise  # answered by the error table: which dependency is away
    except ChunkServiceError as exc:
        raise ApiError(503, "storage_unavailable", "the content cannot be read now; "
                       "try again later", {"Retry-After": "5"}) from exc


async def _write_parts(request: web.Request, resp: web.StreamResponse, row: ns.FileRow,
                       first: AsyncGenerator[bytes, None], head_piece: bytes,
                       parts: list[tuple[int, int, bytes]], trailer: bytes) -> None:
    chunks = request.app[READER_KEY]
    idle_s = request.app[CONFIG_KEY].gateway.body_idle_timeout_s
    async with contextlib.aclosing(first):
        await _write(resp, parts[0][2], idle_s)
        await _write(resp, head_piece, idle_s)
        async for piece in first:
            await _write(resp, piece, idle_s)
    for start, length, head in parts[1:]:
        await _write(resp, head, idle_s)
        stream = chunks.download(manifest_id=str(row.manifest_id), offset=start,
                                 length=length)
        async with contextlib.aclosing(stream):
            async for piece in stream:
                await _write(resp, piece, idle_s)
    await _write(resp, trailer, idle_s)
    await resp.write_eof()


async def _write(resp: web.StreamResponse, data: bytes, idle_s: float) -> None:
    if data:
        async with asyncio.timeout(idle_s):
            await resp.write(data)
