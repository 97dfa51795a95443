"""Chunk-level uploads: for clients that cut files into chunks themselves (with the
parameters ``GET /chunker`` advertises), send only the chunks the server lacks, then
commit a file from its manifest.

1. ``POST /chunks/sessions`` opens an upload session (it expires after
   ``lifecycle.upload_session_expiry_s``; GC keeps the chunks sent in it until then).
2. ``POST /chunks/missing`` answers which of the listed chunks the caller must send.
   Proof of ownership (``dfms.metadata.upload_sessions``): a chunk counts as present
   only when the caller already references it or sent it in an open session of theirs,
   so a hash never tells whether anyone else stores those bytes.
3. ``PUT /chunks/{sha256}?upload_session=`` sends one chunk: its hash and the chunker's
   size bound are checked, it is stored like any chunk (dedup, n replicas at quorum w)
   and recorded in the session. The answer never says whether the bytes were new.
4. ``POST /files/commit`` makes a file (or a new version) of owned chunks, in one
   transaction, after reading the content back to verify its whole-file SHA-256.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiohttp import web

from dfms.chunkservice.errors import ChecksumMismatch, ChunkTooLarge, DigestMismatch
from dfms.config import Config
from dfms.gateway.bodies import idle_guarded
from dfms.gateway.commit import (
    Content,
    commit_content,
    committed_response,
    content_head,
    content_sha256,
    precheck,
    quota_error,
)
from dfms.gateway.context import API_PREFIX, CHUNKS_KEY, CONFIG_KEY, PG_KEY
from dfms.gateway.errors import ApiError, bad_request, conflict, not_found
from dfms.gateway.folders import resolve_parent
from dfms.gateway.http import bool_param, field, only_fields, parse_uuid, read_json
from dfms.gateway.mime import detect
from dfms.gateway.names import clean_name
from dfms.gateway.security import AuthUser, authenticate
from dfms.gateway.views import file_json
from dfms.metadata import lifecycle as lc
from dfms.metadata import upload_sessions as us
from dfms.metadata.db import Connection

CHUNKS = f"{API_PREFIX}/chunks"
SESSION_PARAM = "upload_session"
_HEX_DIGEST = "[0-9a-fA-F]{64}"
# Bytes of JSON one manifest entry may take in a commit body ({"sha256": ..., "size": ...}).
_ENTRY_JSON_BYTES = 128
# Missing chunks a 409 names in its message (the client asks /chunks/missing for all).
_NAMED_MISSING = 20


# --- parsing (pure) --------------------------------------------------------------------------

def parse_digest(raw: object, what: str) -> bytes:
    """A SHA-256 given as 64 hex digits."""
    if not isinstance(raw, str) or len(raw) != 64:
        raise bad_request("validation_error", f"{what} must be a SHA-256: 64 hex digits")
    try:
        return bytes.fromhex(raw)
    except ValueError:
        raise bad_request("validation_error",
                          f"{what} must be a SHA-256: 64 hex digits") from None


def parse_digests(listed: list[Any], most: int) -> list[bytes]:
    """The listed hashes, each once, in the order given."""
    if len(listed) > most:
        raise bad_request("validation_error", f"at most {most} chunks per request "
                          f"(lifecycle.chunks_missing_max); {len(listed)} were listed")
    return list(dict.fromkeys(parse_digest(raw, "each chunk") for raw in listed))


@dataclass(frozen=True, slots=True)
class CommitRequest:
    name: str
    size: int
    sha256: bytes
    entries: list[tuple[bytes, int, int]]  # (chunk sha256, offset, size), in file order

    @property
    def digests(self) -> list[bytes]:
        return list(dict.fromkeys(sha for sha, _, _ in self.entries))


def parse_commit(doc: dict[str, Any], cfg: Config) -> CommitRequest:
    """The commit body's file: its name, size, SHA-256 and manifest. Every chunk holds
    1 to ``max_size_bytes`` of the chunker, and their sizes add up to ``size``."""
    name = clean_name(field(doc, "name", str), "name")
    size = field(doc, "size", int)
    if not 0 <= size <= cfg.gateway.max_upload_bytes:
        raise bad_request("validation_error", f"'size' must be from 0 to "
                          f"{cfg.gateway.max_upload_bytes} (gateway.max_upload_bytes)")
    sha256 = parse_digest(field(doc, "sha256", str), "'sha256'")
    listed = field(doc, "chunks", list)
    if len(listed) > cfg.lifecycle.commit_max_chunks:
        raise bad_request("validation_error", f"a manifest holds at most "
                          f"{cfg.lifecycle.commit_max_chunks} chunks "
                          "(lifecycle.commit_max_chunks)")
    entries = _entries(listed, cfg.chunker.max_size_bytes)
    total = sum(s for _, _, s in entries)
    if total != size:
        raise bad_request("size_mismatch", f"the chunks hold {total} bytes, not the {size} "
                          "of 'size'")
    return CommitRequest(name, size, sha256, entries)


def _entries(listed: list[Any], bound: int) -> list[tuple[bytes, int, int]]:
    entries: list[tuple[bytes, int, int]] = []
    offset = 0
    for i, item in enumerate(listed):
        if not isinstance(item, dict):
            raise bad_request("validation_error", f"chunk {i} must be an object "
                              "{sha256, size}")
        only_fields(item, ("sha256", "size"), f" in chunk {i}")
        digest = parse_digest(item.get("sha256"), f"chunk {i}'s sha256")
        size = item.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= bound:
            raise bad_request("validation_error", f"chunk {i}'s size must be from 1 to "
                              f"{bound} (the chunker's max_size_bytes)")
        entries.append((digest, offset, size))
        offset += size
    return entries


def missing_chunks_error(missing: list[bytes]) -> ApiError:
    shown = ", ".join(d.hex() for d in missing[:_NAMED_MISSING])
    more = f" and {len(missing) - _NAMED_MISSING} more" if len(missing) > _NAMED_MISSING else ""
    return conflict("missing_chunks", f"{len(missing)} chunk(s) of the manifest are neither "
                    "in your files nor sent in an open upload session of yours: "
                    f"{shown}{more}; send them (PUT /api/v1/chunks/{{sha256}}) and commit "
                    "again")


# --- shared steps ----------------------------------------------------------------------------

async def _open_session(conn: Connection | asyncpg.Pool, user: AuthUser, raw: object, *,
                        required: bool) -> us.UploadSession | None:
    """The caller's open session named by ``raw``; 404 if unknown, another's or expired."""
    if raw is None and not required:
        return None
    if raw is None:
        raise bad_request("validation_error", f"'{SESSION_PARAM}' is required: open one "
                          "with POST /api/v1/chunks/sessions")
    if not isinstance(raw, str):
        raise bad_request("validation_error", f"'{SESSION_PARAM}' must be a string (an id)")
    session = await us.get_open(conn, user.id, parse_uuid(raw, "upload session"))
    if session is None:
        raise not_found("upload session")
    return session


async def _check_owned(conn: Connection | asyncpg.Pool, owner: uuid.UUID,
                       plan: CommitRequest) -> None:
    """409 naming the chunks the caller does not own; 400 for a size that is not the
    stored chunk's (the offsets would be wrong)."""
    owned = await us.owned_sizes(conn, owner, plan.digests)
    missing = [d for d in plan.digests if d not in owned]
    if missing:
        raise missing_chunks_error(missing)
    wrong = [i for i, (sha, _, size) in enumerate(plan.entries) if owned[sha] != size]
    if wrong:
        raise bad_request("chunk_size_mismatch", f"chunk {wrong[0]}'s size is not the "
                          f"stored chunk's ({owned[plan.entries[wrong[0]][0]]} bytes)")


