"""GET /api/v1/events against the real cluster: an upload's event within 2 s of its
commit, resume from Last-Event-ID without gaps (also on another gateway that must read
Kafka again), one user's events never on another's stream, the per-user cap, the
errors, heartbeats, and an admin who sees a killed node go down and come back.

Run with -s for the delivery figures.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestServer

from dfms.config import Config, load_config
from dfms.events.topics import (
    FILE_DELETED,
    FILE_MOVED,
    FILE_RESTORED,
    FILE_UPLOADED,
    FOLDER_CREATED,
    FOLDER_DELETED,
    FOLDER_MOVED,
    NODE_HEALTH_CHANGED,
    QUOTA_WARNING,
    SHARE_USED,
    UPLOAD_FAILED,
)
from dfms.gateway import app as gateway_app
from dfms.gateway.notifications import parse_cursor
from dfms.healthmon.service import HealthMonitor
from dfms.metadata import multipart as mp
from tests.integration.test_healthmon import (
    MONITOR_PROCESSES,
    VICTIM,
    control_processes,
    passes,
    wait_all_healthy,
)
from tests.support.api import Api, ApiUser
from tests.support.cluster import ClusterHandle
from tests.support.probe import make_admin, wait_node_answers_probes

pytestmark = pytest.mark.cluster

DELIVERY_LIMIT_S = 2.0
NO_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_read=None, sock_connect=10)


@dataclass
class Message:
    fields: dict[str, str]
    comments: list[str]
    at: float = field(default_factory=time.monotonic)

    @property
    def type(self) -> str | None:
        return self.fields.get("event")

    @property
    def data(self) -> dict[str, Any]:
        value = json.loads(self.fields["data"])
        assert isinstance(value, dict)
        return value


class Stream:
    """An open SSE response, read message by message."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.last_id: str | None = None
        self.events: list[Message] = []

    async def next(self, timeout_s: float) -> Message:
        fields: dict[str, str] = {}
        comments: list[str] = []
        async with asyncio.timeout(timeout_s):
            while True:
                raw = await self.response.content.readline()
                assert raw, "the server ended the stream"
                line = raw.decode().rstrip("\n")
                if line == "":
                    if fields or comments:
                        break
                    continue
                if line.startswith(":"):
                    comments.append(line[1:].strip())
                    continue
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
        message = Message(fields, comments)
        if "id" in fields:
            self.last_id = fields["id"]
        if message.type:
            self.events.append(message)
        return message

    async def event(self, timeout_s: float = 10.0,
                    match: Callable[[Message], bool] = lambda m: True) -> Message:
        """The next event that ``match``es (heartbeats and others are read past)."""
        deadline = time.monotonic() + timeout_s
        while True:
            message = await self.next(max(0.01, deadline - time.monotonic()))
            if message.type and match(message):
                return message

    async def events_for(self, seconds: float) -> list[Message]:
        """Every event that arrives within ``seconds``."""
        got: list[Message] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                message = await self.next(left)
            except TimeoutError:
                break
            if message.type:
                got.append(message)
        return got


@asynccontextmanager
async def open_stream(session: aiohttp.ClientSession, base: str, user: ApiUser | None = None,
                      *, ticket: str | None = None, last_id: str | None = None,
                      query_id: bool = False) -> AsyncIterator[Stream]:
    headers = {} if user is None else dict(user.headers)
    params: dict[str, str] = {}
    if ticket is not None:
        params["ticket"] = ticket
    if last_id is not None and query_id:
        params["last_event_id"] = last_id
    elif last_id is not None:
        headers["Last-Event-ID"] = last_id
    async with session.get(f"{base}/api/v1/events", headers=headers, params=params,
                           timeout=NO_TIMEOUT) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        assert resp.headers["Cache-Control"] == "no-store"
        stream = Stream(resp)
        hello = await stream.next(10)
        assert hello.fields.get("retry") == "3000" and "connected" in hello.comments
        yield stream


async def get_ticket(api: Api, user: ApiUser) -> str:
    status, body, headers = await api.request("POST", "/events/tickets", user)
    assert status == 201, body
    assert headers["Cache-Control"] == "no-store" and body["expires_in"] == 30
    return str(body["ticket"])


async def upload(api: Api, user: ApiUser, name: str, data: bytes = b"hello",
                 **headers: str) -> tuple[dict[str, Any], float]:
    status, body = await api.upload(user, name, data, **headers)
    assert status == 201, body
    return body, time.monotonic()


