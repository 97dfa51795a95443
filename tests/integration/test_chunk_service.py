"""The chunk data plane against the real cluster: round trips, dedup, faults."""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from dfms.chunker import make_chunker_from
from dfms.chunkservice.client import ChunkClient
from dfms.chunkservice.errors import (
    ChecksumMismatch,
    InvalidRequest,
    QuorumNotReached,
    UploadTooLarge,
)
from dfms.config import chunker_params
from dfms.ring import Ring
from dfms.ring import store as ring_store
from dfms.storage import NodeClient, chunk_key
from tests.support.cluster import ClusterHandle

MIB = 1024 * 1024


async def frames(data: bytes, size: int = 256 * 1024) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


def unique(size: int) -> bytes:
    return os.urandom(size)


@pytest.fixture
async def client(cluster: ClusterHandle) -> AsyncIterator[ChunkClient]:
    async with ChunkClient(cluster.chunk_target) as c:
        yield c


async def read_all(client: ChunkClient, summary: object, **kw: int) -> bytes:
    return b"".join([piece async for piece in client.download(chunks=summary.chunks,  # type: ignore[attr-defined]
                                                               **kw)])


def boundary_sizes(cluster: ClusterHandle) -> Iterator[int]:
    ch = cluster.config.chunker
    yield from (ch.min_size_bytes - 1, ch.min_size_bytes, ch.min_size_bytes + 1,
                ch.avg_size_bytes, ch.max_size_bytes - 1, ch.max_size_bytes,
                ch.max_size_bytes + 1, 2 * ch.max_size_bytes)


async def test_empty_and_one_byte_round_trip(client: ChunkClient) -> None:
    empty = await client.upload(frames(b""))
    assert (empty.total_size, empty.chunks) == (0, [])
    assert empty.sha256 == hashlib.sha256(b"").digest()
    assert await read_all(client, empty) == b""
    one = await client.upload(frames(b"\x07"))
    assert one.total_size == 1 and len(one.chunks) == 1
    assert await read_all(client, one) == b"\x07"


async def test_boundary_sized_inputs_round_trip(cluster: ClusterHandle,
                                                client: ChunkClient) -> None:
    for size in boundary_sizes(cluster):
        data = unique(size)
        summary = await client.upload(frames(data, 1 * MIB + 7))
        assert summary.total_size == size
        assert sum(c.size for c in summary.chunks) == size
        assert max(c.size for c in summary.chunks) <= cluster.config.chunker.max_size_bytes
        assert await read_all(client, summary) == data, size


async def test_100_mib_round_trip_with_ranges(client: ChunkClient) -> None:
    data = unique(100 * MIB)
    summary = await client.upload(frames(data), expected_sha256=hashlib.sha256(data).digest())
    assert summary.sha256 == hashlib.sha256(data).digest()
    assert summary.new_chunks == len(summary.chunks) > 20
    assert summary.under_replicated_chunks == 0
    got = b"".join([p async for p in client.download(chunks=summary.chunks)])
    assert hashlib.sha256(got).digest() == summary.sha256
    rng = random.Random(7)
    for _ in range(5):
        start = rng.randrange(len(data))
        length = rng.randrange(min(6 * MIB, len(data) - start) + 1)
        assert await read_all(client, summary, offset=start, length=length) == \
            data[start:start + length]
    assert await read_all(client, summary, offset=len(data) - 1) == data[-1:]


async def test_same_data_twice_stores_nothing_new(client: ChunkClient) -> None:
    data = unique(12 * MIB)
    first = await client.upload(frames(data))
    again = await client.upload(frames(data, 777_777))  # other frame sizes: same chunks
    assert again.chunks == first.chunks
    assert (again.new_chunks, again.new_bytes) == (0, 0)
    assert again.dedup_bytes == len(data)


async def test_one_edit_stores_only_the_changed_chunks(client: ChunkClient) -> None:
    data = bytearray(unique(24 * MIB))
    first = await client.upload(frames(bytes(data)))
    data[10 * MIB:10 * MIB + 100] = b"x" * 100  # overwrite 100 bytes in the middle
    second = await client.upload(frames(bytes(data)))
    assert second.total_size == first.total_size
    assert 1 <= second.new_chunks <= 3
    assert second.new_bytes <= 3 * 4 * MIB
    assert second.dedup_chunks >= len(second.chunks) - 3


