"""Async client of the chunk service, used by the gateway, tools and benchmarks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Sequence
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Self

import grpc
from opentelemetry import propagate, trace
from opentelemetry.context import Context

from dfms.chunkservice.errors import ChunkServiceError
from dfms.chunkservice.limits import GRPC_MESSAGE_LIMIT_BYTES
from dfms.chunkservice.pipeline import ChunkEntry, UploadSummary
from dfms.chunkservice.status import ERROR_TYPE_KEY, ERROR_TYPES
from dfms.errors import ChunkServiceUnavailable
from dfms.proto import chunk_pb2 as pb
from dfms.proto import chunk_pb2_grpc as pb_grpc
from dfms.runtime.telemetry import sampled_span, span_dropped

DEFAULT_FRAME_BYTES = 1024 * 1024  # 1 MiB
GRPC_SERVICE = "dfms.chunk.v1.ChunkService"
_TRACER = trace.get_tracer("dfms.chunkservice.client")
RECONNECT_BACKOFF_MIN_MS = 250
RECONNECT_BACKOFF_MAX_MS = 2000  # 2 s: how late a returning chunk service is noticed, at most
# What grpc aio reports when a message can't be sent because the connection broke under
# a streaming call (a chunk service killed mid-upload): the client's own transport failed,
# the server said nothing, so it is an outage, not a server error.
_CORE_SEND_FAILED = "Internal error from Core"


def _translate(err: grpc.aio.AioRpcError) -> Exception:
    trailers = dict(err.trailing_metadata() or ())
    cls = ERROR_TYPES.get(str(trailers.get(ERROR_TYPE_KEY, "")))
    if cls is not None:
        return cls(err.details() or "")
    if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) or (
            err.code() is grpc.StatusCode.INTERNAL and err.details() == _CORE_SEND_FAILED):
        return ChunkServiceUnavailable(f"chunk service unreachable: {err.details()}")
    return ChunkServiceError(f"chunk service failed: {err.code().name}: {err.details()}")


async def _failure(call: grpc.aio.StreamUnaryCall[pb.UploadFrame, pb.UploadResult]) -> Exception:
    """The error a finished call ended with."""
    try:
        await call
    except grpc.aio.AioRpcError as err:
        return _translate(err)
    return ChunkServiceError("the chunk service ended the upload early without an error")


async def reframe(frames: AsyncIterable[bytes], size: int) -> AsyncIterator[bytes]:
    """Regroup a stream into frames of ``size`` bytes (the last may be shorter).

    Each byte is copied once, by the join that makes its frame (a piece already of
    the right size goes out as it is): a bytearray buffer cost three copies (append,
    slice, bytes()) of every byte of every upload.
    """
    pieces: list[memoryview] = []
    held = 0
    async for piece in frames:
        if not pieces and len(piece) == size:
            yield piece
            continue
        view = memoryview(piece)
        while view:
            take = min(size - held, len(view))
            pieces.append(view[:take])
            held += take
            view = view[take:]
            if held == size:
                yield b"".join(pieces)
                pieces.clear()
                held = 0
    if pieces:
        yield b"".join(pieces)


def _trace_metadata(context: Context | None = None) -> tuple[tuple[str, str], ...]:
    """The trace context (the current one by default) as gRPC metadata
    (``traceparent``), for the chunk service's server instrumentation to continue."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    return tuple(carrier.items())


def _rpc_attributes(method: str) -> dict[str, str]:
    return {"rpc.system": "grpc", "rpc.service": GRPC_SERVICE, "rpc.method": method}


def _client_span(method: str) -> AbstractContextManager[trace.Span]:
    """A client span per call, written here: the aio client instrumentation (0.66b1)
    awaits a client-streaming call's status before handing the call back, so an
    ``Upload`` written frame by frame would wait for itself."""
    return sampled_span(_TRACER, f"{GRPC_SERVICE}/{method}", trace.SpanKind.CLIENT,
                        attributes=_rpc_attributes(method))


def _download_span() -> trace.Span:
    """The Download call's client span, not made current: a generator may be closed from
    another task or by the collector, where detaching a context it attached would fail.
    Where it could only be dropped it is not started (the call then carries the current,
    unsampled, context: the chunk service follows that decision just the same)."""
    if span_dropped(trace.SpanKind.CLIENT):
        return trace.INVALID_SPAN
    return _TRACER.start_span(f"{GRPC_SERVICE}/Download", kind=trace.SpanKind.CLIENT,
                              attributes=_rpc_attributes("Download"))


def _summary(result: pb.UploadResult) -> UploadSummary:
    return UploadSummary(
        chunks=[ChunkEntry(bytes(c.sha256), c.offset, c.size) for c in result.chunks],
        total_size=result.total_size, sha256=bytes(result.sha256),
        new_chunks=result.new_chunks, dedup_chunks=result.dedup_chunks,
        new_bytes=result.new_bytes, dedup_bytes=result.dedup_bytes,
        under_replicated_chunks=result.under_replicated_chunks)