async def _read_chunk(request: web.Request, cfg: Config) -> bytes:
    """The body: one chunk, at most the chunker's ``max_size_bytes`` (413 past it)."""
    bound = cfg.chunker.max_size_bytes
    too_large = ChunkTooLarge(f"a chunk holds at most {bound} bytes (the chunker's "
                              "max_size_bytes)")
    if request.content_length is not None and request.content_length > bound:
        raise too_large
    data = bytearray()
    async for frame in idle_guarded(request.content.readany, cfg.gateway.body_idle_timeout_s):
        data += frame
        if len(data) > bound:
            raise too_large
    if not data:
        raise bad_request("validation_error", "a chunk holds at least one byte")
    return bytes(data)


async def _sha256(data: bytes) -> bytes:
    return await asyncio.to_thread(lambda: hashlib.sha256(data).digest())


async def _record_sent(pool: asyncpg.Pool, cfg: Config, user: AuthUser,
                       session: us.UploadSession, digest: bytes) -> None:
    """Record the stored chunk in the session, within the owner's quota (the owner's lock
    serializes this with commits and other chunks)."""
    try:
        async with pool.acquire() as conn, conn.transaction():
            await lc.lock_user(conn, user.id)
            if await us.get_open(conn, user.id, session.id, lock=True) is None:
                raise not_found("upload session")
            await us.record_chunk(conn, session.id, digest)
            quota = await lc.over_quota(conn, user.id, cfg.lifecycle)
            if quota is not None:
                raise quota_error(quota)  # rolled back: the chunk stays unreferenced (GC's)
    except asyncpg.ForeignKeyViolationError as exc:  # migration 0013's trigger
        raise ApiError(503, "storage_unavailable", "the garbage collector is removing this "
                       "chunk; send it again", {"Retry-After": "1"}) from exc


