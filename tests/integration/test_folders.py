"""Folders through the public API against the real cluster."""

from __future__ import annotations

import uuid

from tests.integration.test_files import assert_error
from tests.support.api import Api, ApiUser


async def make(api: Api, user: ApiUser, name: str, parent: str | None = None) -> dict:
    status, body, _ = await api.request("POST", "/folders", user,
                                        json={"name": name, "parent_id": parent})
    assert status == 201, body
    return body


async def test_create_list_and_names(api: Api, user: ApiUser) -> None:
    docs = await make(api, user, "docs")
    assert docs["parent_id"] is None and docs["type"] == "folder"
    sub = await make(api, user, "cafe\u0301", docs["id"])
    assert sub["name"] == "caf\u00e9"  # NFC
    status, body, _ = await api.request("POST", "/folders", user,
                                        json={"name": "café", "parent_id": docs["id"]})
    assert_error(status, body, 409, "name_taken")
    await api.upload(user, "readme.txt", b"hi", folder_id=docs["id"])
    status, body, _ = await api.request("POST", "/folders", user,
                                        json={"name": "readme.txt", "parent_id": docs["id"]})
    assert_error(status, body, 409, "name_taken")  # files and folders share names
    for bad in ("", ".", "..", "a/b", "bell\x07", "x" * 256):
        status, body, _ = await api.request("POST", "/folders", user, json={"name": bad})
        assert_error(status, body, 400, "invalid_name")
    status, body, _ = await api.request("POST", "/folders", user, json={})
    assert_error(status, body, 400, "validation_error")
    status, body, _ = await api.request("POST", "/folders", user, data=b"{not json",
                                        headers={"Content-Type": "application/json"})
    assert_error(status, body, 400, "invalid_json")
    status, root, _ = await api.request("GET", "/folders/root/contents", user)
    assert status == 200 and root["folder"] is None
    assert [f["name"] for f in root["folders"]] == ["docs"]
    status, inside, _ = await api.request("GET", f"/folders/{docs['id']}/contents", user)
    assert [f["name"] for f in inside["folders"]] == ["café"]
    assert [f["name"] for f in inside["files"]] == ["readme.txt"]


async def test_move_rename_and_cycles(api: Api, user: ApiUser) -> None:
    a = await make(api, user, "a")
    b = await make(api, user, "b", a["id"])
    c = await make(api, user, "c", b["id"])
    for target in (a["id"], b["id"], c["id"]):  # into itself or below itself
        status, body, _ = await api.request("PATCH", f"/folders/{a['id']}", user,
                                            json={"parent_id": target})
        assert_error(status, body, 409, "folder_cycle")
    status, moved, _ = await api.request("PATCH", f"/folders/{c['id']}", user,
                                         json={"parent_id": None, "name": "c2"})
    assert status == 200 and moved["parent_id"] is None and moved["name"] == "c2"
    status, moved, _ = await api.request("PATCH", f"/folders/{a['id']}", user,
                                         json={"parent_id": moved["id"]})
    assert status == 200 and moved["parent_id"] == c["id"]


async def test_delete_empty_nonempty_and_recursive(api: Api, user: ApiUser) -> None:
    top = await make(api, user, "top")
    mid = await make(api, user, "mid", top["id"])
    _, f1 = await api.upload(user, "one.txt", b"1", folder_id=top["id"])
    _, f2 = await api.upload(user, "two.txt", b"2", folder_id=mid["id"])
    status, body, _ = await api.request("DELETE", f"/folders/{top['id']}", user)
    assert_error(status, body, 409, "folder_not_empty")
    empty = await make(api, user, "empty")
    assert (await api.request("DELETE", f"/folders/{empty['id']}", user))[0] == 204
    status, _, _ = await api.request("DELETE", f"/folders/{top['id']}?recursive=true", user)
    assert status == 204
    for path in (f"/folders/{top['id']}/contents", f"/folders/{mid['id']}/contents",
                 f"/files/{f1['id']}", f"/files/{f2['id']}"):
        status, body, _ = await api.request("GET", path, user)
        assert_error(status, body, 404, "not_found")
    _, root, _ = await api.request("GET", "/folders/root/contents", user)
    assert root["folders"] == []
    await make(api, user, "top")  # the name is free again


async def test_another_users_folders_are_404(api: Api, user: ApiUser) -> None:
    mine = await make(api, user, "private")
    stranger = await api.register()
    for method, path, kw in (
            ("GET", f"/folders/{mine['id']}/contents", {}),
            ("PATCH", f"/folders/{mine['id']}", {"json": {"name": "x"}}),
            ("DELETE", f"/folders/{mine['id']}?recursive=true", {}),
            ("POST", "/folders", {"json": {"name": "x", "parent_id": mine["id"]}})):
        status, body, _ = await api.request(method, path, stranger, **kw)
        assert_error(status, body, 404, "not_found")
    status, body = await api.upload(stranger, "x.txt", b"x", folder_id=mine["id"])
    assert_error(status, body, 404, "not_found")
    status, body, _ = await api.request("GET", f"/folders/{uuid.uuid4()}/contents", user)
    assert_error(status, body, 404, "not_found")
    status, body, _ = await api.request("GET", "/folders/not-a-uuid/contents", user)
    assert_error(status, body, 404, "not_found")


async def test_lone_surrogates_in_json_are_400(api: Api, user: ApiUser) -> None:
    status, body, _ = await api.request("POST", "/folders", user, data=b'{"name": "\\ud800"}',
                                        headers={"Content-Type": "application/json"})
    # In a name, the validation says what is wrong with it (tests/integration/test_names.py).
    assert_error(status, body, 400, "invalid_name")
    assert "not valid UTF-8" in body["error"]["message"]
    status, body, _ = await api.request(
        "POST", "/auth/login", None, data=b'{"email": "a@b.co", "password": "\\udfff"}',
        headers={"Content-Type": "application/json"})
    assert_error(status, body, 400, "invalid_json")
