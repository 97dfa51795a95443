"""Search through the public API against the real cluster.

Every test works with fresh users, so their files are all a search can see.
"""

from __future__ import annotations

import random
import uuid
from typing import Any
from urllib.parse import quote

import asyncpg

from tests.integration.test_files import assert_error
from tests.support.api import Api, ApiUser
from tests.support.cluster import ClusterHandle


async def upload(api: Api, user: ApiUser, name: str, data: bytes = b"x",
                 folder_id: str | None = None) -> dict[str, Any]:
    status, body = await api.upload(user, quote(name, safe=""), data, folder_id=folder_id)
    assert status == 201, body
    return body


async def mkdir(api: Api, user: ApiUser, name: str, parent: str | None = None) -> dict:
    status, body, _ = await api.request("POST", "/folders", user,
                                        json={"name": name, "parent_id": parent})
    assert status == 201, body
    return body


async def search(api: Api, user: ApiUser | None, q: str | None = None,
                 **params: Any) -> tuple[int, Any]:
    query = {k: str(v) for k, v in params.items()}
    if q is not None:
        query["q"] = q
    status, body, _ = await api.request("GET", "/search", user, params=query)
    return status, body


async def found(api: Api, user: ApiUser, q: str, **params: Any) -> list[str]:
    """The names a search returns, in order."""
    status, body = await search(api, user, q, **params)
    assert status == 200, body
    return [item["name"] for item in body["items"]]


async def test_words_of_names_prefixes_typos_and_misses(api: Api, user: ApiUser) -> None:
    await upload(api, user, "quarterly_report-2024.pdf")
    await upload(api, user, "holiday photo.jpg")
    await upload(api, user, "notes.md")
    for q in ("report", "quarterly", "2024", "pdf", "quar", "REPORT", "Quarterly Report",
              "report 2024", "2024 quarterly", "report-2024", "quarterly_report",
              "reprot", "quartrly", "Quartrly", "quartrly reprot", "quar rep", "rep quar"):
        assert await found(api, user, q) == ["quarterly_report-2024.pdf"], q
    assert await found(api, user, "photo") == ["holiday photo.jpg"]
    assert await found(api, user, "hol") == ["holiday photo.jpg"]
    # Every word must match on its own: one good word does not carry an unrelated one.
    for q in ("giraffe", "zebra", "report-2025", "quarterly_report-2025", "xyz",
              "report zebra", "quarterly report budget"):
        assert await found(api, user, q) == [], q
    status, body = await search(api, user, "giraffe")
    assert status == 200
    assert body == {"items": [], "total": 0, "page": 1, "per_page": body["per_page"]}


async def test_case_and_accents_do_not_matter(api: Api, user: ApiUser) -> None:
    await upload(api, user, "Café Menu.txt")
    await upload(api, user, "RÉSUMÉ final.docx")
    for q in ("cafe", "CAFÉ", "café menu", "menu"):
        assert await found(api, user, q) == ["Café Menu.txt"], q
    for q in ("resume", "résumé", "Resume Final"):
        assert await found(api, user, q) == ["RÉSUMÉ final.docx"], q


async def test_wildcards_and_punctuation_are_literal(api: Api, user: ApiUser) -> None:
    for name in ("100%.txt", "100.txt", "1000.txt", "100 percent.txt", "abc.txt", "a_c.txt",
                 "axc.txt"):
        await upload(api, user, name)
    assert await found(api, user, "100%") == ["100%.txt"]
    assert await found(api, user, "%") == ["100%.txt"]
    assert await found(api, user, "a_c") == ["a_c.txt"]
    assert await found(api, user, "_") == ["a_c.txt"]
    assert await found(api, user, "a%c") == []
    assert await found(api, user, "\\") == []  # LIKE's escape character is literal too
    assert await found(api, user, "0\\%") == []
    assert sorted(await found(api, user, "100")) == [
        "100 percent.txt", "100%.txt", "100.txt", "1000.txt"]


async def test_query_syntax_never_breaks_the_search(api: Api, user: ApiUser) -> None:
    await upload(api, user, "it's a (test) & more.txt")
    hostile = ["'", "''", "\\", "\\'", ":*", "a:*", "&", "|", "!", "!!", "<->", "<2>", "(",
               ")", "a & b | !c", "' OR 1=1 --", "$1", "%%", "\\%", "ŉ", "日本語", "ﬁle",
               "\u200b", "😀", "a" * 200, "é" * 200, "'a' <-> 'b':*", "NULL", "-",
               "\"quoted\"", "or", "and not"]
    rng = random.Random(20240501)
    alphabet = "ab1 '\"\\:*&|!()<->%_.,;éŉ日😀\u0301"
    hostile += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30)))
                for _ in range(40)]
    for q in hostile:
        status, body = await search(api, user, q)
        if q.strip():
            assert status == 200, (q, body)
            assert body["total"] == len(body["items"]), (q, body)
        else:
            assert_error(status, body, 400, "validation_error")
    assert await found(api, user, "it's") == ["it's a (test) & more.txt"]
    assert await found(api, user, "(test)") == ["it's a (test) & more.txt"]
    assert await found(api, user, "&") == ["it's a (test) & more.txt"]


