"""Requests aiohttp's parser refuses (too long, too many headers, not HTTP) get the error
envelope, echo nothing of the input, and are counted in the gateway's metrics."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlsplit

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.api import Api
from tests.support.cluster import ClusterHandle

SECRET = b"S3CR3T"  # filler whose echo would be visible


async def raw_request(cluster: ClusterHandle, data: bytes) -> tuple[str, dict[str, str], bytes]:
    """Send bytes as they are; the status line, headers and body of the answer."""
    url = urlsplit(cluster.gateway_url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(30):
            answer = await reader.read()
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines)}
    return status_line, headers, body


async def refused_count(api: Api, status: int) -> float:
    _, text, _ = await api.request("GET", "metrics")
    for family in text_string_to_metric_families(bytes(text).decode()):
        for sample in family.samples:
            if sample.name == "dfms_http_requests_total" and sample.labels == {
                    "route": "unparsed", "method": "-", "status": str(status)}:
                return sample.value
    return 0.0


HOST = b"Host: gw\r\n"
CASES = {
    "header_20k": (b"GET /api/v1/files HTTP/1.1\r\n" + HOST + b"X-Big: " + SECRET * 3400
                   + b"\r\n\r\n", 431, "headers_too_large"),
    "url_10k": (b"GET /api/v1/files?q=" + SECRET * 1700 + b" HTTP/1.1\r\n" + HOST + b"\r\n",
                414, "uri_too_long"),
    "headers_120": (b"GET /api/v1/files HTTP/1.1\r\n" + HOST
                    + b"".join(b"X-H%d: " % i + SECRET + b"\r\n" for i in range(120)) + b"\r\n",
                    431, "too_many_headers"),
    "not_http": (b"G\x01T /" + SECRET + b" HTTP/1.1\r\n" + HOST + b"\r\n", 400,
                 "malformed_request"),
}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_parser_refusals_are_json_envelopes_and_counted(
        cluster: ClusterHandle, api: Api, case: str) -> None:
    data, status, code = CASES[case]
    before = await refused_count(api, status)
    status_line, headers, body = await raw_request(cluster, data)
    assert status_line.split()[1] == str(status), status_line
    assert headers["content-type"].startswith("application/json")
    err = json.loads(body)["error"]
    assert err["code"] == code and err["message"]
    assert err["request_id"] and headers["x-request-id"] == err["request_id"]
    assert SECRET not in body and SECRET.decode() not in str(headers)
    assert await refused_count(api, status) == before + 1


async def test_requests_within_the_limits_still_pass(cluster: ClusterHandle) -> None:
    data = (b"GET /health HTTP/1.1\r\n" + HOST + b"X-Fine: " + b"a" * 8000 + b"\r\n"
            + b"".join(b"X-H%d: 1\r\n" % i for i in range(40)) + b"Connection: close\r\n\r\n")
    status_line, _, body = await raw_request(cluster, data)
    assert status_line.split()[1] == "200" and json.loads(body)["status"] == "ok"