def of_file(file_id: str) -> Callable[[Message], bool]:
    return lambda m: m.data.get("file_id") == file_id


@asynccontextmanager
async def own_gateway(cluster: ClusterHandle, user: ApiUser,
                      **events: object) -> AsyncIterator[str]:
    """A second gateway, in this process, on the same cluster, with its own settings
    (its own consumer group, an empty replay buffer); its base URL once it streams."""
    config: Config = load_config(Path(cluster.data_dir) / "dfms.yaml", env={},
                                 overrides={"events": events})
    server = TestServer(gateway_app.build_app(config))
    await server.start_server()
    base = str(server.make_url("")).rstrip("/")
    try:
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 90
            while True:  # 503 until its consumer has joined its group
                async with session.get(f"{base}/api/v1/events", headers=user.headers) as resp:
                    if resp.status != 503:
                        assert resp.status == 200, await resp.text()
                        break
                assert time.monotonic() < deadline, "the gateway's event feed never started"
                await asyncio.sleep(0.5)
        yield base
    finally:
        await server.close()


# --- delivery --------------------------------------------------------------------------

async def test_an_upload_is_on_the_stream_within_2_s_of_its_commit(
        cluster: ClusterHandle, api: Api) -> None:
    user = await api.register()
    ticket = await get_ticket(api, user)  # the browser's way in
    delays: list[float] = []
    since_commit: list[float] = []
    async with open_stream(api.session, api.base, ticket=ticket) as stream:
        for i in range(10):
            body, committed = await upload(api, user, f"live-{i}.txt", f"n{i}".encode(),
                                           **{"X-DFMS-Client-Id": "tab-1"})
            message = await stream.event(DELIVERY_LIMIT_S * 3, of_file(body["id"]))
            delays.append(message.at - committed)
            data = message.data
            assert message.type == FILE_UPLOADED and data["type"] == FILE_UPLOADED
            assert data["name"] == f"live-{i}.txt" and data["version"] == 1
            assert data["size"] == 2 and data["origin"] == "tab-1"
            assert "owner_id" not in data and "manifest_id" not in data
            occurred = data["occurred_at"]
            since_commit.append(time.time() - _epoch(occurred) - (time.monotonic() - message.at))
            await asyncio.sleep(0.2)
    print(f"\nupload response -> event: p50 {statistics.median(delays) * 1000:.0f} ms, "
          f"max {max(delays) * 1000:.0f} ms; commit (occurred_at) -> event: p50 "
          f"{statistics.median(since_commit) * 1000:.0f} ms, max "
          f"{max(since_commit) * 1000:.0f} ms")
    assert max(delays) <= DELIVERY_LIMIT_S, delays


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


async def test_file_changes_share_use_and_quota_reach_the_owner(
        cluster: ClusterHandle, api: Api, pg: asyncpg.Connection) -> None:
    user = await api.register()
    await pg.execute("UPDATE users SET quota_bytes = 1000 WHERE id = $1", uuid.UUID(user.id))
    async with open_stream(api.session, api.base, user) as stream:
        small, _ = await upload(api, user, "small.txt", b"s" * 100)  # 10 %: no warning
        body, _ = await upload(api, user, "a.txt", b"x" * 850)
        # Order holds per file (the message key), not across: collect three.
        got = [await stream.event() for _ in range(3)]
        uploads = [m.data["file_id"] for m in got if m.type == FILE_UPLOADED]
        assert sorted(uploads) == sorted([small["id"], body["id"]])
        [warning] = [m for m in got if m.type == QUOTA_WARNING]
        assert warning.data["used_bytes"] == 950 and warning.data["quota_bytes"] == 1000
        assert warning.data["percent"] == 95.0

        status, _ = await api.upload(user, "big.bin", b"y" * 500)
        assert status == 507
        failed = await stream.event(match=lambda m: m.type == UPLOAD_FAILED)
        assert failed.data["reason"] == "quota_exceeded" and failed.data["name"] == "big.bin"

        status, moved, _ = await api.request("PATCH", f"/files/{body['id']}", user,
                                             json={"name": "b.txt"})
        assert status == 200, moved
        event = await stream.event(match=lambda m: m.type == FILE_MOVED)
        assert (event.data["old_name"], event.data["name"]) == ("a.txt", "b.txt")

        status, share, _ = await api.request("POST", f"/files/{body['id']}/share", user,
                                             json={})
        assert status == 201, share
        async with api.session.get(share["url"]) as resp:
            assert resp.status == 200
            await resp.read()
        used = await stream.event(match=lambda m: m.type == SHARE_USED)
        assert used.data["file_id"] == body["id"] and used.data["download_count"] == 1

        status, _, _ = await api.request("DELETE", f"/files/{body['id']}", user)
        assert status == 204
        deleted = await stream.event(match=lambda m: m.type == FILE_DELETED)
        assert deleted.data["name"] == "b.txt"
        status, trash, _ = await api.request("GET", "/trash", user)
        item = trash["items"][0]["id"]
        status, _, _ = await api.request("POST", f"/trash/{item}/restore", user)
        assert status == 200
        restored = await stream.event(match=lambda m: m.type == FILE_RESTORED)
        assert restored.data["file_id"] == body["id"]

        status, folder, _ = await api.request("POST", "/folders", user, json={"name": "docs"})
        assert status == 201, folder
        event = await stream.event(match=lambda m: m.type == FOLDER_CREATED)
        assert (event.data["folder_id"], event.data["parent_id"]) == (folder["id"], None)
        status, _, _ = await api.request("PATCH", f"/folders/{folder['id']}", user,
                                         json={"name": "docs2"})
        assert status == 200
        event = await stream.event(match=lambda m: m.type == FOLDER_MOVED)
        assert (event.data["old_name"], event.data["name"]) == ("docs", "docs2")
        status, _, _ = await api.request("DELETE", f"/folders/{folder['id']}", user)
        assert status == 204
        event = await stream.event(match=lambda m: m.type == FOLDER_DELETED)
        assert event.data["name"] == "docs2"