async def _verified_head(request: web.Request, user: AuthUser, plan: CommitRequest) -> bytes:
    """Check the content's SHA-256 (422 unless it is ``plan.sha256``); its first bytes.

    Read back and hashed, unless one of the caller's versions already has this exact
    manifest: its SHA-256 was computed by the server, so only the head is read then.
    """
    chunks = request.app[CHUNKS_KEY]
    listed = [sha for sha, _, _ in plan.entries]
    if await us.holds_manifest(request.app[PG_KEY], user.id, plan.sha256, plan.size, listed):
        return await content_head(chunks, plan.entries)
    sha256, head = await content_sha256(chunks, plan.entries)
    if sha256 != plan.sha256:
        raise ChecksumMismatch(f"the chunks' content has SHA-256 {sha256.hex()}, not the "
                               f"{plan.sha256.hex()} of 'sha256'; nothing was committed")
    return head


# --- handlers --------------------------------------------------------------------------------

async def chunker(request: web.Request) -> web.Response:
    await authenticate(request)
    cfg = request.app[CONFIG_KEY]
    return web.json_response({
        "algorithm": cfg.chunker.algorithm, "min_size_bytes": cfg.chunker.min_size_bytes,
        "avg_size_bytes": cfg.chunker.avg_size_bytes,
        "max_size_bytes": cfg.chunker.max_size_bytes, "digest": "sha256",
        "missing_max": cfg.lifecycle.chunks_missing_max,
        "commit_max_chunks": cfg.lifecycle.commit_max_chunks,
        "upload_session_expiry_s": cfg.lifecycle.upload_session_expiry_s})


def _session_json(session: us.UploadSession) -> dict[str, Any]:
    return {"upload_session": str(session.id), "created_at": session.created_at.isoformat(),
            "expires_at": session.expires_at.isoformat()}


async def create_session(request: web.Request) -> web.Response:
    user = await authenticate(request)
    cfg = request.app[CONFIG_KEY].lifecycle
    session = await us.create(request.app[PG_KEY], user.id, cfg.upload_session_expiry_s)
    return web.json_response(_session_json(session), status=201)


