"""Chunk-level uploads against the real cluster: sessions, missing, PUT, commit, proof of
ownership, the checks a commit makes, quota, versions and GC of sessions' chunks."""

from __future__ import annotations

import hashlib
import os
import uuid
from typing import Any

import asyncpg

from dfms.chunker import make_chunker_from
from dfms.config import chunker_params
from tests.integration.test_gc import gc_config, past_grace, states
from tests.support.api import Api, ApiUser
from tests.support.cluster import ClusterHandle
from tests.support.gc import gc_pass

KIB = 1024
MIB = 1024 * KIB


def cut(cluster: ClusterHandle, data: bytes) -> list[bytes]:
    """The chunks the server's chunker cuts ``data`` into (what a client must do)."""
    chunker = make_chunker_from(chunker_params(cluster.config.chunker))
    return [data[o:o + n] for o, n in chunker.cut(data)]


def manifest(chunks: list[bytes]) -> list[dict[str, Any]]:
    return [{"sha256": hashlib.sha256(c).hexdigest(), "size": len(c)} for c in chunks]


def commit_body(name: str, data: bytes, chunks: list[bytes], session: str | None
                ) -> dict[str, Any]:
    return {"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
            "chunks": manifest(chunks), "upload_session": session}


def assert_error(status: int, body: Any, want_status: int, code: str) -> None:
    assert status == want_status, body
    assert body["error"]["code"] == code, body


async def open_session(api: Api, user: ApiUser) -> str:
    status, body, _ = await api.request("POST", "/chunks/sessions", user)
    assert status == 201, body
    return str(body["upload_session"])


async def missing(api: Api, user: ApiUser, chunks: list[bytes]) -> list[str]:
    status, body, _ = await api.request("POST", "/chunks/missing", user, json={
        "chunks": [hashlib.sha256(c).hexdigest() for c in chunks]})
    assert status == 200, body
    return list(body["missing"])


async def put(api: Api, user: ApiUser, session: str, chunk: bytes,
              digest: str | None = None) -> tuple[int, Any]:
    digest = digest or hashlib.sha256(chunk).hexdigest()
    status, body, _ = await api.request(
        "PUT", f"/chunks/{digest}?upload_session={session}", user, data=chunk,
        headers={"Content-Type": "application/octet-stream"})
    return status, body


async def send_missing(api: Api, user: ApiUser, session: str, chunks: list[bytes]) -> int:
    """Send the chunks ``missing`` names; how many were sent."""
    wanted = set(await missing(api, user, chunks))
    sent = 0
    for chunk in chunks:
        digest = hashlib.sha256(chunk).hexdigest()
        if digest in wanted:
            status, body = await put(api, user, session, chunk)
            assert status == 200, body
            wanted.discard(digest)
            sent += 1
    return sent


async def commit(api: Api, user: ApiUser, body: dict[str, Any],
                 **headers: str) -> tuple[int, Any]:
    status, answer, _ = await api.request("POST", "/files/commit", user, json=body,
                                          headers=headers)
    return status, answer


async def download(api: Api, user: ApiUser, file_id: str) -> bytes:
    status, body, _ = await api.request("GET", f"/files/{file_id}/download", user)
    assert status == 200, body
    assert isinstance(body, bytes)
    return body


async def chunk_rows(db: asyncpg.Connection, chunks: list[bytes]) -> dict[bytes, Any]:
    digests = [hashlib.sha256(c).digest() for c in chunks]
    rows = await db.fetch("SELECT sha256, created_at FROM chunks WHERE sha256 = ANY($1)",
                          digests)
    return {bytes(r["sha256"]): r["created_at"] for r in rows}


# --- round trips --------------------------------------------------------------------------

async def test_chunker_is_advertised(api: Api, user: ApiUser, cluster: ClusterHandle) -> None:
    status, body, _ = await api.request("GET", "/chunker", user)
    assert status == 200, body
    ch = cluster.config.chunker
    assert (body["algorithm"], body["min_size_bytes"], body["avg_size_bytes"],
            body["max_size_bytes"], body["digest"]) == (
        ch.algorithm, ch.min_size_bytes, ch.avg_size_bytes, ch.max_size_bytes, "sha256")


