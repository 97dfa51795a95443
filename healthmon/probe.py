"""One probe of one storage node: write a small object, read it back, compare, delete.

The probe goes through the same S3 calls the chunk service makes, so a node that
answers a ping but cannot store or serve data still fails. It never retries: a
retry would hide exactly the flakiness the monitor is there to see.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass, replace

from dfms.config import S3Config
from dfms.storage import NodeClient, StorageError

PROBE_BYTES = 64
PROBE_PREFIX = "_probe/"
# A failed probe may have left its object behind; removing it gets at most this long so
# a hanging node does not stretch the pass (the next good probe overwrites and deletes it).
CLEANUP_TIMEOUT_S = 1.0


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """``latency_ms`` is the write+read+delete round trip, measured whenever the node
    answered all three (also when too slow or wrong); None when a call failed or the
    probe timed out, since then there is no round trip to report."""

    ok: bool
    latency_ms: float | None
    error: str | None = None


def probe_key(instance_id: str, node_id: str) -> str:
    """One key per monitor and node, so concurrent monitors never read each other's bytes."""
    return f"{PROBE_PREFIX}{instance_id}/{node_id}"


def probe_s3_config(s3: S3Config, timeout_s: float) -> S3Config:
    """The node clients' S3 settings for probing: no retries, no call longer than the probe."""
    return replace(s3, max_retries=0, request_timeout_s=min(s3.request_timeout_s, timeout_s))


async def probe_node(client: NodeClient, key: str, *, timeout_s: float,
                     latency_limit_ms: float) -> ProbeResult:
    payload = os.urandom(PROBE_BYTES)
    written = False
    start = time.monotonic()
    try:
        async with asyncio.timeout(timeout_s):
            await client.put(key, payload, retries=0)
            written = True
            got = await client.get(key, retries=0)
            await client.delete(key)
            written = False
    except TimeoutError:
        return await _failed(client, key, written, f"timed out after {timeout_s:g} s")
    except StorageError as exc:
        return await _failed(client, key, written, f"{type(exc).__name__}: {exc}")
    latency_ms = (time.monotonic() - start) * 1000.0
    if got != payload:
        return ProbeResult(False, latency_ms, "read back different bytes than written")
    if latency_ms > latency_limit_ms:
        return ProbeResult(False, latency_ms,
                           f"too slow: {latency_ms:.1f} ms > {latency_limit_ms:g} ms")
    return ProbeResult(True, latency_ms)


async def _failed(client: NodeClient, key: str, written: bool, error: str) -> ProbeResult:
    if written:  # best effort: the object is tiny and the next good probe removes it
        with contextlib.suppress(StorageError, TimeoutError):
            async with asyncio.timeout(CLEANUP_TIMEOUT_S):
                await client.delete(key)
    return ProbeResult(False, None, error)
