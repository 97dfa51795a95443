"""JSON shapes of files and folders, shared by every route that returns them."""

from __future__ import annotations

from typing import Any

from dfms.metadata.namespace import FileRow, FolderRow


def _id(value: object) -> str | None:
    return None if value is None else str(value)


def file_json(row: FileRow) -> dict[str, Any]:
    return {"id": str(row.id), "type": "file", "name": row.name,
            "folder_id": _id(row.folder_id), "size": row.size, "sha256": row.sha256.hex(),
            "mime_type": row.mime_type, "version": row.version,
            "chunk_count": row.chunk_count, "created_at": row.created_at.isoformat(),
            "updated_at": row.updated_at.isoformat()}


def folder_json(row: FolderRow) -> dict[str, Any]:
    return {"id": str(row.id), "type": "folder", "name": row.name,
            "parent_id": _id(row.parent_id), "created_at": row.created_at.isoformat(),
            "updated_at": row.updated_at.isoformat()}