async def test_missing_put_commit_round_trip_then_nothing_to_send(
        api: Api, user: ApiUser, cluster: ClusterHandle) -> None:
    data = os.urandom(5 * MIB + 12345)
    chunks = cut(cluster, data)
    assert len(chunks) > 1
    session = await open_session(api, user)
    assert await send_missing(api, user, session, chunks) == len(set(chunks))
    status, file = await commit(api, user, commit_body("round.bin", data, chunks, session))
    assert status == 201, file
    assert (file["size"], file["sha256"], file["version"], file["unchanged"]) == (
        len(data), hashlib.sha256(data).hexdigest(), 1, False)
    assert file["chunk_count"] == len(chunks)
    assert await download(api, user, file["id"]) == data

    # The same content again, under another name, in a new session: nothing to send.
    assert await missing(api, user, chunks) == []
    other = await open_session(api, user)
    status, copy = await commit(api, user, commit_body("copy.bin", data, chunks, other))
    assert status == 201, copy
    assert copy["id"] != file["id"]
    assert await download(api, user, copy["id"]) == data


async def test_empty_file_commits_without_chunks(api: Api, user: ApiUser) -> None:
    status, file = await commit(api, user, {"name": "empty", "size": 0,
                                            "sha256": hashlib.sha256(b"").hexdigest(),
                                            "chunks": []})
    assert status == 201, file
    assert await download(api, user, file["id"]) == b""


async def test_a_commit_to_an_existing_name_is_a_new_version(
        api: Api, user: ApiUser, cluster: ClusterHandle) -> None:
    first, second = os.urandom(300 * KIB), os.urandom(400 * KIB)
    session = await open_session(api, user)
    one, two = cut(cluster, first), cut(cluster, second)
    await send_missing(api, user, session, one + two)
    status, v1 = await commit(api, user, commit_body("doc.bin", first, one, session))
    assert status == 201, v1
    status, v2 = await commit(api, user, commit_body("doc.bin", second, two, session),
                              **{"If-Match": f'"{v1["sha256"]}"'})
    assert status == 201, v2
    assert (v2["id"], v2["version"]) == (v1["id"], 2)
    assert await download(api, user, v2["id"]) == second
    # A stale If-Match is refused; the same content again is unchanged.
    status, body = await commit(api, user, commit_body("doc.bin", first, one, session),
                                **{"If-Match": f'"{v1["sha256"]}"'})
    assert_error(status, body, 412, "precondition_failed")
    status, same = await commit(api, user, commit_body("doc.bin", second, two, session))
    assert status == 200 and same["unchanged"] and same["version"] == 2, same


# --- proof of ownership -------------------------------------------------------------------

async def test_another_users_hashes_grant_nothing(
        api: Api, user: ApiUser, cluster: ClusterHandle, db: asyncpg.Connection) -> None:
    data = os.urandom(2 * MIB + 777)
    chunks = cut(cluster, data)
    session_a = await open_session(api, user)
    await send_missing(api, user, session_a, chunks)
    status, file_a = await commit(api, user, commit_body("secret.bin", data, chunks,
                                                         session_a))
    assert status == 201, file_a
    before = await chunk_rows(db, chunks)

    intruder = await api.register()
    hashes = [hashlib.sha256(c).hexdigest() for c in chunks]
    assert await missing(api, intruder, chunks) == list(dict.fromkeys(hashes))
    session_b = await open_session(api, intruder)
    status, body = await commit(api, intruder, commit_body("mine.bin", data, chunks,
                                                           session_b))
    assert_error(status, body, 409, "missing_chunks")
    assert hashes[0] in body["error"]["message"]
    status, listing, _ = await api.request("GET", "/files", intruder)
    assert status == 200 and listing["items"] == [], listing

    # Sending the bytes proves possession: stored nothing new, then the commit works.
    assert await send_missing(api, intruder, session_b, chunks) == len(set(chunks))
    assert await chunk_rows(db, chunks) == before  # the same rows: nothing new stored
    status, file_b = await commit(api, intruder, commit_body("mine.bin", data, chunks,
                                                             session_b))
    assert status == 201, file_b
    assert await download(api, intruder, file_b["id"]) == data