async def test_has_chunks_and_stat(client: ChunkClient) -> None:
    summary = await client.upload(frames(unique(3 * MIB)))
    present = await client.has_chunks([c.sha256 for c in summary.chunks] + [b"\0" * 32])
    assert present == [True] * len(summary.chunks) + [False]
    stat = await client.stat()
    assert stat.replicas_n == 3 and stat.write_quorum_w == 2
    assert stat.chunk_count >= len(summary.chunks)
    active = [n.node_id for n in stat.nodes if n.admin_state == "active"]
    assert {"node-1", "node-2", "node-3"} <= set(active)
    with pytest.raises(InvalidRequest):
        await client.has_chunks([b"short"])


async def test_limits_and_checksums_are_enforced(client: ChunkClient) -> None:
    data = unique(3 * MIB)
    with pytest.raises(UploadTooLarge):
        await client.upload(frames(data), max_size=2 * MIB)
    with pytest.raises(ChecksumMismatch):
        await client.upload(frames(data), expected_sha256=hashlib.sha256(b"other").digest())
    summary = await client.upload(frames(data))
    with pytest.raises(InvalidRequest):
        await read_all(client, summary, offset=len(data) + 1)
    with pytest.raises(InvalidRequest):
        await read_all(client, summary, offset=10, length=len(data))


async def test_one_node_down_writes_at_quorum_and_reads_fail_over(
        cluster: ClusterHandle, client: ChunkClient, db: asyncpg.Connection) -> None:
    stored_before = unique(6 * MIB)
    before = await client.upload(frames(stored_before))
    await cluster.control("kill", "node-2")
    try:
        data = unique(8 * MIB)
        summary = await client.upload(frames(data))
        assert summary.new_chunks == len(summary.chunks)
        # Chunks whose targets included node-2 got 2 of 3 replicas and were queued
        # for repair; with 3 nodes and n=3 that is every chunk.
        assert summary.under_replicated_chunks == len(summary.chunks)
        digests = [c.sha256 for c in summary.chunks]
        holders = await db.fetch(
            "SELECT chunk_sha256, array_agg(node_id ORDER BY node_id) AS nodes "
            "FROM chunk_replicas WHERE chunk_sha256 = ANY($1::bytea[]) GROUP BY 1", digests)
        assert {tuple(r["nodes"]) for r in holders} == {("node-1", "node-3")}
        queued = await db.fetchval(
            "SELECT count(*) FROM repair_queue WHERE reason = 'under_replicated' "
            "AND chunk_sha256 = ANY($1::bytea[])", digests)
        assert queued == len(digests)
        assert await read_all(client, summary) == data
        assert await read_all(client, before) == stored_before  # node-2 held a copy
    finally:
        await cluster.control("start", "node-2")


async def test_two_nodes_down_writes_fail_cleanly(
        cluster: ClusterHandle, client: ChunkClient) -> None:
    earlier = unique(2 * MIB)
    stored = await client.upload(frames(earlier))
    await cluster.control("kill", "node-1")
    await cluster.control("kill", "node-3")
    try:
        data = unique(5 * MIB)
        with pytest.raises(QuorumNotReached, match="1 of 2 required replica writes"):
            await client.upload(frames(data))
        chunker = make_chunker_from(chunker_params(cluster.config.chunker))
        digests = [hashlib.sha256(data[o:o + n]).digest() for o, n in chunker.cut(data)]
        assert await client.has_chunks(digests) == [False] * len(digests)  # nothing recorded
        assert await read_all(client, stored) == earlier  # one replica left is enough
    finally:
        await cluster.control("start", "node-1")
        await cluster.control("start", "node-3")


async def test_a_corrupt_replica_is_skipped_and_recorded(
        cluster: ClusterHandle, client: ChunkClient, db: asyncpg.Connection) -> None:
    data = unique(300 * 1024)  # one chunk
    summary = await client.upload(frames(data))
    (entry,) = summary.chunks
    ring_data = await ring_store.load_latest(db)
    assert ring_data is not None
    first = Ring(ring_data).preference_list(entry.sha256.hex(), 3)[0]  # read first
    node = next(n for n in cluster.s3_nodes if n["id"] == first)
    async with NodeClient(first, node["endpoint"], cluster.config.s3) as raw:
        await raw.put(chunk_key(entry.sha256.hex()), b"garbage" * 1000)
    assert await read_all(client, summary) == data
    state = await db.fetchval(
        "SELECT state FROM chunk_replicas WHERE chunk_sha256 = $1 AND node_id = $2",
        entry.sha256, first)
    assert state == "corrupt"
    queued = await db.fetchval(
        "SELECT count(*) FROM repair_queue WHERE chunk_sha256 = $1 AND node_id = $2 "
        "AND reason = 'corrupt'", entry.sha256, first)
    assert queued == 1
    assert await read_all(client, summary) == data  # and again, from the good replicas
