"""Upload bodies: reading a file from a request (raw or multipart form) and streaming it
into the chunk service under the upload limit and the quota. Shared by plain uploads
and multipart parts."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from dfms.chunkservice.errors import UploadTooLarge
from dfms.chunkservice.pipeline import UploadSummary
from dfms.gateway.commit import quota_error
from dfms.gateway.context import CHUNKS_KEY, CONFIG_KEY, PG_KEY
from dfms.gateway.errors import ApiError, IncompleteBody, bad_request
from dfms.gateway.middleware import request_id
from dfms.gateway.mime import SNIFF_BYTES
from dfms.gateway.names import decode_header_name
from dfms.metadata import lifecycle as lc
from dfms.runtime.logs import get_logger

log = get_logger("gateway.files")

READ_SIZE = 256 * 1024


@dataclass
class IncomingFile:
    name: str  # decoded and validated (names.decode_header_name)
    folder_raw: str | None
    frames: AsyncIterator[bytes]
    expected_sha256: bytes


def expected_sha256(request: web.Request) -> bytes:
    """The digest in ``X-Content-SHA256``; b"" (unchecked) when the header is absent."""
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


async def idle_guarded(read: Any, idle_s: float) -> AsyncIterator[bytes]:
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


async def incoming_file(request: web.Request, idle_s: float) -> IncomingFile:
    """The file of an upload request: a multipart form's ``file`` field, or the raw body."""
    if request.content_type.startswith("multipart/form-data"):
        return await _from_form(request, idle_s)
    return _from_raw(request, idle_s)


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
            frames = idle_guarded(lambda p=part: p.read_chunk(READ_SIZE), idle_s)
            return IncomingFile(name, folder_raw, frames, expected_sha256(request))


def _from_raw(request: web.Request, idle_s: float) -> IncomingFile:
    raw_name = request.headers.get("X-File-Name")
    if not raw_name:
        raise bad_request("missing_file_name", "send the file name in the X-File-Name header "
                          "(percent-encoded UTF-8)")
    name = decode_header_name(raw_name)
    frames = idle_guarded(request.content.readany, idle_s)
    return IncomingFile(name, request.headers.get("X-Folder-Id"), frames,
                        expected_sha256(request))


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
