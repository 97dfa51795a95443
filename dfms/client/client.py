"""``DfmsClient``: the typed async client over the gateway's HTTP API (api/openapi.yaml)."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import aiohttp

from dfms.chunker import Chunker
from dfms.client.chunking import (
    ChunkRef,
    Manifest,
    build_manifest,
    local_chunker,
    read_chunk,
    sha256_file,
)
from dfms.client.errors import (
    ChecksumMismatch,
    Conflict,
    NotFound,
    QuotaExceeded,
    RangeNotSatisfiable,
    TransportError,
    Unauthorized,
    error_from_response,
)
from dfms.client.manifest_cache import FileStat, ManifestCache
from dfms.client.models import (
    ChunkerInfo,
    File,
    FilePage,
    FileVersion,
    Folder,
    FolderContents,
    PutProgress,
    PutResult,
    SearchPage,
    Share,
    SharePage,
    StorageUsage,
    Tokens,
    TrashItem,
    TrashPage,
    User,
    file_or_folder,
)
from dfms.client.retry import RetryPolicy, Sleep, with_retries

Source = str | Path | AsyncIterable[bytes]
BodyFactory = Callable[[], Any]
IO_BLOCK = 1024 * 1024


class DfmsClient:
    """An async client for one DFMS gateway. Use as ``async with DfmsClient(url) as c:``.

    Sign in with ``login``/``register``, or pass ``token`` (and ``refresh_token``) from an
    earlier session. The access token is refreshed before it expires when a refresh token
    is known; ``on_tokens`` is called with each new pair (a refresh token is single use:
    whoever stores tokens must store the new one). Every failure raises a
    ``dfms.client.errors.DfmsError``.
    """

    def __init__(self, base_url: str, *, token: str | None = None,
                 refresh_token: str | None = None, retry: RetryPolicy | None = None,
                 parallel: int = 4, timeout_s: float = 300.0,
                 clock: Callable[[], float] = time.monotonic, sleep: Sleep = asyncio.sleep,
                 on_tokens: Callable[[Tokens], None] | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._tokens = Tokens(token, refresh_token) if token else None
        self._expires_at: float | None = None
        self._retry = retry or RetryPolicy()
        self._parallel = max(1, parallel)
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._clock, self._sleep = clock, sleep
        self._on_tokens = on_tokens
        self._session: aiohttp.ClientSession | None = None
        # One refresh at a time: refresh tokens are single use, and presenting a spent
        # one again revokes the whole family.
        self._refresh_lock = asyncio.Lock()

    async def __aenter__(self) -> DfmsClient:
        self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def tokens(self) -> Tokens | None:
        """The current tokens (to keep for a later ``DfmsClient(token=..., refresh_token=...)``)."""
        return self._tokens

    # --- auth -------------------------------------------------------------------------

    async def register(self, email: str, password: str, display_name: str) -> User:
        body = await self._json("POST", "/auth/register", auth=False, json={
            "email": email, "password": password, "display_name": display_name})
        return self._signed_in(body)

    async def login(self, email: str, password: str) -> User:
        body = await self._json("POST", "/auth/login", auth=False,
                                json={"email": email, "password": password})
        return self._signed_in(body)

    async def logout(self, *, everywhere: bool = False) -> None:
        """Revoke this session's refresh token (every session's with ``everywhere``), then
        forget the tokens. Access tokens already issued stay valid until they expire."""
        refresh = None if everywhere or not self._tokens else self._tokens.refresh_token
        await self._json("POST", "/auth/logout", json={"refresh_token": refresh})
        self._tokens, self._expires_at = None, None

    async def me(self) -> User:
        return User.from_json(await self._json("GET", "/auth/me"))

    def _signed_in(self, body: dict[str, Any]) -> User:
        self._set_tokens(Tokens.from_session(body))
        return User.from_json(body["user"])

    def _set_tokens(self, tokens: Tokens) -> None:
        self._tokens = tokens
        # Refresh a little early: a token valid when sent may expire before it is checked.
        margin = min(30.0, (tokens.expires_in or 0) / 10)
        self._expires_at = (self._clock() + tokens.expires_in - margin
                            if tokens.expires_in else None)
        if self._on_tokens is not None:
            self._on_tokens(tokens)

    async def refresh(self) -> Tokens:
        """Trade the refresh token for a new pair now (``Unauthorized`` without one)."""
        stale = self._tokens
        if stale is None or not stale.refresh_token:
            raise Unauthorized(0, "no_refresh_token", "no refresh token to refresh with")
        await self._refresh(stale)
        assert self._tokens is not None
        return self._tokens

    async def _refresh(self, stale: Tokens | None) -> None:
        async with self._refresh_lock:
            if self._tokens is not stale or not stale or not stale.refresh_token:
                return  # another task refreshed meanwhile, or there is nothing to refresh with
            body = await self._json("POST", "/auth/refresh", auth=False,
                                    json={"refresh_token": stale.refresh_token})
            self._set_tokens(Tokens.from_session(body))

    async def _auth_headers(self) -> dict[str, str]:
        if self._expires_at is not None and self._clock() >= self._expires_at:
            await self._refresh(self._tokens)
        return {"Authorization": f"Bearer {self._tokens.access_token}"} if self._tokens else {}

    # --- the one request path -----------------------------------------------------------

    def _url(self, path: str) -> str:
        return f"{self.base_url}/api/v1{path}"

    async def _attempt(self, method: str, path: str, auth: bool, headers: dict[str, str],
                       body: BodyFactory | None, **kw: Any) -> aiohttp.ClientResponse:
        """One try: the response (status < 400, body unread), or the error it translates to."""
        if self._session is None:
            raise RuntimeError("use DfmsClient as `async with DfmsClient(...) as client`")
        hdrs = {**(await self._auth_headers() if auth else {}), **headers}
        try:
            resp = await self._session.request(method, self._url(path), headers=hdrs,
                                               data=body() if body else None, **kw)
        except (TimeoutError, aiohttp.ClientConnectionError) as e:
            raise TransportError(0, "connection_error", str(e) or type(e).__name__) from e
        if resp.status < 400:
            return resp
        async with resp:
            raise error_from_response(resp.status, await _read_body(resp), resp.headers)

    async def _send(self, method: str, path: str, *, auth: bool = True,
                    headers: dict[str, str] | None = None, body: BodyFactory | None = None,
                    retry: bool = True, **kw: Any) -> aiohttp.ClientResponse:
        """A request with bounded retries (429/503/no answer) and, once, a token refresh
        when the server says the access token is no longer good."""
        async def once() -> aiohttp.ClientResponse:
            stale = self._tokens
            try:
                return await self._attempt(method, path, auth, headers or {}, body, **kw)
            except Unauthorized as e:
                if not (auth and stale and stale.refresh_token and e.code == "invalid_token"):
                    raise
                await self._refresh(stale)
                return await self._attempt(method, path, auth, headers or {}, body, **kw)

        return await with_retries(once, self._retry if retry else _ONCE, self._sleep)

    async def _json(self, method: str, path: str, **kw: Any) -> Any:
        resp = await self._send(method, path, **kw)
        async with resp:
            return await _read_body(resp)

    # --- files and folders --------------------------------------------------------------

    async def list_files_page(self, folder_id: str | None = None, *, cursor: str | None = None,
                              per_page: int = 100) -> FilePage:
        params = {"folder_id": folder_id or "root", "per_page": str(per_page)}
        if cursor:
            params["cursor"] = cursor
        return FilePage.from_json(await self._json("GET", "/files", params=params))

    async def iter_files(self, folder_id: str | None = None, *,
                         per_page: int = 100) -> AsyncIterator[File]:
        """Every file of a folder (the root by default), page after page by cursor."""
        cursor: str | None = None
        while True:
            page = await self.list_files_page(folder_id, cursor=cursor, per_page=per_page)
            for file in page.items:
                yield file
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    async def list_files(self, folder_id: str | None = None) -> list[File]:
        return [f async for f in self.iter_files(folder_id)]

    async def stat(self, file_id: str) -> File:
        return File.from_json(await self._json("GET", f"/files/{file_id}"))

    async def delete(self, file_id: str) -> None:
        """Move a file to the trash."""
        await self._json("DELETE", f"/files/{file_id}")

    async def create_folder(self, name: str, parent_id: str | None = None) -> Folder:
        return Folder.from_json(await self._json(
            "POST", "/folders", json={"name": name, "parent_id": parent_id}))

    async def list_folder(self, folder_id: str | None = None, *,
                          cursor: str | None = None, per_page: int = 100) -> FolderContents:
        params = {"per_page": str(per_page), **({"cursor": cursor} if cursor else {})}
        return FolderContents.from_json(await self._json(
            "GET", f"/folders/{folder_id or 'root'}/contents", params=params))

    async def versions(self, file_id: str) -> tuple[FileVersion, ...]:
        """Every version of a file, newest first."""
        body = await self._json("GET", f"/files/{file_id}/versions")
        return tuple(FileVersion.from_json(v) for v in body["items"])

    async def trash_page(self, *, cursor: str | None = None, per_page: int = 100) -> TrashPage:
        params = {"per_page": str(per_page), **({"cursor": cursor} if cursor else {})}
        return TrashPage.from_json(await self._json("GET", "/trash", params=params))

    async def usage(self) -> StorageUsage:
        return StorageUsage.from_json(await self._json("GET", "/storage/usage"))

    async def update_file(self, file_id: str, *, name: str | None = None,
                          folder_id: str | None = None) -> File:
        """Rename and/or move a file; ``folder_id="root"`` moves it to the root, None
        leaves it where it is."""
        return File.from_json(await self._json(
            "PATCH", f"/files/{file_id}", json=_changes(name=name, folder_id=folder_id)))

    async def update_folder(self, folder_id: str, *, name: str | None = None,
                            parent_id: str | None = None) -> Folder:
        """Rename and/or move a folder; ``parent_id="root"`` moves it to the root."""
        return Folder.from_json(await self._json(
            "PATCH", f"/folders/{folder_id}", json=_changes(name=name, parent_id=parent_id)))

    async def delete_folder(self, folder_id: str, *, recursive: bool = False) -> None:
        """Move a folder to the trash; one that is not empty only with ``recursive``
        (otherwise 409 ``folder_not_empty``), its contents going along with it."""
        await self._json("DELETE", f"/folders/{folder_id}",
                         params={"recursive": "true"} if recursive else {})

    async def iter_trash(self, *, per_page: int = 100) -> AsyncIterator[TrashItem]:
        """Every item in the trash, most recently deleted first."""
        cursor: str | None = None
        while True:
            page = await self.trash_page(cursor=cursor, per_page=per_page)
            for item in page.items:
                yield item
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    async def restore_trash_item(self, item_id: str, *, rename: bool = False) -> File | Folder:
        """Put a trashed file or folder back; ``rename`` picks ``name (restored).ext``
        when its name is taken there (otherwise 409 ``name_taken``)."""
        params = {"rename": "true"} if rename else {}
        return file_or_folder(await self._json("POST", f"/trash/{item_id}/restore",
                                               params=params))

    async def purge_trash_item(self, item_id: str) -> None:
        await self._json("DELETE", f"/trash/{item_id}")

    async def empty_trash(self) -> None:
        await self._json("DELETE", "/trash")

    async def restore_version(self, file_id: str, version: int) -> File:
        """A new current version with that version's content (no bytes copied)."""
        return File.from_json(await self._json(
            "POST", f"/files/{file_id}/versions/{version}/restore"))

    async def search(self, q: str, *, type: str | None = None, folder_id: str | None = None,
                     page: int = 1, per_page: int = 50) -> SearchPage:
        """The caller's files and folders by name, best first (``type``: file or folder)."""
        params = {"q": q, "page": str(page), "per_page": str(per_page)}
        params.update({k: v for k, v in (("type", type), ("folder_id", folder_id)) if v})
        return SearchPage.from_json(await self._json("GET", "/search", params=params))

    async def create_share(self, file_id: str, *, expires_in_s: int | None = None,
                           max_downloads: int | None = None,
                           password: str | None = None) -> Share:
        """A share link; its ``url`` and ``token`` are shown this once only."""
        return Share.from_json(await self._json("POST", f"/files/{file_id}/share", json={
            "expires_in_s": expires_in_s, "max_downloads": max_downloads,
            "password": password}))

    async def list_shares(self, *, file_id: str | None = None, page: int = 1,
                          per_page: int = 100) -> SharePage:
        params = {"page": str(page), "per_page": str(per_page)}
        if file_id:
            params["file_id"] = file_id
        return SharePage.from_json(await self._json("GET", "/shares", params=params))

    async def revoke_share(self, ref: str) -> None:
        """Revoke a link by its share id (or its token)."""
        await self._json("DELETE", f"/shares/{quote(ref, safe='')}")

    # --- plain upload and download ------------------------------------------------------

    async def upload(self, source: Source, name: str, folder_id: str | None = None, *,
                     if_match: str | None = None) -> File:
        """Upload (streamed) from a path or an async iterator of bytes; a new version when
        the folder holds a file of that name. Only a path is retried: an iterator once
        consumed cannot be sent again. ``if_match``: see ``put_chunked``."""
        headers = {"X-File-Name": quote(name, safe=""),
                   "Content-Type": "application/octet-stream", **_if_match(if_match)}
        if folder_id:
            headers["X-Folder-Id"] = folder_id
        if isinstance(source, str | Path):
            path = Path(source)
            return File.from_json(await self._json(
                "POST", "/files/upload", headers=headers, body=lambda: _file_blocks(path)))
        stream = source
        return File.from_json(await self._json(
            "POST", "/files/upload", headers=headers, body=lambda: stream, retry=False))

    async def download(self, file_id: str, dest: str | Path, *,
                       version: int | None = None) -> File:
        """Download to ``dest``, verified against the file's SHA-256. The bytes go to
        ``<dest>.part`` first; a ``.part`` left by an interrupted download is resumed with
        a Range request (If-Range: the file's ETag, so a changed file starts over).
        ``version``: that version's content instead of the current one (the File returned
        then describes that version)."""
        file = await self.stat(file_id)
        url = f"/files/{file_id}/download"
        if version is not None:
            file = await self._as_version(file, version)
            url = f"/files/{file_id}/versions/{version}/download"
        dest = Path(dest)
        part = dest.with_name(dest.name + ".part")
        resumed = await asyncio.to_thread(_size_or_zero, part) > 0
        await self._fetch_with_retries(file, part, url)
        if await asyncio.to_thread(sha256_file, part) != file.sha256 and resumed:
            # The kept prefix was bad (not this content): fetch it all once more.
            await asyncio.to_thread(part.unlink)
            await self._fetch_with_retries(file, part, url)
        if await asyncio.to_thread(sha256_file, part) != file.sha256:
            await asyncio.to_thread(part.unlink)
            raise ChecksumMismatch(0, "checksum_mismatch",
                                   f"downloaded bytes of {file_id} do not hash to {file.sha256}")
        await asyncio.to_thread(part.replace, dest)
        return file

    async def _as_version(self, file: File, version: int) -> File:
        for v in await self.versions(file.id):
            if v.version == version:
                return replace(file, size=v.size, sha256=v.sha256, mime_type=v.mime_type,
                               version=v.version, chunk_count=v.chunk_count)
        raise NotFound(404, "not_found", f"file {file.id} has no version {version}")

    async def _fetch_with_retries(self, file: File, part: Path, url: str) -> None:
        # Retried as a whole: each try resumes from what the previous one wrote.
        await with_retries(lambda: self._fetch_into(file, part, url), self._retry, self._sleep)

    async def _fetch_into(self, file: File, part: Path, url: str) -> None:
        have = await asyncio.to_thread(_size_or_zero, part)
        if have and have == file.size:
            return  # all there already; the caller verifies it
        if have > file.size:
            have = 0  # not a prefix of this file: fetch it whole ("wb" below)
        headers = {"Range": f"bytes={have}-", "If-Range": f'"{file.sha256}"'} if have else {}
        try:
            resp = await self._send("GET", url, headers=headers, retry=False)
        except RangeNotSatisfiable:
            # The kept prefix does not fit the file (it shrank?): start over, whole.
            await asyncio.to_thread(part.unlink, True)
            resp = await self._send("GET", url, retry=False)
        async with resp:
            await _write_body(resp, part, append=resp.status == 206)

    # --- chunk-level upload ------------------------------------------------------------

    async def chunker_info(self) -> ChunkerInfo:
        return ChunkerInfo.from_json(await self._json("GET", "/chunker"))

    async def put_chunked(self, path: str | Path, name: str | None = None,
                          folder_id: str | None = None, *, if_match: str | None = None,
                          progress: PutProgress | None = None,
                          cache: ManifestCache | None = None) -> PutResult:
        """Upload a file sending only the chunks the server lacks for this caller.

        Cuts and hashes the file in a thread with the server's chunker, asks which chunks
        are missing, sends those (``parallel`` in flight), then commits the manifest.
        Re-running after an interruption sends only what did not arrive. Falls back to a
        plain upload when this client cannot cut as the server does. ``if_match``: an
        ETag (``"<sha256>"``, or ``*``) the current file of that name must have, else 412
        and nothing changes. ``progress`` is updated in place as the put goes. ``cache``:
        manifests of files cut before, reused while a file's stat is unchanged (the file
        is then not read, except for the chunks the server lacks)."""
        path, prog = Path(path), progress or PutProgress()
        name = name or path.name
        info = await self.chunker_info()
        chunker = local_chunker(info)
        if chunker is None:
            return await self._put_whole(path, name, folder_id, if_match, prog)
        prog.size = await asyncio.to_thread(_size_or_zero, path)
        manifest, cached = await asyncio.to_thread(_cut, path, chunker, info, cache, lambda n: (
            setattr(prog, "bytes_hashed", n)))
        prog.chunks_total = len(manifest.chunks)
        if len(manifest.chunks) > info.commit_max_chunks:
            return await self._put_whole(path, name, folder_id, if_match, prog)
        session = str((await self._json("POST", "/chunks/sessions"))["upload_session"])
        try:
            file = await self._send_and_commit(
                path, _Commit(name, folder_id, if_match, manifest, session), info, prog)
        except QuotaExceeded:
            # No re-run can finish without room: free what this session holds now
            # rather than when it expires. Other failures keep the session, so that a
            # re-run finds the chunks already sent (they count as the caller's).
            await self._end_session(session)
            raise
        await self._end_session(session)  # the committed chunks belong to the file now
        prog.phase = "done"
        return PutResult(file, manifest.size, prog.bytes_sent, len(manifest.chunks),
                         prog.chunks_sent, True, cached)

    async def _end_session(self, session: str) -> None:
        await self._json("DELETE", f"/chunks/sessions/{session}")

    async def _send_and_commit(self, path: Path, commit: _Commit, info: ChunkerInfo,
                               prog: PutProgress) -> File:
        """Send what is missing, commit; once more if the commit still finds chunks
        missing (a session that expired meanwhile)."""
        for round_ in (1, 2):
            prog.phase = "asking"
            todo = await self._missing(commit.manifest, info.missing_max)
            prog.chunks_missing += len(todo)
            prog.bytes_to_send += sum(c.size for c in todo)
            prog.phase = "sending"
            await self._send_chunks(path, todo, commit.session, prog)
            prog.phase = "committing"
            try:
                return await self._commit(commit)
            except Conflict as e:
                if e.code != "missing_chunks" or round_ == 2:
                    raise
        raise AssertionError("unreachable")

    async def _put_whole(self, path: Path, name: str, folder_id: str | None,
                         if_match: str | None, prog: PutProgress) -> PutResult:
        prog.phase = "sending"
        file = await self.upload(path, name, folder_id, if_match=if_match)
        prog.bytes_hashed = prog.bytes_sent = prog.size = file.size
        prog.phase = "done"
        return PutResult(file, file.size, file.size, file.chunk_count, file.chunk_count, False)

    async def _missing(self, manifest: Manifest, batch: int) -> list[ChunkRef]:
        """The chunks to send: each missing hash once, in file order."""
        unique = list({c.sha256: c for c in reversed(manifest.chunks)}.values())[::-1]
        missing: set[str] = set()
        for i in range(0, len(unique), batch):
            body = await self._json("POST", "/chunks/missing", json={
                "chunks": [c.sha256 for c in unique[i:i + batch]]})
            missing.update(body["missing"])
        return [c for c in unique if c.sha256 in missing]

    async def _send_chunks(self, path: Path, todo: list[ChunkRef], session: str,
                           prog: PutProgress) -> None:
        """PUT the chunks, ``parallel`` at a time; memory holds at most that many chunks."""
        queue: Iterator[ChunkRef] = iter(todo)

        async def worker() -> None:
            for ref in queue:  # workers share the iterator: each chunk is taken once
                data = await asyncio.to_thread(read_chunk, path, ref)
                await self._put_chunk(ref.sha256, data, session)
                prog.bytes_sent += len(data)
                prog.chunks_sent += 1

        try:
            async with asyncio.TaskGroup() as tasks:
                for _ in range(min(self._parallel, len(todo))):
                    tasks.create_task(worker())
        except ExceptionGroup as group:
            # The first worker's failure is the put's (the others were cancelled by it,
            # or failed the same way): callers catch DfmsError, not a group.
            raise group.exceptions[0] from None

    async def _put_chunk(self, sha256: str, data: bytes, session: str) -> None:
        # A fresh BytesIO per try (a retry re-reads it); aiohttp warns on big raw bytes.
        await self._json("PUT", f"/chunks/{sha256}", params={"upload_session": session},
                         headers={"Content-Type": "application/octet-stream"},
                         body=lambda: io.BytesIO(data))

    async def _commit(self, c: _Commit) -> File:
        m = c.manifest
        return File.from_json(await self._json("POST", "/files/commit", json={
            "name": c.name, "folder_id": c.folder_id, "size": m.size, "sha256": m.sha256,
            "upload_session": c.session,
            "chunks": [{"sha256": r.sha256, "size": r.size} for r in m.chunks]},
            headers=_if_match(c.if_match)))