async def test_an_expired_multipart_upload_is_announced(
        cluster: ClusterHandle, api: Api, pg: asyncpg.Connection) -> None:
    user = await api.register()
    status, upload_doc, _ = await api.request(
        "POST", "/files/upload/multipart/init", user,
        json={"file_name": "big.iso", "file_size": 12345})
    assert status == 201, upload_doc
    upload_id = upload_doc["upload_id"]
    async with open_stream(api.session, api.base, user) as stream:
        await pg.execute("UPDATE multipart_uploads SET expires_at = now() - interval '1 s' "
                         "WHERE id = $1", uuid.UUID(upload_id))
        async with pg.transaction():  # what the GC worker's lifecycle pass runs
            assert await mp.expire_stale(pg) >= 1
        event = await stream.event(match=lambda m: m.type == UPLOAD_FAILED)
    assert event.data["reason"] == "multipart_expired"
    assert (event.data["upload_id"], event.data["name"], event.data["size"]) == (
        upload_id, "big.iso", 12345)


# --- resuming ----------------------------------------------------------------------------

async def _changes(api: Api, user: ApiUser) -> list[str]:
    """Five changes while no stream is open; their file ids in order."""
    one, _ = await upload(api, user, "gap-1.txt", b"1")
    two, _ = await upload(api, user, "gap-2.txt", b"2")
    status, _, _ = await api.request("PATCH", f"/files/{one['id']}", user,
                                     json={"name": "gap-1b.txt"})
    assert status == 200
    status, _, _ = await api.request("DELETE", f"/files/{two['id']}", user)
    assert status == 204
    three, _ = await upload(api, user, "gap-3.txt", b"3")
    return [one["id"], two["id"], one["id"], two["id"], three["id"]]


def _check_resumed(got: list[Message], ids: list[str]) -> None:
    """Exactly the five changes: in order for each file (the key orders a partition;
    two files' events may interleave either way), none twice."""
    types = [FILE_UPLOADED, FILE_UPLOADED, FILE_MOVED, FILE_DELETED, FILE_UPLOADED]
    expected: dict[str, list[str]] = {}
    for file_id, type in zip(ids, types, strict=True):
        expected.setdefault(file_id, []).append(type)
    seen: dict[str, list[str]] = {}
    for m in got:
        seen.setdefault(m.data["file_id"], []).append(str(m.type))
    assert seen == expected
    assert len({m.data["event_id"] for m in got}) == len(got) == 5


