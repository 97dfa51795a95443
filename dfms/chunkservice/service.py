"""The gRPC chunk service (`dfms chunk-service`).

It keeps no state of its own: chunks live on the nodes, their records in
PostgreSQL. Several instances can serve side by side.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import grpc
from prometheus_client import Counter, Histogram

from dfms.chunker import Chunker, make_chunker_from
from dfms.chunkservice.errors import (
    ChunkServiceError,
    ChunkTooLarge,
    DigestMismatch,
    InvalidRequest,
)
from dfms.chunkservice.limits import GRPC_MESSAGE_LIMIT_BYTES
from dfms.chunkservice.pipeline import (
    ChunkEntry,
    check_manifest,
    ingest,
    read_ahead,
    resolve_range,
    stream_range,
)
from dfms.chunkservice.placement import Placement
from dfms.chunkservice.reader import DOWNLOAD_BYTES, load_manifest
from dfms.chunkservice.status import ERROR_TYPE_KEY, status_for
from dfms.chunkservice.store import ChunkStore, sha256_of
from dfms.chunkservice.writepath import write_path
from dfms.config import Config, chunker_params
from dfms.errors import DependencyUnavailable, StorageUnavailable
from dfms.metadata.db import create_pool, metadata_outage
from dfms.metadata.states import ChunkState, ReplicaState
from dfms.proto import chunk_pb2 as pb
from dfms.proto import chunk_pb2_grpc as pb_grpc
from dfms.runtime.grpc_tracing import server_interceptors
from dfms.runtime.logs import get_logger
from dfms.runtime.ops import ReadyCheck
from dfms.runtime.service import Service
from dfms.runtime.telemetry import tracing_active

log = get_logger("chunk_service")
SERVER_OPTIONS = [("grpc.max_receive_message_length", GRPC_MESSAGE_LIMIT_BYTES),
                  ("grpc.max_send_message_length", GRPC_MESSAGE_LIMIT_BYTES)]
T = TypeVar("T")

RPC_SECONDS = Histogram("dfms_chunk_rpc_seconds", "Chunk-service RPC duration", ["rpc"],
                        buckets=(.01, .05, .1, .5, 1, 5, 10, 30, 60, 300, 1800))
RPC_ERRORS = Counter("dfms_chunk_rpc_errors_total", "Chunk-service RPC failures",
                     ["rpc", "code"])
UPLOAD_BYTES = Counter("dfms_chunk_upload_bytes_total", "Bytes received by Upload")
PUT_CHUNK_BYTES = Counter("dfms_chunk_put_chunk_bytes_total",
                          "Bytes received by PutChunk (chunks cut by clients)")

# The queries of Stat.
_LIVE_TOTALS = ("SELECT count(*) AS n, coalesce(sum(size), 0) AS bytes FROM chunks "
                f"WHERE state = '{ChunkState.LIVE}'")
_UNDER_REPLICATED = (
    "SELECT count(*) FROM (SELECT c.sha256 FROM chunks c LEFT JOIN chunk_replicas r "
    f"ON r.chunk_sha256 = c.sha256 AND r.state = '{ReplicaState.OK}' "
    f"WHERE c.state = '{ChunkState.LIVE}' "
    "GROUP BY c.sha256 HAVING count(r.node_id) < $1) u")
_REPLICAS_PER_NODE = ("SELECT node_id, count(*) FROM chunk_replicas "
                      f"WHERE state = '{ReplicaState.OK}' GROUP BY node_id")


def _known(exc: Exception) -> Exception | None:
    """``exc`` as an error the status table knows (a PostgreSQL outage becomes
    MetadataUnavailable), or None for a bug."""
    if isinstance(exc, (ChunkServiceError, DependencyUnavailable)):
        return exc
    return metadata_outage(exc)


async def _abort(context: grpc.aio.ServicerContext[Any, Any], rpc: str, exc: Exception) -> None:
    """End the call with the status of ``exc``; re-raise ``exc`` if it is not known."""
    known = _known(exc)
    code = None if known is None else status_for(known)
    if known is None or code is None:
        raise exc  # a bug: grpc answers UNKNOWN and logs it
    RPC_ERRORS.labels(rpc, code.name).inc()
    context.set_trailing_metadata(((ERROR_TYPE_KEY, type(known).__name__),))
    await context.abort(code, str(known))


def unary(rpc: str) -> Callable[[Callable[..., Awaitable[T]]], Callable[..., Awaitable[T]]]:
    def wrap(handler: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        @functools.wraps(handler)
        async def run(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> T:
            with RPC_SECONDS.labels(rpc).time():
                try:
                    return await handler(self, request, context)
                except Exception as exc:  # known ones become a status, others re-raise
                    await _abort(context, rpc, exc)
                    raise AssertionError("abort returned") from exc
        return run
    return wrap


def _entries(refs: Any) -> list[ChunkEntry]:
    return [ChunkEntry(bytes(r.sha256), r.offset, r.size) for r in refs]


class ChunkServicer(pb_grpc.ChunkServiceServicer):
    def __init__(self, cfg: Config, pool: asyncpg.Pool, store: ChunkStore,
                 placement: Placement, chunker: Chunker) -> None:
        self._cfg = cfg.chunk_service
        self._chunker_name = cfg.chunker.algorithm
        self._pool = pool
        self._store = store
        self._placement = placement
        self._chunker = chunker

    @unary("Upload")
    async def Upload(self, request_iterator: AsyncIterator[pb.UploadFrame],
                     context: grpc.aio.ServicerContext[pb.UploadFrame, pb.UploadResult]
                     ) -> pb.UploadResult:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("kind") != "context":
            raise InvalidRequest("the first Upload frame must carry the upload context")
        ctx = first.context
        upload_id = ctx.upload_id or uuid.uuid4().hex

        async def data_frames() -> AsyncIterator[bytes]:
            async for frame in request_iterator:
                if frame.WhichOneof("kind") != "data":
                    raise InvalidRequest("only the first Upload frame may carry a context")
                UPLOAD_BYTES.inc(len(frame.data))
                yield frame.data

        frames = read_ahead(data_frames(), self._cfg.upload_read_ahead_bytes)
        summary = await ingest(self._store, self._chunker, frames,
                               parallel=self._cfg.upload_parallel_chunks,
                               max_size=ctx.max_size, expected_sha256=ctx.expected_sha256,
                               expected_size=ctx.expected_size)
        log.info("upload stored", extra={"upload_id": upload_id, "bytes": summary.total_size,
                                         "chunks": len(summary.chunks),
                                         "new_chunks": summary.new_chunks})
        return pb.UploadResult(
            chunks=[pb.ChunkRef(sha256=c.sha256, offset=c.offset, size=c.size)
                    for c in summary.chunks],
            total_size=summary.total_size, sha256=summary.sha256,
            new_chunks=summary.new_chunks, dedup_chunks=summary.dedup_chunks,
            new_bytes=summary.new_bytes, dedup_bytes=summary.dedup_bytes,
            under_replicated_chunks=summary.under_replicated_chunks)

    @unary("PutChunk")
    async def PutChunk(self, request: pb.PutChunkRequest,
                       context: grpc.aio.ServicerContext[pb.PutChunkRequest, pb.PutChunkResult]
                       ) -> pb.PutChunkResult:
        digest, data = bytes(request.sha256), bytes(request.data)
        if len(digest) != 32:
            raise InvalidRequest("sha256 must be 32 bytes")
        bound = self._chunker.params.max_size_bytes
        if not 0 < len(data) <= bound:
            # The caller's chunker must be ours: no 1 GiB "chunks", no empty ones.
            raise ChunkTooLarge(f"a chunk holds 1 to {bound} bytes (the chunker's "
                                f"max_size_bytes); this one has {len(data)}")
        if await sha256_of(data) != digest:
            raise DigestMismatch(f"the chunk's bytes do not hash to {digest.hex()}")
        PUT_CHUNK_BYTES.inc(len(data))
        outcome = await self._store.put(digest, data)
        return pb.PutChunkResult(new=outcome.new, replicas=outcome.replicas)

    async def Download(self, request: pb.DownloadRequest,
                       context: grpc.aio.ServicerContext[pb.DownloadRequest, pb.DownloadFrame]
                       ) -> AsyncIterator[pb.DownloadFrame]:
        with RPC_SECONDS.labels("Download").time():
            try:
                chunks = await self._manifest(request)
                check_manifest(chunks)
                start, end = resolve_range(chunks, request.offset, request.length)
                async for piece in stream_range(
                        self._store, chunks, start, end,
                        prefetch=self._cfg.download_prefetch_chunks,
                        frame_size=self._cfg.frame_size_bytes):
                    DOWNLOAD_BYTES.inc(len(piece))
                    yield pb.DownloadFrame(data=piece)
            except Exception as exc:  # known ones become a status, others re-raise
                await _abort(context, "Download", exc)

    async def _manifest(self, request: pb.DownloadRequest) -> list[ChunkEntry]:
        source = request.WhichOneof("source")
        if source == "chunks":
            return _entries(request.chunks.chunks)
        if source != "manifest_id":
            raise InvalidRequest("Download needs a manifest_id or a chunk list")
        return await load_manifest(self._pool, request.manifest_id)

    @unary("HasChunks")
    async def HasChunks(self, request: pb.HasChunksRequest,
                        context: grpc.aio.ServicerContext[pb.HasChunksRequest,
                                                          pb.HasChunksResponse]
                        ) -> pb.HasChunksResponse:
        digests = [bytes(d) for d in request.sha256]
        if any(len(d) != 32 for d in digests):
            raise InvalidRequest("every sha256 must be 32 bytes")
        return pb.HasChunksResponse(present=await self._store.live(digests))

    @unary("Stat")
    async def Stat(self, request: pb.StatRequest,
                   context: grpc.aio.ServicerContext[pb.StatRequest, pb.StatResponse]
                   ) -> pb.StatResponse:
        row = await self._pool.fetchrow(_LIVE_TOTALS)
        under = await self._pool.fetchval(_UNDER_REPLICATED, self._store.n)
        per_node: dict[str, int] = {r["node_id"]: r["count"]
                                    for r in await self._pool.fetch(_REPLICAS_PER_NODE)}
        assert row is not None  # an aggregate query gives one row
        nodes = [pb.NodeStat(node_id=n.node_id, endpoint=n.endpoint, zone=n.zone,
                             health=n.health, admin_state=n.admin_state,
                             replicas=per_node.get(n.node_id, 0))
                 for n in sorted(self._placement.nodes.values(), key=lambda n: n.node_id)]
        return pb.StatResponse(
            chunk_count=row["n"], stored_bytes=row["bytes"], replicas_n=self._store.n,
            write_quorum_w=self._store.w, ring_epoch=self._placement.ring.epoch,
            chunker=self._chunker_name, under_replicated_chunks=under, nodes=nodes)


class ChunkService(Service):
    name = "chunk_service"

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config
        self._pool: asyncpg.Pool | None = None
        self._placement: Placement | None = None
        self._server: grpc.aio.Server | None = None
        self.bound_port: int | None = None

    @property
    def ops_port(self) -> int:
        return self.config.chunk_service.ops_port

    async def _start(self) -> None:
        cfg = self.config
        self._pool = await create_pool(cfg.postgres)
        self._placement = Placement(self._pool, cfg.s3,
                                    cfg.chunk_service.node_refresh_interval_s)
        await self._placement.start()
        store = ChunkStore(self._pool, self._placement, replicas_n=cfg.replication.replicas_n,
                           write_quorum_w=cfg.replication.write_quorum_w,
                           straggler_timeout_s=cfg.chunk_service.straggler_timeout_s,
                           suspect_after=cfg.healthmon.passive_suspect_after)
        chunker = make_chunker_from(chunker_params(cfg.chunker))
        self._server = grpc.aio.server(interceptors=server_interceptors(tracing_active()),
                                       options=SERVER_OPTIONS)
        pb_grpc.add_ChunkServiceServicer_to_server(
            ChunkServicer(cfg, self._pool, store, self._placement, chunker), self._server)
        address = f"{cfg.chunk_service.host}:{cfg.chunk_service.grpc_port}"
        try:
            self.bound_port = self._server.add_insecure_port(address)
        except RuntimeError as exc:  # grpc's bind failure; start() then closes what we opened
            raise OSError(f"the chunk service cannot listen on {address}: the port is "
                          f"taken or the address is not local ({exc})") from exc
        await self._server.start()
        self.log.info("listening", extra={"grpc_port": self.bound_port,
                                          "chunker": chunker.params.algorithm,
                                          "n": store.n, "w": store.w})

    async def _stop(self) -> None:
        if self._server is not None:
            # In-flight RPCs get the grace period, then are cancelled.
            await self._server.stop(self.config.ops.shutdown_grace_s)
            self._server = None
        if self._placement is not None:
            await self._placement.stop()
            self._placement = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    def ready_checks(self) -> dict[str, ReadyCheck]:
        async def postgres() -> None:
            assert self._pool is not None
            await self._pool.fetchval("SELECT 1")

        async def placement() -> None:
            assert self._placement is not None
            path = write_path(self._placement.ring.active_node_ids, self._placement.is_up,
                              self.config.replication.write_quorum_w)
            if not path.writable:
                raise StorageUnavailable(path.detail)

        return {"postgres": postgres, "ring": placement}