@dataclass(frozen=True, slots=True)
class _Commit:
    """What a chunk-level put commits, and under which session."""

    name: str
    folder_id: str | None
    if_match: str | None
    manifest: Manifest
    session: str


_ONCE = RetryPolicy(attempts=1)


def _if_match(etag: str | None) -> dict[str, str]:
    """The If-Match header for an ETag; a bare SHA-256 is quoted as the server's ETags are."""
    if etag is None:
        return {}
    return {"If-Match": etag if etag == "*" or etag.startswith(('"', "W/")) else f'"{etag}"'}


def _changes(**fields: str | None) -> dict[str, str]:
    """A PATCH body: the fields given (None: left out, so it keeps its value)."""
    return {k: v for k, v in fields.items() if v is not None}


async def _read_body(resp: aiohttp.ClientResponse) -> Any:
    try:
        data = await resp.read()
    except (TimeoutError, aiohttp.ClientError) as e:
        raise TransportError(0, "connection_error", str(e) or type(e).__name__) from e
    if not data:
        return None
    if "json" in resp.headers.get("Content-Type", ""):
        return json.loads(data)
    return data


async def _file_blocks(path: Path) -> AsyncIterator[bytes]:
    """The file's bytes block by block, each read in a thread (the loop never blocks)."""
    f = await asyncio.to_thread(path.open, "rb")
    try:
        while block := await asyncio.to_thread(f.read, IO_BLOCK):
            yield block
    finally:
        await asyncio.to_thread(f.close)


