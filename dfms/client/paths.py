"""Remote paths: ``/photos/2024/a.jpg`` resolved through the caller's folders.

The API names everything by id; people name things by path. A path is split on ``/``
and each part normalised as the server normalises names (NFC, outer spaces trimmed), so
the name typed finds the name stored. In a folder a name is unique across files and
folders, so each step has at most one answer. Resolution costs one folder listing per
folder on the way (every subfolder comes with the first page), plus the pages of files
of the last folder when the last part is not a folder.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

from dfms.client.client import DfmsClient
from dfms.client.errors import BadRequest, Conflict, NotFound
from dfms.client.models import File, Folder

ROOT = "root"
PAGE = 500  # the gateway's largest page: fewest round trips through a big folder


def split_path(path: str) -> list[str]:
    """The names along ``path`` (``""``, ``/`` and ``.`` parts are skipped; a path is
    always from the root). ``..`` is refused: the server has no such name to go up by."""
    parts = []
    for raw in path.split("/"):
        name = unicodedata.normalize("NFC", raw).strip()
        if name in ("", "."):
            continue
        if name == "..":
            raise BadRequest(0, "invalid_path", f"'..' is not supported in a remote path: {path}")
        parts.append(name)
    return parts


def join_path(parent: str, name: str) -> str:
    return "/" + "/".join([*split_path(parent), name])


@dataclass(frozen=True, slots=True)
class Entry:
    """What a path names: the root (both None), a folder, or a file (``folder`` is then
    the folder holding it)."""

    path: str
    folder: Folder | None = None
    file: File | None = None

    @property
    def is_file(self) -> bool:
        return self.file is not None

    @property
    def folder_id(self) -> str | None:
        """The folder's id, or the file's folder's (None: the root)."""
        return self.folder.id if self.folder else None


async def child(client: DfmsClient, parent_id: str | None, name: str) -> Folder | File | None:
    """The folder or file called ``name`` in a folder (None: the root), or None."""
    contents = await client.list_folder(parent_id, per_page=PAGE)
    for folder in contents.folders:
        if folder.name == name:
            return folder
    while True:
        for file in contents.files:
            if file.name == name:
                return file
        if not contents.next_cursor:
            return None
        contents = await client.list_folder(parent_id, cursor=contents.next_cursor,
                                            per_page=PAGE)


async def resolve(client: DfmsClient, path: str) -> Entry:
    """What ``path`` names; ``NotFound`` (code ``not_found``) naming the first part that
    does not exist, or the file a path went through as if it were a folder."""
    parts = split_path(path)
    folder: Folder | None = None
    for i, name in enumerate(parts):
        found = await child(client, folder.id if folder else None, name)
        here = "/" + "/".join(parts[:i + 1])
        if found is None:
            raise NotFound(404, "not_found", f"no such file or folder: {here}")
        if isinstance(found, File):
            if i != len(parts) - 1:
                raise NotFound(404, "not_found", f"not a folder: {here}")
            return Entry(here, folder, found)
        folder = found
    return Entry("/" + "/".join(parts), folder)


async def resolve_folder(client: DfmsClient, path: str) -> str | None:
    """The id of the folder at ``path`` (None: the root); ``NotFound`` if it is a file."""
    entry = await resolve(client, path)
    if entry.is_file:
        raise NotFound(404, "not_found", f"not a folder: {entry.path}")
    return entry.folder_id


async def make_folders(client: DfmsClient, path: str) -> str | None:
    """``mkdir -p``: the id of the folder at ``path``, creating what is missing (None:
    the root). A folder another client creates meanwhile is used, not an error."""
    parent: str | None = None
    for i, name in enumerate(split_path(path)):
        found = await child(client, parent, name)
        if isinstance(found, File):
            here = "/" + "/".join(split_path(path)[:i + 1])
            raise Conflict(409, "name_taken", f"a file has the name of a folder: {here}")
        if found is None:
            try:
                found = await client.create_folder(name, parent)
            except Conflict:
                found = await child(client, parent, name)
                if not isinstance(found, Folder):
                    raise
        parent = found.id
    return parent