async def test_resume_from_last_event_id_delivers_what_was_missed_once(
        cluster: ClusterHandle, api: Api) -> None:
    user = await api.register()
    async with open_stream(api.session, api.base, user) as stream:
        first, _ = await upload(api, user, "before.txt")
        await stream.event(match=of_file(first["id"]))
        last_id = stream.last_id
    assert last_id is not None and parse_cursor(last_id)
    ids = await _changes(api, user)
    await asyncio.sleep(1.0)  # all of it published and read by the gateway

    # The header, as EventSource's own reconnect sends it.
    async with open_stream(api.session, api.base, user, last_id=last_id) as stream:
        got = await stream.events_for(2.0)
        _check_resumed(got, ids)
        after, _ = await upload(api, user, "after.txt")  # then live, nothing repeated
        live = await stream.event(match=lambda m: True)
        assert live.data["file_id"] == after["id"]
    # A new EventSource: a ticket and the id in the query.
    ticket = await get_ticket(api, user)
    async with open_stream(api.session, api.base, ticket=ticket, last_id=last_id,
                           query_id=True) as stream:
        again = await stream.events_for(2.0)
    _check_resumed(again[:-1] if again[-1].data["file_id"] == after["id"] else again, ids)
    assert after["id"] in {m.data["file_id"] for m in again} and len(again) == 6


async def test_another_gateway_resumes_by_reading_kafka_again(
        cluster: ClusterHandle, api: Api) -> None:
    """A gateway that was not running when the events happened (an empty replay buffer)
    reads them again from the topic, starting at the client's position."""
    user = await api.register()
    async with open_stream(api.session, api.base, user) as stream:
        first, _ = await upload(api, user, "before.txt")
        await stream.event(match=of_file(first["id"]))
        last_id = stream.last_id
    ids = await _changes(api, user)
    await asyncio.sleep(1.0)
    async with own_gateway(cluster, user, stream_buffer_events=0) as other:
        started = time.monotonic()
        async with open_stream(api.session, other, user, last_id=last_id) as stream:
            got = await stream.events_for(3.0)
            took = got[-1].at - started if got else float("nan")
    print(f"\nresume on another gateway, read again from Kafka: {len(got)} events in "
          f"{took * 1000:.0f} ms")
    _check_resumed(got, ids)


# --- isolation ---------------------------------------------------------------------------

async def test_one_users_events_never_reach_another(cluster: ClusterHandle, api: Api) -> None:
    alice, bob = await api.register(), await api.register()
    async with open_stream(api.session, api.base, alice) as a, \
            open_stream(api.session, api.base, bob) as b:
        alice_ids = set(await _changes(api, alice))
        bob_file, _ = await upload(api, bob, "bobs.txt")
        bob_ids = {bob_file["id"]}
        got_b = await b.events_for(2.0)
        got_a = await a.events_for(0.5)
    assert {m.data["file_id"] for m in got_b} == bob_ids
    assert {m.data["file_id"] for m in got_a} == alice_ids
    assert len(got_a) == 5 and len(got_b) == 1


# --- limits and errors -------------------------------------------------------------------

async def test_the_per_user_cap_and_the_errors(cluster: ClusterHandle, api: Api) -> None:
    user = await api.register()
    cap = cluster.config.events.stream_max_per_user
    url = f"{api.base}/api/v1/events"
    async with _streams(api, user, cap) as streams:
        assert len(streams) == cap
        async with api.session.get(url, headers=user.headers) as resp:
            body = await resp.json()
            assert resp.status == 429, body
            assert body["error"]["code"] == "too_many_streams"
            assert int(resp.headers["Retry-After"]) >= 1
        other = await api.register()  # another account is not affected
        async with open_stream(api.session, api.base, other):
            pass
    await asyncio.sleep(1.5)  # the gateway sees the closed connections within a second
    async with open_stream(api.session, api.base, user):  # the slots came back
        pass
    ticket = await get_ticket(api, user)
    async with open_stream(api.session, api.base, ticket=ticket):
        pass
    for params, headers, status, code in (
            ({"ticket": ticket}, {}, 401, "invalid_token"),  # used
            ({"ticket": "made-up"}, {}, 401, "invalid_token"),
            ({}, {}, 401, "unauthorized"),
            ({}, {**user.headers, "Last-Event-ID": "f0:1,x"}, 400, "invalid_last_event_id")):
        async with api.session.get(url, params=params, headers=headers) as resp:
            body = await resp.json()
            assert (resp.status, body["error"]["code"]) == (status, code), body