async def _write_body(resp: aiohttp.ClientResponse, part: Path, *, append: bool) -> None:
    f = await asyncio.to_thread(part.open, "ab" if append else "wb")
    try:
        async for block in resp.content.iter_chunked(IO_BLOCK):
            await asyncio.to_thread(f.write, block)
    except (TimeoutError, aiohttp.ClientError) as e:
        raise TransportError(0, "connection_error", str(e) or type(e).__name__) from e
    finally:
        await asyncio.to_thread(f.close)


def _cut(path: Path, chunker: Chunker, info: ChunkerInfo, cache: ManifestCache | None,
         on_read: Callable[[int], None]) -> tuple[Manifest, bool]:
    """(the file's manifest, whether it came from ``cache``): from the cache when the
    file's stat is unchanged, else cut and hashed (blocking) and recorded there if the
    file did not change while it was read."""
    if cache is None:
        return build_manifest(path, chunker, on_read=on_read), False
    checked_ns = time.time_ns()
    before = FileStat.of(path)
    cached = cache.get(path, info, before)
    if cached is not None:
        on_read(cached.size)
        return cached, True
    manifest = build_manifest(path, chunker, on_read=on_read)
    if FileStat.of(path) == before and manifest.size == before.size:
        cache.put(path, info, before, manifest, checked_ns)
    return manifest, False


def _size_or_zero(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