async def test_a_commit_naming_chunks_never_sent_is_409_naming_them(
        api: Api, user: ApiUser, cluster: ClusterHandle) -> None:
    data = os.urandom(5 * MIB)  # over the 4 MiB max: at least two chunks
    chunks = cut(cluster, data)
    assert len(chunks) > 1
    session = await open_session(api, user)
    status, body = await put(api, user, session, chunks[0])
    assert status == 200, body
    status, body = await commit(api, user, commit_body("partial.bin", data, chunks, session))
    assert_error(status, body, 409, "missing_chunks")
    for chunk in chunks[1:]:
        assert hashlib.sha256(chunk).hexdigest() in body["error"]["message"]
    assert hashlib.sha256(chunks[0]).hexdigest() not in body["error"]["message"]


# --- what a chunk PUT refuses -------------------------------------------------------------

async def test_a_wrong_hash_is_400_digest_mismatch_and_stores_nothing(
        api: Api, user: ApiUser, db: asyncpg.Connection) -> None:
    session = await open_session(api, user)
    chunk = os.urandom(10 * KIB)
    claimed = hashlib.sha256(b"something else " + chunk).hexdigest()
    status, body = await put(api, user, session, chunk, digest=claimed)
    assert_error(status, body, 400, "digest_mismatch")
    digests = [bytes.fromhex(claimed), hashlib.sha256(chunk).digest()]
    assert await db.fetchval("SELECT count(*) FROM chunks WHERE sha256 = ANY($1)",
                             digests) == 0


async def test_a_chunk_over_the_size_bound_is_refused(
        api: Api, user: ApiUser, cluster: ClusterHandle, db: asyncpg.Connection) -> None:
    session = await open_session(api, user)
    chunk = os.urandom(cluster.config.chunker.max_size_bytes + 1)
    status, body = await put(api, user, session, chunk)
    assert_error(status, body, 413, "chunk_too_large")
    assert await db.fetchval("SELECT count(*) FROM chunks WHERE sha256 = $1",
                             hashlib.sha256(chunk).digest()) == 0


async def test_put_needs_an_open_session_of_the_caller(
        api: Api, user: ApiUser, db: asyncpg.Connection) -> None:
    chunk = os.urandom(KIB)
    status, body = await put(api, user, str(uuid.uuid4()), chunk)
    assert_error(status, body, 404, "not_found")
    other = await api.register()
    status, body = await put(api, user, await open_session(api, other), chunk)
    assert_error(status, body, 404, "not_found")
    session = await open_session(api, user)
    await db.execute("UPDATE upload_sessions SET expires_at = now() - interval '1 second' "
                     "WHERE id = $1", uuid.UUID(session))
    status, body = await put(api, user, session, chunk)
    assert_error(status, body, 404, "not_found")


# --- what a commit refuses ----------------------------------------------------------------

async def test_sizes_that_do_not_add_up_or_a_wrong_sha256_are_refused(
        api: Api, user: ApiUser, cluster: ClusterHandle) -> None:
    data = os.urandom(5 * MIB)  # at least two chunks: one's size is moved to another
    chunks = cut(cluster, data)
    session = await open_session(api, user)
    await send_missing(api, user, session, chunks)
    body = commit_body("bad.bin", data, chunks, session)
    status, answer = await commit(api, user, {**body, "size": len(data) + 1})
    assert_error(status, answer, 400, "size_mismatch")
    lying = manifest(chunks)
    lying[0]["size"] += 1
    lying[-1]["size"] -= 1
    status, answer = await commit(api, user, {**body, "chunks": lying})
    assert_error(status, answer, 400, "chunk_size_mismatch")
    status, answer = await commit(api, user, {**body, "sha256": "ab" * 32})
    assert_error(status, answer, 422, "checksum_mismatch")
    status, listing, _ = await api.request("GET", "/files", user)
    assert listing["items"] == [], listing
    status, good = await commit(api, user, body)
    assert status == 201, good


