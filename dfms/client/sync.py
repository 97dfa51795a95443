"""``Client``: the SDK for scripts, without asyncio.

Each ``Client`` runs a ``DfmsClient`` on its own private event loop, so it works where no
loop runs (and must not be used from inside a running loop: use ``DfmsClient`` there).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from dfms.client.client import DfmsClient
from dfms.client.manifest_cache import ManifestCache
from dfms.client.models import (
    File,
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
    TrashPage,
    User,
)

T = TypeVar("T")


class Client:
    """``with Client(url) as c: c.login(...); c.put_chunked("a.bin")``. Takes the same
    keyword arguments as ``DfmsClient``."""

    def __init__(self, base_url: str, **kw: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._async = DfmsClient(base_url, **kw)
        self._run(self._async.__aenter__())

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._loop.run_until_complete(coro)

    def close(self) -> None:
        if not self._loop.is_closed():
            self._run(self._async.close())
            self._loop.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @property
    def aio(self) -> DfmsClient:
        """The async client underneath (its coroutines run on this object's loop only)."""
        return self._async

    @property
    def tokens(self) -> Tokens | None:
        return self._async.tokens

    def register(self, email: str, password: str, display_name: str) -> User:
        return self._run(self._async.register(email, password, display_name))

    def login(self, email: str, password: str) -> User:
        return self._run(self._async.login(email, password))

    def logout(self, *, everywhere: bool = False) -> None:
        self._run(self._async.logout(everywhere=everywhere))

    def me(self) -> User:
        return self._run(self._async.me())

    def list_files(self, folder_id: str | None = None) -> list[File]:
        return self._run(self._async.list_files(folder_id))

    def stat(self, file_id: str) -> File:
        return self._run(self._async.stat(file_id))

    def delete(self, file_id: str) -> None:
        self._run(self._async.delete(file_id))

    def create_folder(self, name: str, parent_id: str | None = None) -> Folder:
        return self._run(self._async.create_folder(name, parent_id))

    def list_folder(self, folder_id: str | None = None) -> FolderContents:
        return self._run(self._async.list_folder(folder_id))

    def versions(self, file_id: str) -> tuple[FileVersion, ...]:
        return self._run(self._async.versions(file_id))

    def trash_page(self, *, cursor: str | None = None, per_page: int = 100) -> TrashPage:
        return self._run(self._async.trash_page(cursor=cursor, per_page=per_page))

    def usage(self) -> StorageUsage:
        return self._run(self._async.usage())

    def upload(self, path: str | Path, name: str, folder_id: str | None = None) -> File:
        return self._run(self._async.upload(path, name, folder_id))

    def download(self, file_id: str, dest: str | Path) -> File:
        return self._run(self._async.download(file_id, dest))

    def put_chunked(self, path: str | Path, name: str | None = None,
                    folder_id: str | None = None, *, if_match: str | None = None,
                    progress: PutProgress | None = None,
                    cache: ManifestCache | None = None) -> PutResult:
        return self._run(self._async.put_chunked(path, name, folder_id, if_match=if_match,
                                                 progress=progress, cache=cache))

    def update_file(self, file_id: str, *, name: str | None = None,
                    folder_id: str | None = None) -> File:
        return self._run(self._async.update_file(file_id, name=name, folder_id=folder_id))

    def update_folder(self, folder_id: str, *, name: str | None = None,
                      parent_id: str | None = None) -> Folder:
        return self._run(self._async.update_folder(folder_id, name=name, parent_id=parent_id))

    def delete_folder(self, folder_id: str, *, recursive: bool = False) -> None:
        self._run(self._async.delete_folder(folder_id, recursive=recursive))

    def restore_trash_item(self, item_id: str, *, rename: bool = False) -> File | Folder:
        return self._run(self._async.restore_trash_item(item_id, rename=rename))

    def purge_trash_item(self, item_id: str) -> None:
        self._run(self._async.purge_trash_item(item_id))

    def empty_trash(self) -> None:
        self._run(self._async.empty_trash())

    def restore_version(self, file_id: str, version: int) -> File:
        return self._run(self._async.restore_version(file_id, version))

    def search(self, q: str, *, type: str | None = None, folder_id: str | None = None,
               page: int = 1, per_page: int = 50) -> SearchPage:
        return self._run(self._async.search(q, type=type, folder_id=folder_id, page=page,
                                            per_page=per_page))

    def create_share(self, file_id: str, *, expires_in_s: int | None = None,
                     max_downloads: int | None = None, password: str | None = None) -> Share:
        return self._run(self._async.create_share(
            file_id, expires_in_s=expires_in_s, max_downloads=max_downloads,
            password=password))

    def list_shares(self, *, file_id: str | None = None, page: int = 1,
                    per_page: int = 100) -> SharePage:
        return self._run(self._async.list_shares(file_id=file_id, page=page,
                                                 per_page=per_page))

    def revoke_share(self, ref: str) -> None:
        self._run(self._async.revoke_share(ref))
