"""Committing stored content as a file version: one transaction, under the name lock.

Used by plain uploads and by multipart completion. Uploading to a name that is
taken by a file in the folder appends a version to that file (it keeps its id);
a folder of that name is a 409. Per-user commits are serialized so the quota
check (507) cannot race, and ``If-Match`` guards against lost updates (412).
Content identical to the current version's (same SHA-256) commits nothing and
emits no event: the answer is the current version, marked ``unchanged``.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiohttp import web

from dfms.chunkservice.client import ChunkClient
from dfms.chunkservice.errors import ChunkServiceError
from dfms.chunkservice.pipeline import ChunkEntry
from dfms.config import LifecycleConfig
from dfms.errors import DependencyUnavailable
from dfms.events.origin import current_origin
from dfms.events.outbox import emit
from dfms.events.topics import FILE_UPLOADED, FILES_TOPIC, QUOTA_WARNING, QUOTA_WARNING_RATIO
from dfms.gateway.context import API_PREFIX
from dfms.gateway.errors import ApiError, conflict
from dfms.gateway.mime import SNIFF_BYTES
from dfms.metadata import lifecycle as lc
from dfms.metadata import namespace as ns
from dfms.metadata.db import Connection


@dataclass(frozen=True, slots=True)
class Content:
    size: int
    sha256: bytes
    mime_type: str
    entries: list[tuple[bytes, int, int]]  # (chunk sha256, offset, size)


def quota_error(quota: int | None) -> ApiError:
    return ApiError(507, "quota_exceeded",
                    f"this would exceed your storage quota of {quota} bytes")


async def insert_manifest(conn: Connection, size: int, sha256: bytes,
                          entries: list[tuple[bytes, int, int]]) -> uuid.UUID:
    """``ns.insert_manifest``, with a chunk swept meanwhile answered as a retryable 503.

    A chunk the garbage collector claimed after the chunk service stored the upload
    (possible only when storing took longer than the grace period) cannot be
    referenced any more: the manifest insert fails like a foreign-key violation
    (see migration 0010). Nothing was committed; sending the file again stores it.
    """
    try:
        return await ns.insert_manifest(conn, size, sha256, entries)
    except asyncpg.ForeignKeyViolationError as exc:
        raise ApiError(503, "storage_unavailable",
                       "a chunk of this upload was removed by the garbage collector while "
                       "it was being stored; send it again", {"Retry-After": "1"}) from exc


async def content_sha256(chunks: ChunkClient, entries: list[tuple[bytes, int, int]]
                         ) -> tuple[bytes, bytes]:
    """The whole content's SHA-256 and its first bytes, read back verified (each chunk
    is checked against its own hash on the way). The content was assembled from parts
    or chunks sent apart, so no running hash of it exists; this costs one read of every
    byte from the nodes."""
    digest = hashlib.sha256()
    head = b""
    if not entries:  # an empty file: nothing to read (and Download wants a source)
        return digest.digest(), head
    listed = [ChunkEntry(sha, offset, size) for sha, offset, size in entries]
    try:
        async for piece in chunks.download(chunks=listed):
            if len(head) < SNIFF_BYTES:
                head += piece[:SNIFF_BYTES - len(head)]
            digest.update(piece)
    except DependencyUnavailable:
        raise  # answered by the error table: which dependency is away
    except ChunkServiceError as exc:
        raise ApiError(503, "storage_unavailable", f"reading the content back failed: {exc}",
                       {"Retry-After": "5"}) from exc
    return digest.digest(), head


async def content_head(chunks: ChunkClient, entries: list[tuple[bytes, int, int]]) -> bytes:
    """The content's first bytes (for MIME detection): its first chunk only, verified."""
    if not entries:
        return b""
    listed = [ChunkEntry(sha, offset, size) for sha, offset, size in entries]
    length = min(SNIFF_BYTES, sum(size for _, _, size in entries))
    try:
        return b"".join([piece async for piece in chunks.download(chunks=listed, offset=0,
                                                                    length=length)])
    except DependencyUnavailable:
        raise
    except ChunkServiceError as exc:
        raise ApiError(503, "storage_unavailable", f"reading the content failed: {exc}",
                       {"Retry-After": "5"}) from exc


def etag_of(sha256: bytes) -> str:
    return f'"{sha256.hex()}"'


def _check_if_match(if_match: str | None, current: ns.FileRow | None) -> None:
    if if_match is None:
        return
    tags = {t.strip() for t in if_match.split(",")}
    if current is None or not ("*" in tags or etag_of(current.sha256) in tags):
        raise ApiError(412, "precondition_failed",
                       "the file changed since you read it (If-Match did not match)")


async def live_file_named(conn: Connection, owner: uuid.UUID,
                          folder: uuid.UUID | None, name: str) -> ns.FileRow | None:
    file_id = await conn.fetchval(
        "SELECT id FROM files WHERE owner_id = $1 AND folder_id IS NOT DISTINCT FROM $2 "
        "AND name = $3 AND deleted_at IS NULL FOR UPDATE", owner, folder, name)
    return None if file_id is None else await ns.get_file(conn, owner, file_id)


