"""Row types built from query records by column name (dfms.metadata.records)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from dfms.metadata import search, trash
from dfms.metadata.admin import UserUsage
from dfms.metadata.namespace import FileRow, FolderRow
from dfms.metadata.records import from_record

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
ID, PARENT, MANIFEST = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()


@dataclass(frozen=True, slots=True)
class Pair:
    name: str
    size: int


def test_fields_are_read_by_column_name_whatever_else_the_query_selects() -> None:
    record = {"size": 3, "other": "ignored", "name": "a"}
    assert from_record(Pair, record) == Pair("a", 3)


def test_given_values_replace_their_columns_and_need_not_be_columns() -> None:
    assert from_record(Pair, {"name": "a", "size": Decimal(3)}, size=3) == Pair("a", 3)
    assert from_record(Pair, {"name": "a"}, size=4) == Pair("a", 4)


def test_a_column_the_query_lacks_is_an_error_not_a_default() -> None:
    with pytest.raises(KeyError, match="size"):
        from_record(Pair, {"name": "a"})


def test_a_given_value_for_no_field_is_an_error() -> None:
    with pytest.raises(TypeError):
        from_record(Pair, {"name": "a", "size": 1}, colour="red")


def _file_columns(**extra: Any) -> dict[str, Any]:
    return {"id": ID, "name": "f.txt", "size": 10, "sha256": memoryview(b"\x01" * 32),
            "mime_type": "text/plain", "version": 2, "chunk_count": 1, "manifest_id": MANIFEST,
            "created_at": NOW, "updated_at": NOW, **extra}


def test_a_file_row_holds_its_hash_as_bytes() -> None:
    row = FileRow.of(_file_columns(folder_id=PARENT))
    assert row == FileRow(ID, "f.txt", PARENT, 10, b"\x01" * 32, "text/plain", 2, 1,
                          MANIFEST, NOW, NOW)
    assert type(row.sha256) is bytes


def test_a_search_hit_takes_its_folder_from_the_shared_parent_column() -> None:
    file = search._item(_file_columns(kind="file", parent_id=PARENT))
    assert isinstance(file, FileRow) and file.folder_id == PARENT
    folder = search._item({"kind": "folder", "id": ID, "name": "d", "parent_id": PARENT,
                           "created_at": NOW, "updated_at": NOW, "size": None})
    assert folder == FolderRow(ID, "d", PARENT, NOW, NOW)


def test_usage_counts_and_trash_sizes_are_ints() -> None:
    usage = UserUsage.of({
        "id": ID, "email": "a@example.com", "display_name": "A", "role": "user",
        "is_active": True, "quota_bytes": None, "keep_versions": None,
        "keep_versions_days": None, "created_at": NOW, "updated_at": NOW,
        "used_bytes": Decimal(5), "file_count": 2, "trashed_file_count": 0})
    assert (usage.used_bytes, usage.file_count, usage.trashed_file_count) == (5, 2, 0)
    assert type(usage.used_bytes) is int
    item = trash._item({"id": ID, "kind": "folder", "name": "d", "parent_id": None,
                        "original_path": None, "deleted_at": NOW, "size": Decimal(7)})
    assert (item.original_path, item.size) == ("/", 7) and type(item.size) is int