async def test_quota_exceeded_leaves_nothing_visible(
        api: Api, user: ApiUser, cluster: ClusterHandle, db: asyncpg.Connection) -> None:
    await db.execute("UPDATE users SET quota_bytes = $2 WHERE id = $1", uuid.UUID(user.id),
                     MIB)
    data = os.urandom(600 * KIB)
    chunks = cut(cluster, data)
    session = await open_session(api, user)
    await send_missing(api, user, session, chunks)
    status, first = await commit(api, user, commit_body("a.bin", data, chunks, session))
    assert status == 201, first
    # A copy needs no chunk sent, but its 600 KiB do not fit in the 424 KiB left.
    status, body = await commit(api, user, commit_body("b.bin", data, chunks, session))
    assert_error(status, body, 507, "quota_exceeded")
    # Nor does sending new chunks past the quota.
    more = os.urandom(500 * KIB)
    status, body = await put(api, user, session, more)
    assert_error(status, body, 507, "quota_exceeded")
    status, listing, _ = await api.request("GET", "/files", user)
    assert [f["name"] for f in listing["items"]] == ["a.bin"], listing
    status, usage, _ = await api.request("GET", "/storage/usage", user)
    assert usage["used_bytes"] == len(data), usage


# --- GC -----------------------------------------------------------------------------------

async def test_gc_keeps_an_open_sessions_chunks_and_reclaims_them_after_expiry(
        api: Api, user: ApiUser, cluster: ClusterHandle, db: asyncpg.Connection) -> None:
    chunk = os.urandom(150 * KIB)
    digest = hashlib.sha256(chunk).digest()
    session = await open_session(api, user)
    status, body = await put(api, user, session, chunk)
    assert status == 200, body
    cfg = gc_config(cluster)

    await past_grace()
    await gc_pass(cfg)
    await past_grace()
    await gc_pass(cfg)  # twice past the grace: an unreferenced chunk would be swept now
    assert await states(db, [digest]) == {digest: "live"}
    assert await missing(api, user, [chunk]) == []

    await db.execute("UPDATE upload_sessions SET expires_at = now() - interval '1 second' "
                     "WHERE id = $1", uuid.UUID(session))
    assert await missing(api, user, [chunk]) == [digest.hex()]  # expired: not yours now
    counters = await gc_pass(cfg)  # the session goes, then its chunk is condemned
    assert counters["upload_sessions_expired"] >= 1
    assert await states(db, [digest]) == {digest: "condemned"}
    await past_grace()
    await gc_pass(cfg)
    assert await states(db, [digest]) == {}
    status, body = await commit(api, user, {"name": "late.bin", "size": len(chunk),
                                            "sha256": digest.hex(),
                                            "chunks": manifest([chunk])})
    assert_error(status, body, 409, "missing_chunks")


async def test_a_committed_session_chunk_leaves_the_session(
        api: Api, user: ApiUser, cluster: ClusterHandle, db: asyncpg.Connection) -> None:
    data = os.urandom(200 * KIB)
    chunks = cut(cluster, data)
    session = await open_session(api, user)
    await send_missing(api, user, session, chunks)
    status, usage, _ = await api.request("GET", "/storage/usage", user)
    assert usage["used_bytes"] == len(data)  # sent, not committed: counted
    status, file = await commit(api, user, commit_body("kept.bin", data, chunks, session))
    assert status == 201, file
    assert await db.fetchval("SELECT count(*) FROM upload_session_chunks WHERE session_id = $1",
                             uuid.UUID(session)) == 0
    status, usage, _ = await api.request("GET", "/storage/usage", user)
    assert usage["used_bytes"] == len(data)  # counted once, as the file
    assert (await api.request("DELETE", f"/chunks/sessions/{session}", user))[0] == 204
    assert (await api.request("DELETE", f"/chunks/sessions/{session}", user))[0] == 404
    assert await download(api, user, file["id"]) == data
