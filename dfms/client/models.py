"""Typed results: frozen dataclasses built from the API's JSON (schemas in api/openapi.yaml).

Each ``from_json`` reads the fields the spec requires and ignores any others, so a newer
server adding fields does not break an older client.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


def _time(value: Any) -> datetime:
    # RFC 3339 with an offset; fromisoformat reads "Z" too since Python 3.11.
    return datetime.fromisoformat(str(value))


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True, slots=True)
class File:
    id: str
    name: str
    folder_id: str | None
    size: int
    sha256: str
    mime_type: str
    version: int
    chunk_count: int
    created_at: datetime
    updated_at: datetime
    # Only in upload/commit answers: the content was the current version's, nothing added.
    unchanged: bool = False

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> File:
        return cls(str(d["id"]), str(d["name"]), _opt_str(d.get("folder_id")), int(d["size"]),
                   str(d["sha256"]), str(d["mime_type"]), int(d["version"]),
                   int(d["chunk_count"]), _time(d["created_at"]), _time(d["updated_at"]),
                   bool(d.get("unchanged", False)))


@dataclass(frozen=True, slots=True)
class Folder:
    id: str
    name: str
    parent_id: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Folder:
        return cls(str(d["id"]), str(d["name"]), _opt_str(d.get("parent_id")),
                   _time(d["created_at"]), _time(d["updated_at"]))


@dataclass(frozen=True, slots=True)
class FilePage:
    items: tuple[File, ...]
    total: int
    next_cursor: str | None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> FilePage:
        return cls(tuple(File.from_json(f) for f in d["items"]), int(d["total"]),
                   _opt_str(d.get("next_cursor")))


@dataclass(frozen=True, slots=True)
class FolderContents:
    folder: Folder | None  # None: the root
    folders: tuple[Folder, ...]
    files: tuple[File, ...]
    total_files: int
    next_cursor: str | None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> FolderContents:
        folder = d.get("folder")
        return cls(Folder.from_json(folder) if folder else None,
                   tuple(Folder.from_json(f) for f in d["folders"]),
                   tuple(File.from_json(f) for f in d["files"]), int(d["total_files"]),
                   _opt_str(d.get("next_cursor")))


@dataclass(frozen=True, slots=True)
class User:
    id: str
    email: str
    display_name: str
    role: str
    created_at: datetime

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> User:
        return cls(str(d["id"]), str(d["email"]), str(d["display_name"]), str(d["role"]),
                   _time(d["created_at"]))


@dataclass(frozen=True, slots=True)
class Tokens:
    access_token: str
    refresh_token: str | None
    # Seconds the access token lives, as the server said when it was issued.
    expires_in: float | None = None

    @classmethod
    def from_session(cls, d: dict[str, Any]) -> Tokens:
        pair = d.get("tokens") or d
        return cls(str(pair["access_token"]), _opt_str(pair.get("refresh_token")),
                   float(pair["expires_in"]) if pair.get("expires_in") else None)


@dataclass(frozen=True, slots=True)
class ChunkerInfo:
    algorithm: str
    min_size_bytes: int
    avg_size_bytes: int
    max_size_bytes: int
    digest: str
    missing_max: int
    commit_max_chunks: int

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ChunkerInfo:
        return cls(str(d["algorithm"]), int(d["min_size_bytes"]), int(d["avg_size_bytes"]),
                   int(d["max_size_bytes"]), str(d["digest"]), int(d["missing_max"]),
                   int(d["commit_max_chunks"]))


@dataclass(frozen=True, slots=True)
class PutResult:
    """What ``put_chunked`` did: the file, and the figures that show the dedup."""

    file: File
    bytes_read: int  # the file's size (its logical bytes)
    bytes_sent: int  # chunk (or whole-file) bytes that went over the network
    chunks_total: int  # chunks in the file's manifest
    chunks_sent: int  # chunks the server lacked, sent
    chunked: bool  # False: the client could not cut as the server does; uploaded whole
    manifest_cached: bool = False  # the manifest came from the cache: the file was not
    # read and hashed, only the chunks sent were read

    @property
    def dedup_ratio(self) -> float:
        """Logical bytes per byte sent (inf when nothing was sent)."""
        return self.bytes_read / self.bytes_sent if self.bytes_sent else float("inf")


@dataclass(frozen=True, slots=True)
class FileVersion:
    version: int
    size: int
    sha256: str
    mime_type: str
    chunk_count: int
    created_at: datetime
    current: bool

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> FileVersion:
        return cls(int(d["version"]), int(d["size"]), str(d["sha256"]), str(d["mime_type"]),
                   int(d["chunk_count"]), _time(d["created_at"]), bool(d["current"]))


@dataclass(frozen=True, slots=True)
class TrashItem:
    id: str
    type: str  # "file" or "folder"
    name: str
    original_path: str
    original_folder_id: str | None
    size: int
    deleted_at: datetime
    purge_after: datetime

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TrashItem:
        return cls(str(d["id"]), str(d["type"]), str(d["name"]), str(d["original_path"]),
                   _opt_str(d.get("original_folder_id")), int(d["size"]),
                   _time(d["deleted_at"]), _time(d["purge_after"]))


@dataclass(frozen=True, slots=True)
class TrashPage:
    items: tuple[TrashItem, ...]
    total: int
    next_cursor: str | None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TrashPage:
        return cls(tuple(TrashItem.from_json(i) for i in d["items"]), int(d["total"]),
                   _opt_str(d.get("next_cursor")))


@dataclass(frozen=True, slots=True)
class StorageUsage:
    used_bytes: int
    quota_bytes: int | None  # None: unlimited
    file_count: int
    version_count: int
    dedup_saved_bytes: int

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> StorageUsage:
        quota = d.get("quota_bytes")
        return cls(int(d["used_bytes"]), None if quota is None else int(quota),
                   int(d["file_count"]), int(d["version_count"]), int(d["dedup_saved_bytes"]))


@dataclass(frozen=True, slots=True)
class SearchHit:
    item: File | Folder
    score: float
    path: str  # the folder holding the item, from the root: "/" or "/docs/reports"

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SearchHit:
        item: File | Folder = (Folder.from_json(d) if d.get("type") == "folder"
                               else File.from_json(d))
        return cls(item, float(d["score"]), str(d["path"]))


@dataclass(frozen=True, slots=True)
class SearchPage:
    items: tuple[SearchHit, ...]
    total: int
    page: int
    per_page: int

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SearchPage:
        return cls(tuple(SearchHit.from_json(h) for h in d["items"]), int(d["total"]),
                   int(d["page"]), int(d["per_page"]))


@dataclass(frozen=True, slots=True)
class Share:
    id: str  # the share id, which revoke_share takes; never the token
    file_id: str
    file_name: str
    file_available: bool
    created_at: datetime
    expires_at: datetime
    max_downloads: int | None
    download_count: int
    has_password: bool
    revoked: bool
    state: str  # active, expired, revoked or exhausted
    # Only in the answer that created the link: it is never shown again.
    url: str | None = None
    token: str | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Share:
        limit = d.get("max_downloads")
        return cls(str(d["id"]), str(d["file_id"]), str(d["file_name"]),
                   bool(d["file_available"]), _time(d["created_at"]), _time(d["expires_at"]),
                   None if limit is None else int(limit), int(d["download_count"]),
                   bool(d["has_password"]), bool(d["revoked"]), str(d["state"]),
                   _opt_str(d.get("url")), _opt_str(d.get("token")))


@dataclass(frozen=True, slots=True)
class SharePage:
    items: tuple[Share, ...]
    total: int
    page: int
    per_page: int

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SharePage:
        return cls(tuple(Share.from_json(s) for s in d["items"]), int(d["total"]),
                   int(d["page"]), int(d["per_page"]))


def file_or_folder(d: dict[str, Any]) -> File | Folder:
    """A trash restore's answer: the file, or the folder (by its ``type``)."""
    return Folder.from_json(d) if d.get("type") == "folder" else File.from_json(d)


@dataclass(slots=True)
class PutProgress:
    """Live figures of one ``put_chunked``, updated in place as it goes (read them from a
    display timer; the SDK only assigns ints, so a reader never sees a torn value)."""

    size: int = 0  # the file's size, known before hashing starts
    bytes_hashed: int = 0
    chunks_total: int = 0
    chunks_missing: int = 0  # of the unique chunks, those the server asked for
    bytes_to_send: int = 0
    bytes_sent: int = 0
    chunks_sent: int = 0
    phase: str = "hashing"  # hashing, asking, sending, committing, done
