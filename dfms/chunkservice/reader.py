"""Verified downloads in the caller's own process: the read half of the chunk service.

The gateway streams downloads with a ``ChunkReader`` straight from the nodes. Reads
need no coordinator: each chunk is fetched from the first good replica and checked
against its SHA-256 (``ChunkStore.get``: failover, bad replicas marked and queued for
repair, the same code the chunk service runs). Sending the bytes through the chunk
service instead cost a gRPC hop, a protobuf copy each way and most of the gateway's
CPU per downloaded byte (docs/performance.md). Writes still go through the chunk
service.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import asynccontextmanager

import asyncpg
from prometheus_client import Counter

from dfms.chunkservice.errors import InvalidRequest, ManifestNotFound
from dfms.chunkservice.pipeline import ChunkEntry, check_manifest, resolve_range, stream_range
from dfms.chunkservice.placement import Placement
from dfms.chunkservice.store import ChunkStore
from dfms.config import Config

DOWNLOAD_BYTES = Counter("dfms_chunk_download_bytes_total",
                         "Bytes of chunk content served (file bytes, verified)")
# In-process there are no messages to size: a chunk's verified bytes go out in one
# piece (up to the chunker's largest chunk) rather than in gRPC-sized frames.
WHOLE_CHUNK = 1 << 62

_ENTRIES = ('SELECT chunk_sha256, "offset", size FROM manifest_entries '
            "WHERE manifest_id = $1 ORDER BY idx")
_MANIFEST_EXISTS = "SELECT 1 FROM manifests WHERE id = $1"


async def load_manifest(pool: asyncpg.Pool, manifest_id: str) -> list[ChunkEntry]:
    """The manifest's chunks in file order; ManifestNotFound if there is none."""
    try:
        key = uuid.UUID(manifest_id)
    except ValueError as exc:
        raise InvalidRequest(f"bad manifest id {manifest_id!r}") from exc
    rows = await pool.fetch(_ENTRIES, key)
    if not rows and not await pool.fetchval(_MANIFEST_EXISTS, key):
        raise ManifestNotFound(f"no manifest {manifest_id}")
    return [ChunkEntry(bytes(r["chunk_sha256"]), r["offset"], r["size"]) for r in rows]


class ChunkReader:
    """Downloads by manifest or chunk list, a byte range of it, verified chunk by chunk,
    with ``prefetch`` chunks fetched ahead of the one being sent."""

    def __init__(self, pool: asyncpg.Pool, store: ChunkStore, *, prefetch: int,
                 frame_size: int = WHOLE_CHUNK) -> None:
        self._pool = pool
        self._store = store
        self._prefetch = prefetch
        self._frame_size = frame_size

    async def download(self, *, manifest_id: str | None = None,
                       chunks: Sequence[ChunkEntry] | None = None, offset: int = 0,
                       length: int = -1) -> AsyncGenerator[bytes, None]:
        """The bytes ``[offset, offset + length)`` (``length < 0``: to the end)."""
        if (manifest_id is None) == (chunks is None):
            raise ValueError("pass exactly one of manifest_id and chunks")
        entries = (list(chunks) if chunks is not None
                   else await load_manifest(self._pool, str(manifest_id)))
        check_manifest(entries)
        start, end = resolve_range(entries, offset, length)
        async for piece in stream_range(self._store, entries, start, end,
                                        prefetch=self._prefetch, frame_size=self._frame_size):
            DOWNLOAD_BYTES.inc(len(piece))
            yield piece


@asynccontextmanager
async def open_reader(cfg: Config, pool: asyncpg.Pool, *, source: str) -> AsyncIterator[
        ChunkReader]:
    """A reader over its own view of the ring and the nodes (refreshed from PostgreSQL
    like the chunk service's); ``source`` names this process in node-health records."""
    placement = Placement(pool, cfg.s3, cfg.chunk_service.node_refresh_interval_s)
    await placement.start()
    try:
        store = ChunkStore(pool, placement, replicas_n=cfg.replication.replicas_n,
                           write_quorum_w=cfg.replication.write_quorum_w,
                           straggler_timeout_s=cfg.chunk_service.straggler_timeout_s,
                           suspect_after=cfg.healthmon.passive_suspect_after, source=source)
        yield ChunkReader(pool, store, prefetch=cfg.chunk_service.download_prefetch_chunks)
    finally:
        await placement.stop()
