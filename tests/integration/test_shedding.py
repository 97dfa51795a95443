"""Load shedding on a real gateway process with tiny limits, on the session cluster.

The session cluster's gateway keeps the default limits, so these tests start their
own gateway (same config file, limits overridden by environment): two transfers and
two other calls at once, no wait queue. Uploads whose bodies the test holds back fill
the transfer slots deterministically; then real requests get 503 ``overloaded`` with
``Retry-After``, ops endpoints and the other class still answer, and once the slots
free up everything succeeds again and every acknowledged file reads back intact,
through the cluster's own gateway too.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.test_ratelimit import gateway
from tests.support.api import Api, ApiUser
from tests.support.cluster import ClusterHandle

pytestmark = pytest.mark.cluster

RETRY_AFTER_S = 2
TINY = {"DFMS_GATEWAY__MAX_IN_FLIGHT_TRANSFERS": "2",
        "DFMS_GATEWAY__MAX_IN_FLIGHT_REQUESTS": "2",
        "DFMS_GATEWAY__SHED_QUEUE_SIZE": "0",
        "DFMS_GATEWAY__SHED_RETRY_AFTER_S": str(RETRY_AFTER_S)}


@pytest.fixture(scope="module")
async def tiny(cluster: ClusterHandle, tmp_path_factory: pytest.TempPathFactory
               ) -> AsyncIterator[str]:
    async with gateway(cluster, tmp_path_factory.mktemp("shedding-gateway"), **TINY) as url:
        yield url


@pytest.fixture
async def tiny_api(tiny: str) -> AsyncIterator[Api]:
    # Without a connection limit: the burst must reach the gateway all at once.
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=120)) as session:
        yield Api(tiny, session)


async def _metric(api: Api, name: str, **labels: str) -> float:
    async with api.session.get(f"{api.base}/metrics") as resp:
        assert resp.status == 200  # never shed, however full the gateway is
        text = await resp.text()
    return sum(s.value for family in text_string_to_metric_families(text)
               for s in family.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


async def _until_in_flight(api: Api, cls: str, n: int) -> None:
    async with asyncio.timeout(30):
        while True:
            if await _metric(api, "dfms_http_requests_in_flight", **{"class": cls}) == n:
                return
            await asyncio.sleep(0.05)


def _assert_overloaded(status: int, body: Any, headers: Any) -> None:
    assert status == 503, body
    assert body["error"]["code"] == "overloaded"
    assert body["error"]["request_id"]
    assert headers["Retry-After"] == str(RETRY_AFTER_S)


async def _held_upload(api: Api, user: ApiUser, name: str, data: bytes,
                       release: asyncio.Event) -> tuple[int, Any]:
    """An upload whose body stops after its first KiB until ``release`` is set."""
    async def body() -> AsyncIterator[bytes]:
        yield data[:1024]
        await release.wait()
        yield data[1024:]

    status, answer, _ = await api.request(
        "POST", "/files/upload", user, data=body(),
        headers={"X-File-Name": name, "Content-Type": "application/octet-stream",
                 "X-Content-SHA256": hashlib.sha256(data).hexdigest()})
    return status, answer


async def _download(api: Api, user: ApiUser, file_id: str) -> tuple[int, Any, Any]:
    return await api.request("GET", f"/files/{file_id}/download", user)


async def test_full_transfer_slots_shed_transfers_only_and_lose_nothing(
        tiny_api: Api, api: Api) -> None:
    user = await tiny_api.register()
    stored = os.urandom(300 * 1024)
    status, before = await tiny_api.upload(user, "before.bin", stored)
    assert status == 201, before

    release = asyncio.Event()
    held_data = [os.urandom(200 * 1024) for _ in range(2)]
    held = [asyncio.create_task(_held_upload(tiny_api, user, f"held-{i}.bin", d, release))
            for i, d in enumerate(held_data)]
    await _until_in_flight(tiny_api, "transfers", 2)
    shed_before = await _metric(tiny_api, "dfms_http_requests_shed_total",
                                **{"class": "transfers"})

    refused = await asyncio.gather(
        *(_download(tiny_api, user, before["id"]) for _ in range(4)),
        *(tiny_api.request("POST", "/files/upload", user, data=b"refused",
                           headers={"X-File-Name": f"refused-{i}.bin"}) for i in range(4)))
    for status, body, headers in refused:
        _assert_overloaded(status, body, headers)
    # Other calls have their own slots; ops endpoints have none to wait for.
    status, listing, _ = await tiny_api.request("GET", "/files", user)
    assert status == 200 and {f["name"] for f in listing["items"]} == {"before.bin"}
    for path in ("health", "ready"):
        async with tiny_api.session.get(f"{tiny_api.base}/{path}") as resp:
            assert resp.status == 200, path
    assert await _metric(tiny_api, "dfms_http_requests_shed_total",
                         **{"class": "transfers"}) == shed_before + 8

    release.set()
    for task in held:
        status, answer = await task
        assert status == 201, answer
    await _until_in_flight(tiny_api, "transfers", 0)
    await _all_intact(api, user, {"before.bin": stored, "held-0.bin": held_data[0],
                                  "held-1.bin": held_data[1]})


async def test_a_real_burst_is_shed_with_retry_after_then_served(
        tiny_api: Api, api: Api) -> None:
    user = await tiny_api.register()
    content = os.urandom(1024 * 1024)
    status, stored = await tiny_api.upload(user, "stored.bin", content)
    assert status == 201, stored
    uploads = {f"burst-{i}-{uuid.uuid4().hex[:6]}.bin": os.urandom(256 * 1024)
               for i in range(10)}

    answers = await asyncio.gather(
        *(_download(tiny_api, user, stored["id"]) for _ in range(30)),
        *(tiny_api.request("POST", "/files/upload", user, data=data,
                           headers={"X-File-Name": name}) for name, data in uploads.items()))
    for status, body, headers in answers:
        if status == 503:
            _assert_overloaded(status, body, headers)
        else:
            assert status in (200, 201), body
    downloads, posted = answers[:30], answers[30:]
    assert any(status == 503 for status, _, _ in answers), "nothing was shed"
    assert all(body == content for status, body, _ in downloads if status == 200)

    # After the burst the gateway serves again at once, the shed requests included.
    await _until_in_flight(tiny_api, "transfers", 0)
    await asyncio.sleep(RETRY_AFTER_S)
    for name, (status, _, _) in zip(uploads, posted, strict=True):
        if status == 503:
            status, body = await tiny_api.upload(user, name, uploads[name])
            assert status == 201, body
    status, body, _ = await _download(tiny_api, user, stored["id"])
    assert status == 200 and body == content
    # Every upload acknowledged in the burst or after it, and nothing else.
    await _all_intact(api, user, {"stored.bin": content, **uploads})


async def _all_intact(api: Api, user: ApiUser, files: dict[str, bytes]) -> None:
    """Through the cluster's own gateway: exactly these files, each byte for byte."""
    status, listing, _ = await api.request("GET", "/files?per_page=500", user)
    assert status == 200, listing
    ids = {f["name"]: f["id"] for f in listing["items"]}
    assert set(ids) == set(files)
    for name, data in files.items():
        status, body, _ = await api.request("GET", f"/files/{ids[name]}/download", user)
        assert status == 200 and body == data, name
