"""Multipart (large-file) uploads: init, parts in any order and in parallel, complete, abort.

Each part streams straight into the chunk service (chunked and deduplicated as it
arrives) and is kept as a manifest of its own. Completing assembles the file's
manifest from the parts' entries in order (rows are copied, bytes never are),
reads the content back once through the verified download path to compute the
whole file's SHA-256 (parts may arrive in any order, so no running hash exists),
and commits it like any upload: a new file, or a new version of a same-named one.
An interrupted part is re-sent with the same part number; it replaces the old.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from dfms.config import LifecycleConfig
from dfms.gateway.bodies import expected_sha256, idle_guarded, store_stream
from dfms.gateway.commit import (
    Content,
    commit_content,
    committed_response,
    content_sha256,
    insert_manifest,
    precheck,
    quota_error,
)
from dfms.gateway.context import API_PREFIX, CHUNKS_KEY, CONFIG_KEY, PG_KEY, path_param
from dfms.gateway.errors import ApiError, bad_request, conflict, not_found
from dfms.gateway.folders import resolve_parent
from dfms.gateway.http import bool_param, field, only_fields, parse_uuid, read_json
from dfms.gateway.mime import detect
from dfms.gateway.names import clean_name
from dfms.gateway.security import authenticate
from dfms.gateway.views import file_json
from dfms.metadata import lifecycle as lc
from dfms.metadata import multipart as mp
from dfms.metadata import namespace as ns

BASE = f"{API_PREFIX}/files/upload/multipart"


def _limits(cfg: LifecycleConfig) -> dict[str, int]:
    return {"part_size_min": cfg.multipart_part_min_bytes,
            "part_size_max": cfg.multipart_part_max_bytes,
            "max_parts": cfg.multipart_max_parts}


def _upload_json(upload: mp.Upload, cfg: LifecycleConfig) -> dict[str, Any]:
    return {"upload_id": str(upload.id), "file_name": upload.file_name,
            "folder_id": None if upload.folder_id is None else str(upload.folder_id),
            "file_size": upload.file_size,
            "state": "expired" if upload.state == "open" and upload.expired else upload.state,
            "created_at": upload.created_at.isoformat(),
            "expires_at": upload.expires_at.isoformat(), **_limits(cfg)}


def _part_json(part: mp.Part) -> dict[str, Any]:
    return {"part_number": part.part_number, "size": part.size, "sha256": part.sha256.hex(),
            "uploaded_at": part.uploaded_at.isoformat()}


async def init(request: web.Request) -> web.Response:
    user = await authenticate(request)
    cfg = request.app[CONFIG_KEY].lifecycle
    doc = await read_json(request)
    only_fields(doc, ("file_name", "file_size", "folder_id"))
    name = clean_name(field(doc, "file_name", str), "file_name")
    size = field(doc, "file_size", int, required=False)
    if size is not None and not 0 <= size <= cfg.multipart_max_parts * \
            cfg.multipart_part_max_bytes:
        raise bad_request("validation_error", "file_size is out of range")
    pool = request.app[PG_KEY]
    folder = await resolve_parent(pool, user, doc.get("folder_id"))
    await precheck(pool, user.id, folder, name, None)
    room = await lc.room_left(pool, user.id, cfg)
    if room is not None and size is not None and size > room:
        raise quota_error(await lc.quota_bytes(pool, user.id, cfg))
    upload = await mp.create(pool, user.id, folder, name, size, cfg.multipart_expiry_s)
    return web.json_response(_upload_json(upload, cfg), status=201)


async def _open_upload(conn: Any, request: web.Request, owner: uuid.UUID, *,
                       for_update: bool = False) -> mp.Upload:
    upload_id = parse_uuid(request.match_info["upload_id"], "upload")
    upload = await mp.get(conn, owner, upload_id, for_update=for_update)
    if upload is None:
        raise not_found("upload")
    if upload.state != "open":
        raise conflict("upload_closed", f"the upload is already {upload.state}")
    if upload.expired:
        raise ApiError(410, "upload_expired", "the upload expired; start a new one")
    return upload


def _part_number(request: web.Request, cfg: LifecycleConfig) -> int:
    raw = request.match_info["part_number"]
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= cfg.multipart_max_parts:
        raise bad_request("invalid_part_number",
                          f"part numbers run from 1 to {cfg.multipart_max_parts}")
    return int(raw)


async def put_part(request: web.Request) -> web.Response:
    user = await authenticate(request)
    cfg = request.app[CONFIG_KEY]
    pool = request.app[PG_KEY]
    upload = await _open_upload(pool, request, user.id)
    number = _part_number(request, cfg.lifecycle)
    part_max = cfg.lifecycle.multipart_part_max_bytes
    if request.content_length is not None and request.content_length > part_max:
        raise ApiError(413, "payload_too_large", f"parts are limited to {part_max} bytes")
    room = await lc.room_left(pool, user.id, cfg.lifecycle)
    if room is not None:
        room += await mp.part_size(pool, upload.id, number)  # a re-sent part replaces
    frames = idle_guarded(request.content.readany, cfg.gateway.body_idle_timeout_s)
    stored, _ = await store_stream(request, user.id, frames, expected_sha256(request), part_max,
                                   room)
    entries = [(c.sha256, c.offset, c.size) for c in stored.chunks]
    async with pool.acquire() as conn, conn.transaction():
        await lc.lock_user(conn, user.id)
        await _open_upload(conn, request, user.id, for_update=True)
        manifest_id = await insert_manifest(conn, stored.total_size, stored.sha256, entries)
        await mp.put_part(conn, upload.id, number, manifest_id, stored.total_size,
                          stored.sha256)
    return web.json_response({"part_number": number, "size": stored.total_size,
                              "sha256": stored.sha256.hex()})


async def show(request: web.Request) -> web.Response:
    user = await authenticate(request)
    cfg = request.app[CONFIG_KEY].lifecycle
    upload_id = parse_uuid(request.match_info["upload_id"], "upload")
    pool = request.app[PG_KEY]
    upload = await mp.get(pool, user.id, upload_id)
    if upload is None:
        raise not_found("upload")
    parts = await mp.parts(pool, upload.id)
    return web.json_response({**_upload_json(upload, cfg),
                              "parts": [_part_json(p) for p in parts],
                              "received_bytes": sum(p.size for p in parts)})


def _check_parts(parts: list[mp.Part], listed: list[dict[str, Any]] | None,
                 upload: mp.Upload, cfg: LifecycleConfig) -> None:
    if not parts:
        raise bad_request("no_parts", "no part has been uploaded")
    numbers = [p.part_number for p in parts]
    missing = sorted(set(range(1, numbers[-1] + 1)) - set(numbers))
    if listed is not None:
        missing = sorted(set(missing) | (_listed_numbers(listed) - set(numbers)))
    if missing:
        raise bad_request("missing_parts", f"{_parts(missing, 'is', 'are')} missing")
    if listed is not None:
        _check_listed(parts, listed)
    _check_size(parts, upload)
    small = [p.part_number for p in parts[:-1] if p.size < cfg.multipart_part_min_bytes]
    if small:
        raise bad_request("part_too_small", f"{_parts(small, 'is', 'are')} smaller than "
                          f"the minimum of {cfg.multipart_part_min_bytes} bytes (only the "
                          "last part may be)")


def _check_size(parts: list[mp.Part], upload: mp.Upload) -> None:
    """Against the announced size: too few bytes means parts after the last are missing."""
    total, announced = sum(p.size for p in parts), upload.file_size
    if announced is None or total == announced:
        return
    received = (f"the part received holds {total} bytes" if len(parts) == 1
                else f"the {len(parts)} parts received hold {total} bytes")
    if total > announced:
        raise bad_request("size_mismatch", f"{received}, more than the {announced} "
                          "announced")
    held = f"{received} of the {announced} announced"
    size, last = parts[0].size, parts[-1].part_number
    if size and all(p.size == size for p in parts):
        # Evenly split (the usual way): which parts are missing follows from the sizes.
        # A range, not a list: absurd sizes (10-byte parts of a 1 TB file) stay cheap.
        missing = range(last + 1, -(-announced // size) + 1)
        raise bad_request("missing_parts", f"{_parts(missing, 'is', 'are')} missing ({held})")
    raise bad_request("missing_parts", f"the parts after part {last} are missing, or the "
                      f"announced size is wrong ({held})")


def _listed_numbers(listed: list[dict[str, Any]]) -> set[int]:
    numbers: set[int] = set()
    for item in listed:
        number = item.get("part_number") if isinstance(item, dict) else None
        if isinstance(item, dict):
            only_fields(item, ("part_number", "sha256"), " in a listed part")
        if not isinstance(number, int) or isinstance(number, bool):
            raise bad_request("validation_error", "each listed part needs a part_number")
        numbers.add(number)
    return numbers


def _check_listed(parts: list[mp.Part], listed: list[dict[str, Any]]) -> None:
    """Every listed part was received (checked before) and matches its SHA-256."""
    by_number = {p.part_number: p for p in parts}
    wrong = sorted({item["part_number"] for item in listed
                    if item.get("sha256") is not None
                    and str(item["sha256"]).lower() != by_number[item["part_number"]]
                    .sha256.hex()})
    if wrong:
        raise bad_request("part_mismatch", f"{_parts(wrong, 'does', 'do')} not match the "
                          "SHA-256 given")
    unlisted = sorted(set(by_number) - _listed_numbers(listed))
    if unlisted:
        raise bad_request("part_mismatch", f"{_parts(unlisted, 'was', 'were')} received but "
                          "not listed")


def _parts(numbers: Sequence[int], singular: str, plural: str) -> str:
    """'part 2 is', 'parts 2 and 3 are', 'parts 1, 2, ... 20 and 7 more are'."""
    if len(numbers) == 1:
        return f"part {numbers[0]} {singular}"
    shown = [str(n) for n in numbers[:20]]
    if len(numbers) > 20:
        shown.append(f"{len(numbers) - 20} more")
    return f"parts {', '.join(shown[:-1])} and {shown[-1]} {plural}"


async def complete(request: web.Request) -> web.Response:
    user = await authenticate(request)
    cfg = request.app[CONFIG_KEY].lifecycle
    pool = request.app[PG_KEY]
    force_version = bool_param(request, "force_version")
    listed = None
    if request.can_read_body:
        doc = await read_json(request)
        only_fields(doc, ("parts",))
        listed = field(doc, "parts", list, required=False)
    upload = await _open_upload(pool, request, user.id)
    parts = await mp.parts(pool, upload.id)
    _check_parts(parts, listed, upload, cfg)
    entries = await mp.entries(pool, [p.manifest_id for p in parts])
    sha256, head = await content_sha256(request.app[CHUNKS_KEY], entries)
    size = sum(p.size for p in parts)
    content = Content(size, sha256, detect(head, upload.file_name), entries)
    async with pool.acquire() as conn, conn.transaction():
        await lc.lock_user(conn, user.id)
        await _open_upload(conn, request, user.id, for_update=True)
        if [(p.part_number, p.manifest_id) for p in await mp.parts(conn, upload.id)] != \
                [(p.part_number, p.manifest_id) for p in parts]:
            raise conflict("parts_changed", "parts changed while completing; try again")
        folder = upload.folder_id
        if folder is not None and await ns.get_folder(conn, user.id, folder) is None:
            raise conflict("folder_gone", "the target folder was deleted")
        # Closing first takes the parts out of the quota count: they become the file.
        await mp.close(conn, upload.id, "completed")
        done = await commit_content(conn, cfg, user.id, folder, upload.file_name, content,
                                    force_version=force_version)
    return committed_response({**file_json(done.row), "unchanged": done.unchanged}, done)


async def abort(request: web.Request) -> web.Response:
    user = await authenticate(request)
    upload_id = parse_uuid(request.match_info["upload_id"], "upload")
    async with request.app[PG_KEY].acquire() as conn, conn.transaction():
        upload = await mp.get(conn, user.id, upload_id, for_update=True)
        if upload is None:
            raise not_found("upload")
        if upload.state == "completed":
            raise conflict("upload_closed", "the upload is already completed")
        await mp.close(conn, upload.id, "aborted")
    return web.Response(status=204)


def setup_routes(app: web.Application) -> None:
    app.router.add_post(f"{BASE}/init", init)
    app.router.add_put(f"{BASE}/{{upload_id}}/part/{{part_number}}", put_part)
    upload = f"{BASE}/{path_param('upload_id', besides='init')}"
    app.router.add_get(upload, show)
    app.router.add_delete(upload, abort)
    app.router.add_post(f"{BASE}/{{upload_id}}/complete", complete)
