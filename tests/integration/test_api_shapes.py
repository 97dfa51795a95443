"""One shape for lists and items, and one rule for what a request may carry, against the
real gateway: lists answer ``items`` (paginated ones also ``next_cursor``, with cursor
paging), trash restore answers the item as GET does, unknown body fields and bad
boolean parameters are refused, and an undeclared method answers 405 with ``Allow``."""

from __future__ import annotations

import pytest

from tests.integration.test_files import assert_error
from tests.support.api import Api, ApiUser

# --- lists ---------------------------------------------------------------------------------

async def test_the_versions_list_answers_items_and_keeps_versions(
        api: Api, user: ApiUser) -> None:
    _, first = await api.upload(user, "v.txt", b"one")
    await api.upload(user, "v.txt", b"two, longer")
    status, listing, _ = await api.request("GET", f"/files/{first['id']}/versions", user)
    assert status == 200
    assert [(v["version"], v["current"]) for v in listing["items"]] == [(2, True), (1, False)]
    assert listing["versions"] == listing["items"]  # deprecated, kept for its readers


async def _trash(api: Api, user: ApiUser, names: list[str]) -> list[str]:
    """Upload and delete a file per name, one after the other; their ids, newest first."""
    ids = []
    for name in names:
        _, f = await api.upload(user, name, name.encode())
        assert (await api.request("DELETE", f"/files/{f['id']}", user))[0] == 204
        ids.append(f["id"])
    return ids[::-1]


async def test_the_trash_pages_by_cursor_without_skipping_or_repeating(
        api: Api, user: ApiUser) -> None:
    newest_first = await _trash(api, user, [f"t{i}.txt" for i in range(5)])
    status, page, _ = await api.request("GET", "/trash?per_page=2", user)
    assert status == 200 and page["page"] == 1 and page["total"] == 5
    seen = [i["id"] for i in page["items"]]
    # Trashing one more between pages shifts an offset listing, not a cursor.
    late = await _trash(api, user, ["late.txt"])
    while page["next_cursor"]:
        status, page, _ = await api.request(
            "GET", f"/trash?per_page=2&cursor={page['next_cursor']}", user)
        assert status == 200 and page["page"] is None and page["per_page"] == 2, page
        seen += [i["id"] for i in page["items"]]
    assert seen == newest_first
    _, everything, _ = await api.request("GET", "/trash?per_page=10", user)
    assert [i["id"] for i in everything["items"]] == late + newest_first
    assert everything["next_cursor"] is None and everything["total"] == 6


async def test_a_cursor_of_another_listing_or_a_forged_one_is_refused(
        api: Api, user: ApiUser) -> None:
    for name in ("a.txt", "b.txt"):
        await api.upload(user, name, b"x")
    _, files, _ = await api.request("GET", "/files?per_page=1", user)
    for cursor in (files["next_cursor"], "bm90IGEgY3Vyc29y"):
        status, body, _ = await api.request("GET", f"/trash?cursor={cursor}", user)
        assert_error(status, body, 400, "invalid_cursor")


# --- items ---------------------------------------------------------------------------------

async def test_trash_restore_answers_the_file_as_get_does(api: Api, user: ApiUser) -> None:
    _, f = await api.upload(user, "back.txt", b"back again")
    assert (await api.request("DELETE", f"/files/{f['id']}", user))[0] == 204
    status, restored, _ = await api.request("POST", f"/trash/{f['id']}/restore", user)
    assert status == 200
    _, shown, _ = await api.request("GET", f"/files/{f['id']}", user)
    assert restored == shown


async def test_trash_restore_answers_the_folder_as_listings_show_it(
        api: Api, user: ApiUser) -> None:
    _, parent = (await api.request("POST", "/folders", user, json={"name": "outer"}))[:2]
    _, inner = (await api.request("POST", "/folders", user,
                                  json={"name": "inner", "parent_id": parent["id"]}))[:2]
    assert (await api.request("DELETE", f"/folders/{inner['id']}", user))[0] == 204
    status, restored, _ = await api.request("POST", f"/trash/{inner['id']}/restore", user)
    assert status == 200
    _, contents, _ = await api.request("GET", f"/folders/{parent['id']}/contents", user)
    [listed] = contents["folders"]
    # The folder as listed, plus the deprecated `folder_id` restore always answered.
    assert restored == {**listed, "folder_id": parent["id"]}
    assert restored["type"] == "folder" and restored["parent_id"] == parent["id"]


# --- what a request may carry -------------------------------------------------------------

@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/folders", {"name": "typo", "parent": "root"}),
    ("POST", "/auth/login", {"email": "a@example.com", "password": "x", "remember": True}),
    ("POST", "/files/upload/multipart/init", {"file_name": "a.bin", "size": 5}),
])
async def test_an_unknown_body_field_is_refused_not_ignored(
        api: Api, user: ApiUser, method: str, path: str, body: dict[str, object]) -> None:
    status, answer, _ = await api.request(method, path, user, json=body)
    assert_error(status, answer, 400, "validation_error")
    assert "unknown field" in answer["error"]["message"]


async def test_a_misspelt_share_limit_makes_no_unlimited_link(api: Api, user: ApiUser) -> None:
    _, f = await api.upload(user, "shared.txt", b"once only")
    status, body, _ = await api.request("POST", f"/files/{f['id']}/share", user,
                                        json={"max_download": 1})
    assert_error(status, body, 400, "validation_error")
    assert "'max_download'" in body["error"]["message"]
    _, shares, _ = await api.request("GET", f"/shares?file_id={f['id']}", user)
    assert shares["items"] == []


async def test_a_boolean_parameter_takes_only_booleans(api: Api, user: ApiUser) -> None:
    _, folder = (await api.request("POST", "/folders", user, json={"name": "b"}))[:2]
    status, body, _ = await api.request("DELETE", f"/folders/{folder['id']}?recursive=null",
                                        user)
    assert_error(status, body, 400, "validation_error")
    status, body, _ = await api.request("POST", f"/trash/{folder['id']}/restore?rename=perhaps",
                                        user)
    assert_error(status, body, 400, "validation_error")
    assert (await api.request("DELETE", f"/folders/{folder['id']}?recursive=YES", user))[0] \
        == 204


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("GET", "/files/upload", {"POST"}),
    ("OPTIONS", "/files/upload/multipart/init", {"POST"}),
    ("PUT", "/trash", {"GET", "HEAD", "DELETE"}),
    ("POST", "/files/00000000-0000-0000-0000-000000000000",
     {"GET", "HEAD", "PATCH", "DELETE"}),
])
async def test_an_undeclared_method_answers_405_with_allow(
        api: Api, user: ApiUser, method: str, path: str, allow: set[str]) -> None:
    status, body, headers = await api.request(method, path, user)
    assert_error(status, body, 405, "method_not_allowed")
    assert set(headers["Allow"].split(",")) == allow
    assert method in body["error"]["message"]