async def test_only_the_callers_live_items(api: Api, user: ApiUser) -> None:
    other = await api.register()
    await upload(api, user, "secret plan.txt")
    await upload(api, other, "secret other.txt")
    await mkdir(api, other, "secret folder")
    trashed = await upload(api, user, "secret trash.txt")
    status, _, _ = await api.request("DELETE", f"/files/{trashed['id']}", user)
    assert status == 204
    gone = await mkdir(api, user, "secret box")
    await upload(api, user, "secret inside.txt", folder_id=gone["id"])
    await mkdir(api, user, "secret inner", gone["id"])
    status, _, _ = await api.request("DELETE", f"/folders/{gone['id']}?recursive=true", user)
    assert status == 204
    for q in ("secret", "secrte", "trash", "inside", "box", "inner", "other"):
        names = await found(api, user, q)
        assert names == (["secret plan.txt"] if q in ("secret", "secrte") else []), q
    assert sorted(await found(api, other, "secret")) == ["secret folder", "secret other.txt"]
    status, body = await search(api, user, "secret", folder_id=gone["id"])
    assert_error(status, body, 404, "not_found")  # a trashed folder is not searchable
    folder = await mkdir(api, other, "private")
    status, body = await search(api, user, "secret", folder_id=folder["id"])
    assert_error(status, body, 404, "not_found")  # nor is another user's


async def test_filters_type_size_folder_and_dates(api: Api, user: ApiUser,
                                                  cluster: ClusterHandle) -> None:
    docs = await mkdir(api, user, "docs")
    reports = await mkdir(api, user, "reports", docs["id"])
    y2024 = await mkdir(api, user, "2024", reports["id"])
    plans = await mkdir(api, user, "plans", docs["id"])
    a = await upload(api, user, "plan a.txt", b"a" * 10)
    await upload(api, user, "plan b.txt", b"b" * 1000, folder_id=docs["id"])
    await upload(api, user, "plan c.txt", b"c" * 5000, folder_id=y2024["id"])
    everything = ["plan a.txt", "plan b.txt", "plan c.txt", "plans"]
    assert sorted(await found(api, user, "plan")) == everything
    assert sorted(await found(api, user, "plan", type="file")) == everything[:3]
    assert await found(api, user, "plan", type="folder") == ["plans"]
    assert sorted(await found(api, user, "plan", min_size=500)) == ["plan b.txt", "plan c.txt"]
    assert sorted(await found(api, user, "plan", max_size=1000)) == ["plan a.txt", "plan b.txt"]
    assert await found(api, user, "plan", min_size=1000, max_size=1000) == ["plan b.txt"]
    assert await found(api, user, "plan", min_size=10, max_size=10, type="file") == [
        "plan a.txt"]
    assert await found(api, user, "plan", min_size=5001) == []
    assert sorted(await found(api, user, "plan", folder_id=docs["id"])) == [
        "plan b.txt", "plan c.txt", "plans"]  # the subtree, at any depth
    assert await found(api, user, "plan", folder_id=reports["id"]) == ["plan c.txt"]
    assert await found(api, user, "plan", folder_id=plans["id"]) == []
    assert sorted(await found(api, user, "plan", folder_id="root")) == everything

    status, body = await search(api, user, "plan")
    paths = {item["name"]: item["path"] for item in body["items"]}
    assert paths == {"plan a.txt": "/", "plan b.txt": "/docs",
                     "plan c.txt": "/docs/reports/2024", "plans": "/docs"}
    by_name = {item["name"]: item for item in body["items"]}
    file_item, folder_item = by_name["plan c.txt"], by_name["plans"]
    assert file_item["type"] == "file" and file_item["size"] == 5000
    assert file_item["folder_id"] == y2024["id"] and len(file_item["sha256"]) == 64
    assert {"id", "mime_type", "version", "chunk_count", "created_at", "updated_at",
            "score"} <= set(file_item)
    assert folder_item["type"] == "folder" and folder_item["parent_id"] == docs["id"]
    assert isinstance(folder_item["score"], float)

    conn = await asyncpg.connect(cluster.postgres_dsn)
    try:
        await conn.execute("UPDATE files SET updated_at = '2020-06-01T12:00:00Z' WHERE id = $1",
                           uuid.UUID(a["id"]))
    finally:
        await conn.close()
    recent = ["plan b.txt", "plan c.txt", "plans"]
    assert sorted(await found(api, user, "plan", after="2021-01-01")) == recent
    assert await found(api, user, "plan", before="2021-01-01T00:00:00Z") == ["plan a.txt"]
    assert await found(api, user, "plan", after="2020-06-01T12:00:00Z",
                       before="2020-06-01T12:00:01Z") == ["plan a.txt"]  # [after, before)
    assert await found(api, user, "plan", after="2020-06-01T12:00:00.000001+00:00",
                       before="2021-01-01") == []
    assert await found(api, user, "plan", after="2020-06-01T14:00:00+02:00",
                       before="2020-06-01t14:00:01+02:00") == ["plan a.txt"]
    assert await found(api, user, "plan", after="2020-06-01t12:00:00z",
                       before="2020-06-01 12:00:01") == ["plan a.txt"]
    # A "+" that was not percent-encoded arrives as a space; it is read as the "+".
    status, got, _ = await api.request(
        "GET", "/search?q=plan&after=2020-06-01T14:00:00+02:00&before=2021-01-01", user)
    assert status == 200 and [i["name"] for i in got["items"]] == ["plan a.txt"]


