"""Dependency outages (issue 19): every answer during one is a success or a 503 naming
what is away, nothing acknowledged is lost, and the cluster heals by itself.

A workload (uploads, downloads, listings, a multipart upload, a share-link
download) runs while one dependency is killed with SIGKILL through `dfms cluster
kill`, which keeps it down for ``OUTAGE_S``; then `dfms cluster start` brings it
back and no service is touched by hand. Each row asserts:

- during the outage, every answer is 2xx, or 503 with ``Retry-After`` and one of the
  row's codes (never 500 or 502); an essential dependency's outage is felt, an
  optional one's (the broker, Redis failing open, one node of three) is not;
- within ``RECOVERY_LIMIT_S`` of the restart every service is ready again, and a
  whole workload round succeeds;
- every acknowledged upload is listed and downloads with its SHA-256, and nothing
  else is listed (a refused upload left nothing visible).

The time each row took to recover is printed (``-s`` shows it).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import yaml

from tests.conftest import TEST_CLUSTER_CONFIG
from tests.support.api import Api, ApiUser
from tests.support.cluster import ClusterHandle, make_data_dir

pytestmark = pytest.mark.slow

OUTAGE_S = 6.0
RECOVERY_LIMIT_S = 30.0
MIB = 1024 * 1024
PART_BYTES = 5 * MIB  # the smallest part a multipart upload takes (but the last)
OK = frozenset({200, 201, 204})


@dataclass(frozen=True)
class Row:
    kill: tuple[str, ...]
    codes: frozenset[str]  # the 503 codes allowed while it is away
    felt: bool  # some request must fail: the dependency is essential


ROWS = {
    "postgres": Row(("postgres",), frozenset({"metadata_unavailable"}), felt=True),
    "redis-fail-open": Row(("redis",), frozenset(), felt=False),
    "broker": Row(("kafka",), frozenset(), felt=False),
    "chunk-service": Row(("chunk-service",), frozenset({"chunk_service_unavailable"}),
                         felt=True),
    "one-node": Row(("node-2",), frozenset(), felt=False),
    "two-nodes": Row(("node-2", "node-3"), frozenset({"storage_unavailable"}), felt=True),
}
FAIL_CLOSED_ROW = Row(("redis",), frozenset({"rate_limiter_unavailable"}), felt=True)


@dataclass(frozen=True)
class Outcome:
    op: str
    status: int
    code: str | None
    retry_after: str | None

    def problem(self, row: Row) -> str | None:
        if self.status in OK:
            return None
        if self.status == 503 and self.code in row.codes and self.retry_after and int(
                self.retry_after) >= 1:
            return None
        return f"{self.op}: {self.status} {self.code} (Retry-After {self.retry_after})"


@dataclass
class Workload:
    api: Api
    user: ApiUser
    stored: dict[str, tuple[str, str]]  # name -> (file id, sha256 hex)
    share_token: str
    acknowledged: dict[str, str] = field(default_factory=dict)  # name -> sha256 hex
    outcomes: list[Outcome] = field(default_factory=list)
    rounds: int = 0

    async def call(self, op: str, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        status, body, headers = await self.api.request(method, path, self.user, **kw)
        code = body["error"]["code"] if isinstance(body, dict) and "error" in body else None
        self.outcomes.append(Outcome(op, status, code, headers.get("Retry-After")))
        return status, body

    async def round(self) -> None:
        self.rounds += 1
        tag = f"r{self.rounds}-{os.urandom(3).hex()}"
        await self.upload(f"{tag}.bin", os.urandom(200 * 1024))
        name, (file_id, sha) = next(iter(self.stored.items()))
        status, body = await self.call("download", "GET", f"/files/{file_id}/download")
        assert status not in OK or hashlib.sha256(body).hexdigest() == sha, name
        await self.call("list", "GET", "/files?per_page=100")
        await self.multipart(f"{tag}-mp.bin")
        status, body = await self.call("share download", "GET", f"s/{self.share_token}")
        assert status not in OK or hashlib.sha256(body).hexdigest() == sha

    async def upload(self, name: str, data: bytes) -> None:
        sha = hashlib.sha256(data).hexdigest()
        status, _ = await self.call("upload", "POST", "/files/upload", data=data, headers={
            "X-File-Name": name, "Content-Type": "application/octet-stream",
            "X-Content-SHA256": sha})
        if status == 201:
            self.acknowledged[name] = sha

    async def multipart(self, name: str) -> None:
        parts = [os.urandom(PART_BYTES), os.urandom(1000)]
        status, up = await self.call("multipart init", "POST", "/files/upload/multipart/init",
                                     json={"file_name": name,
                                           "file_size": sum(map(len, parts))})
        if status not in OK:
            return
        listed = []
        for n, data in enumerate(parts, 1):
            sha = hashlib.sha256(data).hexdigest()
            status, _ = await self.call(
                "multipart part", "PUT", f"/files/upload/multipart/{up['upload_id']}/part/{n}",
                data=data, headers={"X-Content-SHA256": sha})
            if status not in OK:
                return
            listed.append({"part_number": n, "sha256": sha})
        status, _ = await self.call(
            "multipart complete", "POST",
            f"/files/upload/multipart/{up['upload_id']}/complete", json={"parts": listed})
        if status in OK:
            self.acknowledged[name] = hashlib.sha256(b"".join(parts)).hexdigest()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.round()


# --- clusters -----------------------------------------------------------------------------

def start_cluster(request: pytest.FixtureRequest, **overrides: dict[str, Any]
                  ) -> Iterator[ClusterHandle]:
    base = make_data_dir("dfms-outage-")
    handle = ClusterHandle(data_dir=base / "cluster")
    handle.data_dir.mkdir()
    config = yaml.safe_load(TEST_CLUSTER_CONFIG.read_text())
    for section, values in {**BASE_OVERRIDES, **overrides}.items():
        config.setdefault(section, {}).update(values)
    config_path = base / "cluster.yaml"
    config_path.write_text(yaml.safe_dump(config))
    failed_before = request.session.testsfailed
    handle.start("--nodes", "3", config=config_path)
    try:
        yield handle
    finally:
        code = handle.stop()
        if code == 0 and request.session.testsfailed == failed_before:
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"outage cluster (dfms up exit code {code}): logs kept in {base}")


# An upload waits this long for an unreachable chunk service before it answers 503:
# shorter than the outage, so that the outage is felt.
BASE_OVERRIDES: dict[str, dict[str, Any]] = {"chunk_client": {"connect_timeout_s": 2.0}}


@pytest.fixture(scope="module")
def outage_cluster(request: pytest.FixtureRequest) -> Iterator[ClusterHandle]:
    yield from start_cluster(request)


@pytest.fixture(scope="module")
def fail_closed_cluster(request: pytest.FixtureRequest) -> Iterator[ClusterHandle]:
    yield from start_cluster(request, ratelimit={"fail_open": False})


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as s:
        yield s


async def ready(session: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with session.get(f"{url}/ready", timeout=aiohttp.ClientTimeout(total=3)) as r:
            return r.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def all_ready(cluster: ClusterHandle, session: aiohttp.ClientSession) -> bool:
    urls = [cluster.gateway_url] + [s["ops_url"] for s in cluster.info["services"].values()]
    return all(await asyncio.gather(*(ready(session, u) for u in urls)))


async def processes(cluster: ClusterHandle, session: aiohttp.ClientSession
                    ) -> dict[str, tuple[int | None, int]]:
    """Each process of `dfms up`: (pid, restarts by the supervisor)."""
    ctl = cluster.info["control"]
    async with session.get(f"{ctl['url']}/processes",
                           headers={"X-DFMS-Control-Token": ctl["token"]}) as resp:
        assert resp.status == 200
        listing = await resp.json()
    return {name: (p["pid"], p["restarts"]) for name, p in listing.items()}


async def prepared(cluster: ClusterHandle, session: aiohttp.ClientSession) -> Workload:
    api = Api(cluster.gateway_url, session)
    user = await api.register()
    data = os.urandom(300 * 1024)
    status, f = await api.upload(user, "stored.bin", data)
    assert status == 201, f
    status, share, _ = await api.request("POST", f"/files/{f['id']}/share", user, json={})
    assert status == 201, share
    work = Workload(api, user, {"stored.bin": (f["id"], f["sha256"])}, share["token"])
    work.acknowledged["stored.bin"] = f["sha256"]
    return work


# --- the matrix ---------------------------------------------------------------------------

async def run_row(cluster: ClusterHandle, session: aiohttp.ClientSession, row: Row,
                  label: str) -> None:
    assert await all_ready(cluster, session), "the cluster was not ready before the row"
    work = await prepared(cluster, session)
    await work.round()
    assert not [o for o in work.outcomes if o.status not in OK], work.outcomes

    before = await processes(cluster, session)
    stop = asyncio.Event()
    work.outcomes.clear()
    running = asyncio.create_task(work.run(stop))
    for name in row.kill:
        await cluster.control("kill", name)
    await asyncio.sleep(OUTAGE_S)
    restarted = time.monotonic()  # recovery counts the dependency's own start-up too
    for name in row.kill:
        await cluster.control("start", name)
    stop.set()
    await running
    during = list(work.outcomes)

    problems = [p for o in during if (p := o.problem(row)) is not None]
    assert not problems, f"{label}: answers outside 2xx/503-with-its-code: {problems}"
    failed = [o for o in during if o.status not in OK]
    assert bool(failed) == row.felt, f"{label}: failed during the outage: {failed}"

    while not await all_ready(cluster, session):
        assert time.monotonic() - restarted < RECOVERY_LIMIT_S, f"{label}: not ready again"
        await asyncio.sleep(0.25)
    recovered_s = time.monotonic() - restarted
    # Everything else rode it out: no service crashed and was restarted meanwhile.
    after = await processes(cluster, session)
    changed = {n for n in before if n not in row.kill and after[n] != before[n]}
    assert not changed, f"{label}: restarted during the outage: {changed}"
    work.outcomes.clear()
    await work.round()
    assert not [o for o in work.outcomes if o.status not in OK], work.outcomes
    await check_nothing_lost(work)
    print(f"\n{label}: {len(during)} answers during the outage, {len(failed)} of them 503; "
          f"all ready {recovered_s:.1f}s after `dfms cluster start`")


async def check_nothing_lost(work: Workload) -> None:
    status, page, _ = await work.api.request("GET", "/files?per_page=100", work.user)
    assert status == 200, page
    listed = {f["name"]: f for f in page["items"]}
    assert set(listed) == set(work.acknowledged), "listed files are not the acknowledged ones"
    for name, f in listed.items():
        status, body, _ = await work.api.request("GET", f"/files/{f['id']}/download",
                                                 work.user)
        assert status == 200 and hashlib.sha256(body).hexdigest() == work.acknowledged[name]


@pytest.mark.parametrize("label", list(ROWS))
async def test_an_outage_answers_503_and_heals(outage_cluster: ClusterHandle,
                                               session: aiohttp.ClientSession,
                                               label: str) -> None:
    await run_row(outage_cluster, session, ROWS[label], label)


async def test_redis_failing_closed_answers_503_and_heals(
        fail_closed_cluster: ClusterHandle, session: aiohttp.ClientSession) -> None:
    await run_row(fail_closed_cluster, session, FAIL_CLOSED_ROW, "redis-fail-closed")
