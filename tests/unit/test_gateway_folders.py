"""gateway/folders.py: the place a rename or move asks for, and claiming a name there."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from dfms.gateway.errors import ApiError
from dfms.gateway.folders import claim_name, requested_place
from dfms.gateway.security import AuthUser

USER = AuthUser(uuid.uuid4(), "user")
HERE, THERE, ITEM = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
NOW = datetime(2026, 1, 2, tzinfo=UTC)


class FakeConn:
    """Knows the folders in ``folders``; answers name_taken with ``taken``."""

    def __init__(self, folders: tuple[uuid.UUID, ...] = (), taken: bool = False) -> None:
        self.folders = folders
        self.taken = taken
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    async def fetchrow(self, sql: str, *args: Any) -> dict[str, Any] | None:
        folder_id = args[0]
        if folder_id not in self.folders:
            return None
        return {"id": folder_id, "name": "f", "parent_id": None, "created_at": NOW,
                "updated_at": NOW}

    async def execute(self, sql: str, *args: Any) -> str:
        self.calls.append(("lock", args))
        return "SELECT 1"

    async def fetchval(self, sql: str, *args: Any) -> bool:
        self.calls.append(("taken", args))
        return self.taken


async def _place(conn: FakeConn, doc: dict[str, Any]) -> tuple[str, uuid.UUID | None]:
    return await requested_place(conn, USER, doc, kind="file",  # type: ignore[arg-type]
                                 parent_field="folder_id", name="old.txt", parent=HERE)


async def test_left_out_fields_keep_the_current_name_and_parent() -> None:
    assert await _place(FakeConn(), {}) == ("old.txt", HERE)


async def test_the_name_is_cleaned_and_the_parent_resolved() -> None:
    conn = FakeConn(folders=(THERE,))
    assert await _place(conn, {"name": " new.txt "}) == ("new.txt", HERE)
    assert await _place(conn, {"folder_id": str(THERE)}) == ("old.txt", THERE)
    assert await _place(conn, {"folder_id": None}) == ("old.txt", None)  # to the root


async def test_a_bad_name_or_an_unknown_parent_is_refused() -> None:
    with pytest.raises(ApiError) as bad_name:
        await _place(FakeConn(), {"name": "a/b"})
    assert bad_name.value.status == 400 and "file name" in bad_name.value.message
    with pytest.raises(ApiError) as unknown:
        await _place(FakeConn(), {"folder_id": str(THERE)})
    assert unknown.value.status == 404


async def test_a_free_name_is_claimed_under_the_parent_s_lock() -> None:
    conn = FakeConn()
    await claim_name(conn, USER, HERE, "a.txt", except_id=ITEM)  # type: ignore[arg-type]
    [(lock, lock_args), (taken, taken_args)] = conn.calls
    assert (lock, taken) == ("lock", "taken")
    assert lock_args == (f"names:{USER.id}:{HERE}",)
    assert taken_args == (USER.id, HERE, "a.txt", ITEM)


async def test_a_taken_name_is_a_conflict() -> None:
    with pytest.raises(ApiError) as clash:
        await claim_name(FakeConn(taken=True), USER, None, "a.txt")  # type: ignore[arg-type]
    assert (clash.value.status, clash.value.code) == (409, "name_taken")