class ChunkClient:
    def __init__(self, target: str, *, frame_size_bytes: int = DEFAULT_FRAME_BYTES,
                 connect_timeout_s: float = 10.0) -> None:
        self.target = target
        self._frame = frame_size_bytes
        self._connect_timeout_s = connect_timeout_s
        self._channel = grpc.aio.insecure_channel(target, options=[
            ("grpc.max_receive_message_length", GRPC_MESSAGE_LIMIT_BYTES),
            ("grpc.max_send_message_length", GRPC_MESSAGE_LIMIT_BYTES),
            # gRPC's default reconnect backoff grows to 120 s: a chunk service restarted
            # after a minute away would be found up to two minutes late.
            ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_MIN_MS),
            ("grpc.min_reconnect_backoff_ms", RECONNECT_BACKOFF_MIN_MS),
            ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MAX_MS)])
        self._stub = pb_grpc.ChunkServiceStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def wait_ready(self) -> None:
        try:
            await self._channel.channel_ready()
        except grpc.aio.AioRpcError as err:
            raise _translate(err) from err

    async def _connected(self) -> None:
        """Wait up to the connect timeout for the channel; a streaming call made with
        ``wait_for_ready`` and no deadline would otherwise wait for as long as the chunk
        service is away, holding its HTTP request open."""
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                await self._channel.channel_ready()
        except TimeoutError as exc:
            raise ChunkServiceUnavailable(
                f"the chunk service did not answer within {self._connect_timeout_s:g}s"
            ) from exc

    async def upload(self, frames: AsyncIterable[bytes], *, upload_id: str = "",
                     owner_id: str = "", max_size: int = 0, expected_sha256: bytes = b"",
                     expected_size: int = -1) -> UploadSummary:
        context = pb.UploadContext(upload_id=upload_id, owner_id=owner_id, max_size=max_size,
                                   expected_sha256=expected_sha256, expected_size=expected_size)

        # The frames are read here, not by a gRPC task: when the call fails, nothing is
        # left reading ``frames`` (an HTTP request body, which allows one reader).
        await self._connected()
        with _client_span("Upload"):
            # Fail fast from here (no wait_for_ready): the channel was ready a moment ago,
            # and a call that waited for it to be ready again, with no deadline, would
            # hang for as long as a chunk service killed just now stays away.
            call = self._stub.Upload(timeout=None, metadata=_trace_metadata())
            try:
                await call.write(pb.UploadFrame(context=context))
                async for frame in reframe(frames, self._frame):
                    await call.write(pb.UploadFrame(data=frame))
                await call.done_writing()
                result = await call
            except grpc.aio.AioRpcError as err:
                raise _translate(err) from err
            except asyncio.InvalidStateError:  # the server ended the call while we wrote
                raise await _failure(call) from None
            except BaseException:
                call.cancel()
                raise
        return _summary(result)

    async def download(self, *, manifest_id: str | None = None,
                       chunks: Sequence[ChunkEntry] | None = None, offset: int = 0,
                       length: int = -1) -> AsyncGenerator[bytes, None]:
        if (manifest_id is None) == (chunks is None):
            raise ValueError("pass exactly one of manifest_id and chunks")
        request = pb.DownloadRequest(offset=offset, length=length)
        if manifest_id is not None:
            request.manifest_id = manifest_id
        else:
            assert chunks is not None
            request.chunks.chunks.extend(
                pb.ChunkRef(sha256=c.sha256, offset=c.offset, size=c.size) for c in chunks)
        await self._connected()
        span = _download_span()
        call = self._stub.Download(request, metadata=_trace_metadata(  # fail fast: see upload
            trace.set_span_in_context(span) if span.is_recording() else None))
        try:
            async for frame in call:
                yield frame.data
        except grpc.aio.AioRpcError as err:
            span.set_status(trace.StatusCode.ERROR, err.code().name)
            raise _translate(err) from err
        finally:
            call.cancel()
            span.end()

    async def has_chunks(self, digests: Sequence[bytes]) -> list[bool]:
        try:
            with _client_span("HasChunks"):
                resp = await self._stub.HasChunks(pb.HasChunksRequest(sha256=list(digests)),
                                                  timeout=self._connect_timeout_s,
                                                  metadata=_trace_metadata())
        except grpc.aio.AioRpcError as err:
            raise _translate(err) from err
        return list(resp.present)

    async def put_chunk(self, digest: bytes, data: bytes) -> bool:
        """Store one chunk the caller cut; True when it was new (False: a dedup hit).
        The chunk service checks the hash (``DigestMismatch``) and the chunker's size
        bounds (``ChunkTooLarge``) before storing anything."""
        try:
            with _client_span("PutChunk"):
                resp = await self._stub.PutChunk(pb.PutChunkRequest(sha256=digest, data=data),
                                                 wait_for_ready=True,
                                                 timeout=self._put_chunk_timeout_s(len(data)),
                                                 metadata=_trace_metadata())
        except grpc.aio.AioRpcError as err:
            raise _translate(err) from err
        return bool(resp.new)

    def _put_chunk_timeout_s(self, size: int) -> float:
        # Connecting, then n replica writes (at least 1 MiB/s each) and a straggler wait.
        return self._connect_timeout_s + 30.0 + size / (1024 * 1024)

    async def stat(self) -> pb.StatResponse:
        try:
            resp: pb.StatResponse = await self._stub.Stat(pb.StatRequest(),
                                                          timeout=self._connect_timeout_s)
            return resp
        except grpc.aio.AioRpcError as err:
            raise _translate(err) from err
