"""Multipart `complete` names what is wrong: missing parts (trailing ones too), parts below
the minimum, in plain grammar ("part 2 is missing", "parts 2 and 3 are missing")."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.integration.test_files import assert_error
from tests.integration.test_lifecycle import put_part
from tests.support.api import Api, ApiUser

MIB = 1024 * 1024
PART = 5 * MIB  # the minimum part size (lifecycle.multipart_part_min_bytes)


@pytest.fixture
async def started(api: Api, user: ApiUser) -> AsyncIterator[list[str]]:
    """The uploads a test starts, aborted after it (their parts then go to GC)."""
    uids: list[str] = []
    yield uids
    for uid in uids:
        await api.request("DELETE", f"/files/upload/multipart/{uid}", user)


async def start(api: Api, user: ApiUser, started: list[str], size: int | None = None) -> str:
    doc: dict[str, Any] = {"file_name": f"m-{os.urandom(4).hex()}.bin"}
    if size is not None:
        doc["file_size"] = size
    status, up, _ = await api.request("POST", "/files/upload/multipart/init", user, json=doc)
    assert status == 201, up
    started.append(str(up["upload_id"]))
    return str(up["upload_id"])


async def send(api: Api, user: ApiUser, uid: str, sizes: dict[int, int]) -> None:
    for number, size in sizes.items():
        status, body = await put_part(api, user, uid, number, os.urandom(size))
        assert status == 200, body


async def complete_error(api: Api, user: ApiUser, uid: str, code: str,
                         listed: list[int] | None = None) -> str:
    kw = {"json": {"parts": [{"part_number": n} for n in listed]}} if listed else {}
    status, body, _ = await api.request("POST", f"/files/upload/multipart/{uid}/complete",
                                        user, **kw)
    assert_error(status, body, 400, code)
    return str(body["error"]["message"])


async def test_trailing_missing_parts_are_named(api: Api, user: ApiUser,
                                                started: list[str]) -> None:
    # Evenly split 4 x 5 MiB, two sent: parts 3 and 4 are what is missing.
    uid = await start(api, user, started, 4 * PART)
    await send(api, user, uid, {1: PART, 2: PART})
    message = await complete_error(api, user, uid, "missing_parts")
    assert message.startswith("parts 3 and 4 are missing"), message
    assert f"{2 * PART} bytes of the {4 * PART} announced" in message
    await send(api, user, uid, {3: PART})
    message = await complete_error(api, user, uid, "missing_parts")
    assert message.startswith("part 4 is missing"), message
    # Uneven parts: which numbers are missing cannot be known, only where they start.
    uid = await start(api, user, started, 4 * PART)
    await send(api, user, uid, {1: PART + 1, 2: PART})
    message = await complete_error(api, user, uid, "missing_parts")
    assert message.startswith("the parts after part 2 are missing"), message
    # Listing the parts names the missing ones without an announced size.
    uid = await start(api, user, started)
    await send(api, user, uid, {1: PART})
    message = await complete_error(api, user, uid, "missing_parts", listed=[1, 2, 3])
    assert message == "parts 2 and 3 are missing", message


async def test_messages_agree_with_their_numbers(api: Api, user: ApiUser,
                                                 started: list[str]) -> None:
    uid = await start(api, user, started)
    await send(api, user, uid, {1: 10, 3: 10})
    assert await complete_error(api, user, uid, "missing_parts") == "part 2 is missing"
    await send(api, user, uid, {2: 10})
    message = await complete_error(api, user, uid, "part_too_small")
    assert message.startswith(f"parts 1 and 2 are smaller than the minimum of {PART} bytes")
    uid = await start(api, user, started, PART + 20)
    await send(api, user, uid, {1: 10, 2: PART + 10})
    message = await complete_error(api, user, uid, "part_too_small")
    assert message.startswith("part 1 is smaller than the minimum"), message
    uid = await start(api, user, started, 5)
    await send(api, user, uid, {1: 10})
    message = await complete_error(api, user, uid, "size_mismatch")
    assert message == "the part received holds 10 bytes, more than the 5 announced"