async def test_deactivating_an_account_ends_its_streams_at_once(
        cluster: ClusterHandle, api: Api) -> None:
    """Not after events.stream_max_age_s (an hour): every gateway ends the account's
    streams when the change reaches it, and the reconnect is refused. Another account's
    stream goes on."""
    admin, user, other = await make_admin(cluster, api), await api.register(), \
        await api.register()
    async with open_stream(api.session, api.base, user) as stream, \
            open_stream(api.session, api.base, other) as bystander:
        status, body, _ = await api.request("PATCH", f"/admin/users/{user.id}", admin,
                                            json={"is_active": False})
        assert status == 200 and body["is_active"] is False, body
        started = time.monotonic()
        with pytest.raises(AssertionError, match="the server ended the stream"):
            while True:
                await stream.next(10.0)
        ended_s = time.monotonic() - started
        file, _ = await upload(api, other, "still-here.txt")
        assert (await bystander.event(5.0, of_file(file["id"]))).type == "file.uploaded"
    assert ended_s < DELIVERY_LIMIT_S * 2, ended_s
    async with api.session.get(f"{api.base}/api/v1/events", headers=user.headers) as resp:
        assert resp.status == 401, await resp.text()


@asynccontextmanager
async def _streams(api: Api, user: ApiUser, n: int) -> AsyncIterator[list[Stream]]:
    opened: list[Stream] = []
    managers = [open_stream(api.session, api.base, user) for _ in range(n)]
    try:
        for manager in managers:
            opened.append(await manager.__aenter__())
        yield opened
    finally:
        for manager in reversed(managers[:len(opened)]):
            await manager.__aexit__(None, None, None)


async def test_heartbeats_carry_the_position(cluster: ClusterHandle, api: Api) -> None:
    user = await api.register()
    async with own_gateway(cluster, user, stream_heartbeat_s=1.0) as other, \
            open_stream(api.session, other, user) as stream:
        beats = []
        for _ in range(3):
            message = await stream.next(3.0)
            assert message.comments == ["hb"] and message.type is None
            assert parse_cursor(message.fields["id"])
            beats.append(message.at)
        gaps = [b - a for a, b in itertools.pairwise(beats)]
        assert all(0.5 < gap < 2.0 for gap in gaps), gaps
        # Other people's events move the heartbeat's position on: a quiet stream
        # resumes from near the end, not from where it started.
        before = parse_cursor(stream.last_id or "")
        someone = await api.register()
        await upload(api, someone, "elsewhere.txt")
        await asyncio.sleep(1.0)
        message = await stream.next(3.0)
        assert message.comments == ["hb"]
        after = parse_cursor(message.fields["id"])
        assert sum(after.values()) > sum(before.values())
        assert not stream.events


# --- admins ------------------------------------------------------------------------------

async def test_an_admin_sees_a_killed_node_go_down_and_come_back(
        cluster: ClusterHandle, api: Api, pg: asyncpg.Connection) -> None:
    cfg = cluster.config
    k, m = cfg.healthmon.failures_to_down, cfg.healthmon.successes_to_healthy
    monitor = HealthMonitor(cfg, instance_id=f"test-sse-{uuid.uuid4().hex[:8]}")
    await wait_all_healthy(cluster, pg)
    running = await control_processes(cluster)
    paused = [name for name in MONITOR_PROCESSES if running.get(name, {}).get("running")]
    for name in paused:
        await cluster.control("stop", name)
    admin, user = await make_admin(cluster, api), await api.register()

    def node(new: str) -> Callable[[Message], bool]:
        return lambda msg: (msg.type == NODE_HEALTH_CHANGED
                            and msg.data["node_id"] == VICTIM and msg.data["new"] == new)
    try:
        async with open_stream(api.session, api.base, admin) as seen, \
                open_stream(api.session, api.base, user) as unseen:
            await passes(monitor, 1)
            await cluster.control("kill", VICTIM)
            await passes(monitor, k)
            down = await seen.event(5.0, node("down"))
            assert down.data["old"] == "suspect" and "reason" in down.data
            await cluster.control("start", VICTIM)
            await wait_node_answers_probes(cluster, VICTIM)
            await passes(monitor, m)
            await seen.event(5.0, node("healthy"))
            assert not await unseen.events_for(0.5) and not unseen.events
    finally:
        await monitor.close()
        await cluster.control("start", VICTIM)
        await pg.execute("UPDATE nodes SET health = 'healthy', health_changed_at = now() "
                         "WHERE health <> 'healthy'")
        for name in paused:
            await cluster.control("start", name)
        await asyncio.sleep(cfg.chunk_service.node_refresh_interval_s + 1)
