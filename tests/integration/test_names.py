"""File and folder names through every path that takes one: not-UTF-8 bytes are named as
such, deceptive characters are refused by code point, spaces are trimmed at both ends."""

from __future__ import annotations

from typing import Any

from tests.integration.test_files import assert_error
from tests.support.api import Api, ApiUser

JSON = {"Content-Type": "application/json"}


def assert_invalid_name(status: int, body: Any, *needles: str) -> None:
    assert_error(status, body, 400, "invalid_name")
    message = body["error"]["message"]
    for needle in needles:
        assert needle in message, message


async def form_upload(api: Api, user: ApiUser, filename: bytes,
                      data: bytes = b"x") -> tuple[int, Any]:
    """A form built by hand, so the filename's bytes go out exactly as given."""
    body = (b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"" + filename
            + b"\"\r\nContent-Type: application/octet-stream\r\n\r\n" + data + b"\r\n--b--\r\n")
    status, answer, _ = await api.request(
        "POST", "/files/upload", user, data=body,
        headers={"Content-Type": "multipart/form-data; boundary=b"})
    return status, answer


async def post_json(api: Api, user: ApiUser, method: str, path: str,
                    raw: bytes) -> tuple[int, Any]:
    status, body, _ = await api.request(method, path, user, data=raw, headers=JSON)
    return status, body


async def test_names_that_are_not_utf8_say_so_on_every_path(api: Api, user: ApiUser) -> None:
    utf8 = ("not valid UTF-8", "percent-encoded")
    status, body = await api.upload(user, "caf%E9.txt", b"x")  # Latin-1 é, percent-encoded
    assert_invalid_name(status, body, *utf8, "0xE9")
    status, body = await form_upload(api, user, b"caf\xe9.txt")  # a raw Latin-1 byte
    assert_invalid_name(status, body, *utf8, "0xE9")
    status, body = await form_upload(api, user, b"caf%E9.txt")
    assert_invalid_name(status, body, *utf8)
    # JSON: the escape os.fsdecode makes of byte 0xFF, and the raw byte itself.
    status, body = await post_json(api, user, "POST", "/files/upload/multipart/init",
                                   b'{"file_name": "\\udcff.bin"}')
    assert_invalid_name(status, body, *utf8, "0xFF")
    status, body = await post_json(api, user, "POST", "/folders", b'{"name": "d\xff"}')
    assert_invalid_name(status, body, *utf8, "0xFF")
    _, f = await api.upload(user, "ok.txt", b"x")
    status, body = await post_json(api, user, "PATCH", f"/files/{f['id']}",
                                   b'{"name": "\\udce9t\\u00e9.txt"}')
    assert_invalid_name(status, body, *utf8, "0xE9")
    # Outside a name, invalid Unicode is still just invalid JSON.
    status, body = await post_json(api, user, "POST", "/folders",
                                   b'{"name": "ok", "parent_id": "\\ud800"}')
    assert_error(status, body, 400, "invalid_json")


DECEPTIVE = [("rtl\u202etxt.exe", "U+202E"), ("\u2066iso\u2069.txt", "U+2066"),
             ("zero\u200bwidth.txt", "U+200B"), ("\ufeffbom.txt", "U+FEFF"),
             ("rep\u200dort.pdf", "U+200D"), ("lrm\u200e.txt", "U+200E")]


async def test_deceptive_names_are_refused_on_every_path(api: Api, user: ApiUser) -> None:
    from urllib.parse import quote

    _, f = await api.upload(user, "plain.txt", b"x")
    _, folder, _ = await api.request("POST", "/folders", user, json={"name": "plain"})
    for name, char in DECEPTIVE:
        attempts = [
            await api.upload(user, quote(name, safe=""), b"x"),
            await form_upload(api, user, quote(name, safe="").encode()),
            await form_upload(api, user, name.encode()),  # raw UTF-8, as browsers send
            (await api.request("POST", "/files/upload/multipart/init", user,
                               json={"file_name": name}))[:2],
            (await api.request("POST", "/folders", user, json={"name": name}))[:2],
            (await api.request("PATCH", f"/files/{f['id']}", user,
                               json={"name": name, "folder_id": folder["id"]}))[:2],
            (await api.request("PATCH", f"/folders/{folder['id']}", user,
                               json={"name": name}))[:2],
        ]
        for status, body in attempts:
            assert_invalid_name(status, body, char)
    status, listing, _ = await api.request("GET", "/folders/root/contents", user)
    assert [i["name"] for i in listing["files"]] == ["plain.txt"]
    assert [i["name"] for i in listing["folders"]] == ["plain"]


async def test_emoji_sequences_keep_their_joiners(api: Api, user: ApiUser) -> None:
    name = "family \U0001f468\u200d\U0001f469\u200d\U0001f467.txt"
    status, body, _ = await api.request("POST", "/files/upload/multipart/init", user,
                                        json={"file_name": name})
    assert status == 201 and body["file_name"] == name, body


async def test_spaces_are_trimmed_at_both_ends_everywhere(api: Api, user: ApiUser) -> None:
    status, body = await api.upload(user, "trail.txt%20", b"one")
    assert status == 201 and body["name"] == "trail.txt", body
    status, again = await api.upload(user, "trail.txt", b"two")  # the same name
    assert status == 201 and again["id"] == body["id"] and again["version"] == 2
    status, body = await form_upload(api, user, b" lead.txt ")
    assert status == 201 and body["name"] == "lead.txt", body
    for raw in ("%20%20", "%20", "%C2%A0"):  # only spaces (U+00A0 too) is empty
        status, body = await api.upload(user, raw, b"x")
        assert_invalid_name(status, body, "empty")
    status, folder, _ = await api.request("POST", "/folders", user, json={"name": "  docs  "})
    assert status == 201 and folder["name"] == "docs", folder
    status, renamed, _ = await api.request("PATCH", f"/folders/{folder['id']}", user,
                                           json={"name": " papers "})
    assert status == 200 and renamed["name"] == "papers"
    _, f = await api.upload(user, "f.txt", b"x")
    status, moved, _ = await api.request("PATCH", f"/files/{f['id']}", user,
                                         json={"name": "g.txt ", "folder_id": folder["id"]})
    assert status == 200 and moved["name"] == "g.txt"
    status, up, _ = await api.request("POST", "/files/upload/multipart/init", user,
                                      json={"file_name": "\u3000big.bin "})
    assert status == 201 and up["file_name"] == "big.bin"
    status, body, _ = await api.request("PATCH", f"/files/{f['id']}", user,
                                        json={"name": "   "})
    assert_invalid_name(status, body, "empty")
