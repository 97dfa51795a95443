"""Files: streaming upload (raw or multipart form), listing, metadata, rename and move,
soft delete, and streaming download with byte ranges and conditional requests."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from dfms.chunkservice.errors import ChunkServiceError, ChunkUnavailable, UploadTooLarge
from dfms.chunkservice.pipeline import UploadSummary
from dfms.errors import DependencyUnavailable
from dfms.events.outbox import emit
from dfms.events.topics import FILE_DELETED, FILES_TOPIC
from dfms.gateway import ranges
from dfms.gateway.commit import (
    Committed,
    Content,
    commit_content,
    etag_of,
    precheck,
    quota_error,
)
from dfms.gateway.context import API_PREFIX, CHUNKS_KEY, CONFIG_KEY, PG_KEY, path_param
from dfms.gateway.error_table import api_error
from dfms.gateway.errors import ApiError, IncompleteBody, bad_request, not_found
from dfms.gateway.http import bool_param, only_fields, parse_uuid, read_json
from dfms.gateway.listing import files_page
from dfms.gateway.middleware import request_id
from dfms.gateway.mime import SNIFF_BYTES, detect
from dfms.gateway.names import clean_name, decode_header_name
from dfms.gateway.routes_folders import name_clash, resolve_parent
from dfms.gateway.security import authenticate
from dfms.gateway.views import file_json
from dfms.metadata import lifecycle as lc
from dfms.metadata import namespace as ns
from dfms.runtime.logs import get_logger

log = get_logger("gateway.files")

READ_SIZE = 256 * 1024


@dataclass
class IncomingFile:
    name: str  # decoded and validated (names.decode_header_name)
    folder_raw: str | None
    frames: AsyncIterator[bytes]
    expected_sha256: bytes


def _expected_sha(request: web.Request) -> bytes:
    if "X-Content-SHA256" not in request.headers:
        return b""
    # Present but empty is refused, not taken as "unchecked": it is what a client sends
    # when the command computing the digest failed (`$(sha256sum missing.pdf | ...)`).
    raw = request.headers["X-Content-SHA256"].strip().lower()
    try:
        digest = bytes.fromhex(raw)
    except ValueError:
        digest = b""
    if len(digest) != 32:
        raise bad_request("invalid_checksum", "X-Content-SHA256 must be 64 hex digits")
    return digest


async def _idle_guarded(read: Any, idle_s: float) -> AsyncIterator[bytes]:
    """Frames from ``read()`` until it returns b''; a read that stalls ``idle_s`` fails."""
    while True:
        try:
            async with asyncio.timeout(idle_s):
                frame = await read()
        except TimeoutError as exc:
            raise IncompleteBody(f"the request body stalled for {idle_s:.0f}s") from exc
        except (OSError, ValueError, web.HTTPException) as exc:
            raise IncompleteBody(f"the request body broke off: {exc}") from exc
        except Exception as exc:  # aiohttp's payload errors (ContentLengthError, ...)
            raise IncompleteBody(f"the request body broke off: {exc}") from exc
        if not frame:
            return
        yield frame


async def _from_form(request: web.Request, idle_s: float) -> IncomingFile:
    try:
        return await _read_form(request, idle_s)
    except (ValueError, RuntimeError, HttpProcessingError) as exc:
        # No boundary, broken part headers...: the client's form, not our failure.
        raise bad_request("invalid_form", f"the multipart form is malformed: {exc}") from None


async def _read_form(request: web.Request, idle_s: float) -> IncomingFile:
    reader = await request.multipart()
    folder_raw: str | None = request.headers.get("X-Folder-Id")
    while True:
        part = await reader.next()
        if part is None:
            raise bad_request("missing_file", "the form has no 'file' field")
        if not isinstance(part, BodyPartReader):
            continue
        if part.name == "folder_id":
            folder_raw = (await part.read(decode=True))[:100].decode(errors="replace")
        elif part.name == "file":
            # Like X-File-Name, percent-decoded: some clients (aiohttp) encode non-ASCII
            # filenames that way, browsers send raw UTF-8; both come out the same.
            name = decode_header_name(part.filename or "")
            frames = _idle_guarded(lambda p=part: p.read_chunk(READ_SIZE), idle_s)
            return IncomingFile(name, folder_raw, frames, _expected_sha(request))


def _from_raw(request: web.Request, idle_s: float) -> IncomingFile:
    raw_name = request.headers.get("X-File-Name")
    if not raw_name:
        raise bad_request("missing_file_name", "send the file name in the X-File-Name header "
                          "(percent-encoded UTF-8)")
    name = decode_header_name(raw_name)
    frames = _idle_guarded(request.content.readany, idle_s)
    return IncomingFile(name, request.headers.get("X-Folder-Id"), frames,
                        _expected_sha(request))


class _Sniffer:
    """Keeps the first bytes of a stream for MIME detection while passing it through."""

    def __init__(self, frames: AsyncIterator[bytes]) -> None:
        self._frames = frames
        self.head = b""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for frame in self._frames:
            if len(self.head) < SNIFF_BYTES:
                self.head += frame[:SNIFF_BYTES - len(self.head)]
            yield frame


async def upload(request: web.Request) -> web.Response:
    user = await authenticate(request)
    cfg = request.app[CONFIG_KEY]
    limit = cfg.gateway.max_upload_bytes
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "payload_too_large", f"uploads are limited to {limit} bytes")
    force_version = bool_param(request, "force_version")
    form = request.content_type.startswith("multipart/form-data")
    idle_s = cfg.gateway.body_idle_timeout_s
    incoming = await _from_form(request, idle_s) if form else _from_raw(request, idle_s)
    name = incoming.name
    if_match = request.headers.get("If-Match")
    pool = request.app[PG_KEY]
    folder = await resolve_parent(pool, user, incoming.folder_raw)
    await precheck(pool, user.id, folder, name, if_match)  # refuse early, store nothing
    room = await lc.room_left(pool, user.id, cfg.lifecycle)
    if room is not None and (request.content_length or 0) > room:
        raise quota_error(await lc.quota_bytes(pool, user.id, cfg.lifecycle))
    stored, head = await store_stream(request, user.id, incoming.frames,
                                      incoming.expected_sha256, limit, room)
    content = Content(stored.total_size, stored.sha256, detect(head, name),
                      [(c.sha256, c.offset, c.size) for c in stored.chunks])
    async with pool.acquire() as conn, conn.transaction():
        # A failure here leaves the stored chunks unreferenced: GC reclaims them.
        done = await commit_content(conn, cfg.lifecycle, user.id, folder, name, content,
                                    if_match=if_match, force_version=force_version)
    row = done.row
    body = {**file_json(row), "file": str(row.id), "new_chunks": stored.new_chunks,
            "dedup_chunks": stored.dedup_chunks, "new_bytes": stored.new_bytes,
            "dedup_bytes": stored.dedup_bytes, "unchanged": done.unchanged}
    return committed_response(body, done)


def committed_response(body: dict[str, Any], done: Committed) -> web.Response:
    """201 with Location for a new file or version; 200 naming the file when unchanged."""
    url = f"{API_PREFIX}/files/{done.row.id}"
    headers = {"ETag": etag_of(done.row.sha256)}
    headers["Content-Location" if done.unchanged else "Location"] = url
    return web.json_response(body, status=200 if done.unchanged else 201, headers=headers)


async def store_stream(request: web.Request, owner: uuid.UUID, frames: AsyncIterator[bytes],
                       expected_sha256: bytes, limit: int, room: int | None
                       ) -> tuple[UploadSummary, bytes]:
    """Stream ``frames`` into the chunk service; the stored summary and the first bytes.

    The size cap is the upload limit or the quota room, whichever is smaller; going
    past it fails the stream (413 or 507) and nothing becomes visible.
    """
    cap = limit if room is None else min(limit, room)
    sniffer = _Sniffer(frames)
    # On the wire 0 means "no limit"; a cap of 0 (quota full) is sent as -1 so that
    # any byte fails while an empty file still fits.
    try:
        summary = await request.app[CHUNKS_KEY].upload(
            aiter(sniffer), upload_id=request_id(request), owner_id=str(owner),
            max_size=cap if cap > 0 else -1, expected_sha256=expected_sha256)
    except IncompleteBody as exc:  # answered by the error table (400 incomplete_body)
        log.info("upload aborted", extra={"reason": str(exc)})
        raise
    except UploadTooLarge as exc:
        if room is not None and cap == room and room < limit:
            quota = await lc.quota_bytes(request.app[PG_KEY], owner,
                                         request.app[CONFIG_KEY].lifecycle)
            raise quota_error(quota) from exc
        raise ApiError(413, "payload_too_large",
                       f"uploads are limited to {limit} bytes") from exc
    # Any other chunk-service or dependency failure is answered by the error table.
    return summary, sniffer.head


async def list_files(request: web.Request) -> web.Response:
    user = await authenticate(request)
    pool = request.app[PG_KEY]
    folder = await resolve_parent(pool, user, request.query.get("folder_id"))
    return web.json_response(await files_page(request, pool, user.id, folder))


async def _owned_file(request: web.Request) -> tuple[ns.FileRow, uuid.UUID]:
    user = await authenticate(request)
    file_id = parse_uuid(request.match_info["file_id"], "file")
    row = await ns.get_file(request.app[PG_KEY], user.id, file_id)
    if row is None:
        raise not_found("file")
    return row, user.id


async def get_file(request: web.Request) -> web.Response:
    row, _ = await _owned_file(request)
    return web.json_response(file_json(row))


async def update_file(request: web.Request) -> web.Response:
    user = await authenticate(request)
    file_id = parse_uuid(request.match_info["file_id"], "file")
    doc = await read_json(request)
    only_fields(doc, ("name", "folder_id"))
    async with request.app[PG_KEY].acquire() as conn, conn.transaction():
        current = await ns.get_file(conn, user.id, file_id)
        if current is None:
            raise not_found("file")
        name = clean_name(doc["name"], "file name") if "name" in doc else current.name
        folder = (await resolve_parent(conn, user, doc["folder_id"]) if "folder_id" in doc
                  else current.folder_id)
        await ns.lock_names(conn, user.id, folder)
        if await ns.name_taken(conn, user.id, folder, name, except_id=file_id):
            raise name_clash(name)
        await ns.update_file(conn, file_id, name, folder)
        row = await ns.get_file(conn, user.id, file_id)
    assert row is not None
    return web.json_response(file_json(row))


async def delete_file(request: web.Request) -> web.Response:
    user = await authenticate(request)
    file_id = parse_uuid(request.match_info["file_id"], "file")
    async with request.app[PG_KEY].acquire() as conn, conn.transaction():
        if not await ns.soft_delete_file(conn, user.id, file_id):
            raise not_found("file")
        await emit(conn, FILES_TOPIC, str(file_id), FILE_DELETED,
                   {"file_id": str(file_id), "owner_id": str(user.id)})
    return web.Response(status=204)


# --- download ---------------------------------------------------------------------------

def content_disposition(name: str) -> str:
    """RFC 6266: an ASCII fallback plus the exact name as RFC 8187 ``filename*``."""
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\%' else "_" for c in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


def _validators(row: ns.FileRow) -> tuple[str, str]:
    etag = f'"{row.sha256.hex()}"'
    return etag, email.utils.format_datetime(row.updated_at, usegmt=True)


async def download(request: web.Request) -> web.StreamResponse:
    row, _ = await _owned_file(request)
    return await serve_content(request, row)


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
    chunks = request.app[CHUNKS_KEY]
    idle_s = request.app[CONFIG_KEY].gateway.body_idle_timeout_s
    first: AsyncGenerator[bytes, None] | None = None
    if row.size and request.method != "HEAD":
        # Start reading before the headers go out, so a missing manifest or an
        # unreadable first chunk is still a proper error response.
        start, length, _ = parts[0]
        first = chunks.download(manifest_id=str(row.manifest_id), offset=start, length=length)
        try:
            head_piece = await anext(first, b"")
        except ChunkUnavailable as exc:
            raise api_error(exc) from exc
        except DependencyUnavailable:
            raise  # answered by the error table: which dependency is away
        except ChunkServiceError as exc:
            raise ApiError(503, "storage_unavailable", "the content cannot be read now; "
                           "try again later", {"Retry-After": "5"}) from exc
    await resp.prepare(request)
    if request.method == "HEAD" or not row.size:
        await resp.write_eof()
        return resp
    assert first is not None
    try:
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
    except Exception as exc:
        # Headers (with Content-Length) are out: never end a short body as if complete.
        log.warning("download aborted", extra={"file": str(row.id), "error": str(exc)})
        if request.transport is not None:
            request.transport.abort()
        raise ConnectionResetError("download aborted") from exc
    return resp


async def _write(resp: web.StreamResponse, data: bytes, idle_s: float) -> None:
    if data:
        async with asyncio.timeout(idle_s):
            await resp.write(data)


def setup_routes(app: web.Application) -> None:
    app.router.add_post(f"{API_PREFIX}/files/upload", upload)
    app.router.add_get(f"{API_PREFIX}/files", list_files)
    item = f"{API_PREFIX}/files/{path_param('file_id', besides='upload')}"
    app.router.add_get(item, get_file)
    app.router.add_patch(item, update_file)
    app.router.add_delete(item, delete_file)
    app.router.add_get(f"{API_PREFIX}/files/{{file_id}}/download", download)