async def test_folders_are_found_by_name(api: Api, user: ApiUser) -> None:
    reports = await mkdir(api, user, "Reports 2024")
    await mkdir(api, user, "old_reports", reports["id"])
    await upload(api, user, "summary.txt", folder_id=reports["id"])
    assert sorted(await found(api, user, "reports")) == ["Reports 2024", "old_reports"]
    typo = await found(api, user, "reprots", type="folder")
    assert sorted(typo) == ["Reports 2024", "old_reports"]
    status, body = await search(api, user, "old_reports")
    assert status == 200 and [(i["name"], i["path"]) for i in body["items"]] == [
        ("old_reports", "/Reports 2024")]


async def test_ranking_puts_the_exact_name_first(api: Api, user: ApiUser) -> None:
    names = ["annual report.docx", "quarterly_report-2024.pdf", "reports-old.txt",
             "report.pdf", "misreported.txt", "report"]
    for name in names:
        await upload(api, user, name)
    await upload(api, user, "unrelated.txt")
    status, body = await search(api, user, "report")
    assert status == 200 and body["total"] == len(names)
    got = [i["name"] for i in body["items"]]
    assert got[:3] == ["report", "report.pdf", "reports-old.txt"]
    assert sorted(got) == sorted(names)
    scores = [i["score"] for i in body["items"]]
    assert scores == sorted(scores, reverse=True) and scores[0] > scores[1] > scores[2]
    assert got[-1] == "misreported.txt"  # only a substring: last
    assert (await found(api, user, "Report.PDF"))[0] == "report.pdf"

    pages = []
    for page in (1, 2, 3):
        status, body = await search(api, user, "report", page=page, per_page=2)
        assert status == 200 and body["total"] == len(names)
        assert body["page"] == page and body["per_page"] == 2 and len(body["items"]) == 2
        pages += [i["name"] for i in body["items"]]
    assert pages == got
    status, body = await search(api, user, "report", page=4, per_page=2)
    assert status == 200 and body["items"] == [] and body["total"] == len(names)


async def test_errors(api: Api, user: ApiUser) -> None:
    status, body = await search(api, None, "report")
    assert_error(status, body, 401, "unauthorized")
    for q in (None, "", "   ", "\t", "x" * 201, "a\x00b", "bell\x07"):
        status, body = await search(api, user, q)
        assert_error(status, body, 400, "validation_error")
    assert (await search(api, user, "x" * 200))[0] == 200
    for params in ({"type": "files"}, {"after": "yesterday"}, {"before": "2024-13-01"},
                   {"after": "2024-05-01T25:00:00Z"}, {"after": "0001-01-01T00:00:00+05:00"},
                   {"before": "9999-12-31T23:59:59-05:00"}, {"min_size": "-1"},
                   {"max_size": "lots"}, {"min_size": 10, "max_size": 9},
                   {"after": "2024-02-01", "before": "2024-01-01"},
                   {"type": "folder", "min_size": 1}, {"page": 0},
                   {"per_page": 0}, {"per_page": 10**6}):
        status, body = await search(api, user, "report", **params)
        assert_error(status, body, 400, "validation_error")
    for folder_id in (str(uuid.uuid4()), "not-a-uuid"):
        status, body = await search(api, user, "report", folder_id=folder_id)
        assert_error(status, body, 404, "not_found")