async def folder_named(conn: Connection | asyncpg.Pool, owner: uuid.UUID, folder: uuid.UUID | None,
                       name: str) -> bool:
    return bool(await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM folders WHERE owner_id = $1 AND deleted_at IS NULL "
        "AND parent_id IS NOT DISTINCT FROM $2 AND name = $3)", owner, folder, name))


async def precheck(conn: Connection | asyncpg.Pool, owner: uuid.UUID,
                   folder: uuid.UUID | None, name: str, if_match: str | None) -> None:
    """Cheap checks before any byte is stored (repeated at commit, where they count)."""
    if await folder_named(conn, owner, folder, name):
        raise conflict("name_taken", f"a folder named {name!r} already exists there")
    if if_match is not None:
        file_id = await conn.fetchval(
            "SELECT id FROM files WHERE owner_id = $1 AND folder_id IS NOT DISTINCT FROM $2 "
            "AND name = $3 AND deleted_at IS NULL", owner, folder, name)
        current = None if file_id is None else await ns.get_file(conn, owner, file_id)
        _check_if_match(if_match, current)


@dataclass(frozen=True, slots=True)
class Committed:
    row: ns.FileRow
    unchanged: bool  # the content was the current version's: nothing was written


async def commit_content(conn: Connection, cfg: LifecycleConfig, owner: uuid.UUID,
                         folder: uuid.UUID | None, name: str, content: Content, *,
                         if_match: str | None = None,
                         force_version: bool = False) -> Committed:
    """Store ``content`` as a new file or a new version; the caller owns the transaction.

    Content whose SHA-256 is the current version's adds no version (unless
    ``force_version``): re-sending a file must not push real history out of retention.
    """
    await lc.lock_user(conn, owner)
    await ns.lock_names(conn, owner, folder)
    if await folder_named(conn, owner, folder, name):
        raise conflict("name_taken", f"a folder named {name!r} already exists there")
    current = await live_file_named(conn, owner, folder, name)
    _check_if_match(if_match, current)
    if current is not None and not force_version and current.sha256 == content.sha256:
        # No manifest, no version, no event: nothing changed. The stored chunks are
        # the current manifest's (a dedup hit only refreshed them); any other chunk
        # is unreferenced, like one of a failed upload, and GC reclaims it.
        return Committed(current, unchanged=True)
    quota = await lc.quota_bytes(conn, owner, cfg)
    used = None if quota is None else await lc.used_bytes(conn, owner)
    if quota is not None and used is not None and content.size > max(0, quota - used):
        raise quota_error(quota)
    manifest_id = await insert_manifest(conn, content.size, content.sha256, content.entries)
    if current is None:
        file_id = await ns.create_file(conn, owner, folder, name, manifest_id,
                                       content.mime_type)
    else:
        file_id = current.id
        await lc.add_version(conn, file_id, manifest_id, content.mime_type)
    row = await ns.get_file(conn, owner, file_id)
    assert row is not None
    await _emit_uploaded(conn, owner, row, manifest_id)
    if quota is not None and used is not None:
        await _warn_quota(conn, owner, used, used + content.size, quota)
    return Committed(row, unchanged=False)


async def _emit_uploaded(conn: Connection, owner: uuid.UUID, row: ns.FileRow,
                         manifest_id: uuid.UUID) -> None:
    await emit(conn, FILES_TOPIC, str(row.id), FILE_UPLOADED, {
        "file_id": str(row.id), "owner_id": str(owner), "version": row.version,
        "size": row.size, "sha256": row.sha256.hex(), "manifest_id": str(manifest_id),
        "name": row.name, "folder_id": None if row.folder_id is None else str(row.folder_id),
        "mime_type": row.mime_type, "chunk_count": row.chunk_count,
        "origin": current_origin()})


async def _warn_quota(conn: Connection, owner: uuid.UUID, before: int, after: int,
                      quota: int) -> None:
    """quota.warning when this commit takes the usage across the warning line: once per
    crossing, not on every upload above it."""
    line = quota * QUOTA_WARNING_RATIO
    if before < line <= after:
        await emit(conn, FILES_TOPIC, str(owner), QUOTA_WARNING, {
            "owner_id": str(owner), "used_bytes": after, "quota_bytes": quota,
            "percent": round(100 * after / quota, 1), "origin": current_origin()})


def committed_response(body: dict[str, Any], done: Committed) -> web.Response:
    """201 with Location for a new file or version; 200 naming the file when unchanged."""
    url = f"{API_PREFIX}/files/{done.row.id}"
    headers = {"ETag": etag_of(done.row.sha256)}
    headers["Content-Location" if done.unchanged else "Location"] = url
    return web.json_response(body, status=200 if done.unchanged else 201, headers=headers)