async def delete_session(request: web.Request) -> web.Response:
    user = await authenticate(request)
    session_id = parse_uuid(request.match_info["session_id"], "upload session")
    if not await us.delete(request.app[PG_KEY], user.id, session_id):
        raise not_found("upload session")
    return web.Response(status=204)


async def missing(request: web.Request) -> web.Response:
    user = await authenticate(request)
    cfg = request.app[CONFIG_KEY]
    doc = await read_json(request)
    only_fields(doc, ("chunks", SESSION_PARAM))
    digests = parse_digests(field(doc, "chunks", list), cfg.lifecycle.chunks_missing_max)
    pool = request.app[PG_KEY]
    await _open_session(pool, user, doc.get(SESSION_PARAM), required=False)
    owned = await us.owned_sizes(pool, user.id, digests)
    return web.json_response({"missing": [d.hex() for d in digests if d not in owned]})


async def put_chunk(request: web.Request) -> web.Response:
    user = await authenticate(request)
    cfg = request.app[CONFIG_KEY]
    digest = bytes.fromhex(request.match_info["sha256"])  # the route's pattern: 64 hex
    pool = request.app[PG_KEY]
    session = await _open_session(pool, user, request.query.get(SESSION_PARAM), required=True)
    assert session is not None
    data = await _read_chunk(request, cfg)
    if await _sha256(data) != digest:
        raise DigestMismatch(f"the body does not hash to {digest.hex()}; nothing was stored")
    room = await lc.room_left(pool, user.id, cfg.lifecycle)
    if room is not None and len(data) > room:  # refuse before storing
        raise quota_error(await lc.quota_bytes(pool, user.id, cfg.lifecycle))
    await request.app[CHUNKS_KEY].put_chunk(digest, data)  # checks hash and size again
    await _record_sent(pool, cfg, user, session, digest)
    return web.json_response({"sha256": digest.hex(), "size": len(data),
                              SESSION_PARAM: str(session.id)})


async def commit(request: web.Request) -> web.Response:
    user = await authenticate(request)
    cfg = request.app[CONFIG_KEY]
    limit = cfg.gateway.max_json_bytes + _ENTRY_JSON_BYTES * cfg.lifecycle.commit_max_chunks
    doc = await read_json(request, limit)
    only_fields(doc, ("name", "folder_id", "size", "sha256", "chunks", SESSION_PARAM))
    plan = parse_commit(doc, cfg)
    if_match = request.headers.get("If-Match")
    force_version = bool_param(request, "force_version")
    pool = request.app[PG_KEY]
    folder = await resolve_parent(pool, user, doc.get("folder_id"))
    await precheck(pool, user.id, folder, plan.name, if_match)
    await _open_session(pool, user, doc.get(SESSION_PARAM), required=False)
    await _check_owned(pool, user.id, plan)  # before reading anything back
    head = await _verified_head(request, user, plan)
    content = Content(plan.size, plan.sha256, detect(head, plan.name), plan.entries)
    async with pool.acquire() as conn, conn.transaction():
        await lc.lock_user(conn, user.id)
        await _check_owned(conn, user.id, plan)  # again: a session may have ended since
        # Out of the sessions first: they become the file's, counted once by the quota.
        await us.release_committed(conn, user.id, plan.digests)
        done = await commit_content(conn, cfg.lifecycle, user.id, folder, plan.name, content,
                                    if_match=if_match, force_version=force_version)
    return committed_response({**file_json(done.row), "unchanged": done.unchanged}, done)


def setup_routes(app: web.Application) -> None:
    app.router.add_get(f"{API_PREFIX}/chunker", chunker)
    app.router.add_post(f"{CHUNKS}/sessions", create_session)
    app.router.add_delete(f"{CHUNKS}/sessions/{{session_id}}", delete_session)
    app.router.add_post(f"{CHUNKS}/missing", missing)
    app.router.add_put(f"{CHUNKS}/{{sha256:{_HEX_DIGEST}}}", put_chunk)
    app.router.add_post(f"{API_PREFIX}/files/commit", commit)
