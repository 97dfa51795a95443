"""An S3 node client on miniopy-async with pooled connections, timeouts and retries.

Chunk objects live in one bucket under ``hh/hh/<sha256>`` (the first two
byte-pairs of the hex digest fan the keys out). Idempotent calls (GET, HEAD,
DELETE, and PUT of content-addressed bytes) are retried with exponential
backoff on connection errors, timeouts and 5xx answers.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

import aiohttp
from aiohttp import payload
from aiohttp.abc import AbstractStreamWriter
from miniopy_async.api import Minio
from miniopy_async.error import InvalidResponseError, S3Error, ServerError
from miniopy_async.helpers import DictType
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, StatusCode
from prometheus_client import Counter, Histogram

from dfms.config import S3Config
from dfms.runtime.telemetry import sampled_span, trace_exemplar
from dfms.storage.errors import NodeUnavailable, ObjectNotFound, StorageError, StorageRejected

T = TypeVar("T")

_SHA_HEADER = "x-amz-content-sha256"
_NOT_FOUND = {"NoSuchKey", "NoSuchObject", "NotFound", "ResourceNotFound"}
RETRY_BASE_DELAY_S = 0.1
RETRY_MAX_DELAY_S = 2.0
POOL_CONNECTIONS_PER_NODE = 32
CONNECT_TIMEOUT_S = 5.0  # opening a TCP connection to a node

_TRACER = trace.get_tracer("dfms.storage")
# The HTTP method of each operation, for the call's span (ping asks whether the bucket
# exists). There is no HTTP client span below it: see instrument_libraries.
_HTTP_METHODS = {"put": "PUT", "get": "GET", "head": "HEAD", "delete": "DELETE",
                 "ping": "HEAD"}
S3_REQUESTS = Counter("dfms_s3_requests_total", "Requests to storage nodes",
                      ["node", "op", "outcome"])
S3_SECONDS = Histogram("dfms_s3_request_seconds", "Latency of storage-node requests",
                       ["node", "op"], buckets=(.001, .005, .01, .025, .05, .1, .25, .5, 1,
                                                2.5, 5, 10, 30))
S3_BYTES = Counter("dfms_s3_bytes_total", "Bytes moved to and from storage nodes",
                   ["node", "direction"])


def _end_span(span: Span, error: StorageError | None) -> None:
    """The call's outcome as the metrics name it; an absent object is an answer, not a
    failed call."""
    outcome = "ok" if error is None else type(error).__name__
    span.set_attribute("dfms.s3.outcome", outcome)
    if error is not None and not isinstance(error, ObjectNotFound):
        span.set_status(StatusCode.ERROR, outcome)


def chunk_key(sha256_hex: str) -> str:
    return f"{sha256_hex[0:2]}/{sha256_hex[2:4]}/{sha256_hex}"


class _WholeBody(payload.Payload):
    """A replica's bytes handed to the socket in one write: the transport sends what the
    socket takes and keeps the rest. aiohttp's BytesIO payload sent 64 KiB slices,
    copying each and yielding to the event loop between them, which cost the client
    as much CPU per PUT at 1 MiB and 24% more at 4 MiB (300 PUTs to a server that
    discards them). aiohttp's own bytes payload would do this but warns above 1 MiB."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data, content_type="application/octet-stream")
        self._size = len(data)

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return bytes(self._value).decode(encoding, errors)

    async def write(self, writer: AbstractStreamWriter) -> None:
        await writer.write(self._value)


class _Minio(Minio):
    """Minio that signs a PUT with a payload hash the caller already knows.

    Over plain HTTP, SigV4 needs the payload's SHA-256, and miniopy computes it
    again for every request. A chunk's key *is* its SHA-256, so passing it saves
    a hash per replica, and the node can check the body against it.
    """

    async def _build_headers(self, host: str, headers: Any, body: Any,
                             creds: Any) -> tuple[dict[str, str], Any]:
        known = dict(headers or {}).get(_SHA_HEADER)
        if known is None or not creds or not isinstance(body, _WholeBody):
            return await super()._build_headers(host, headers, body, creds)
        built, date = await super()._build_headers(host, headers, None, creds)
        built["Content-Length"] = str(body.size)
        built[_SHA_HEADER] = known
        return built, date


class NodeClient:
    """Talks to one S3 node. Use as an async context manager or call close()."""

    def __init__(self, node_id: str, endpoint: str, cfg: S3Config) -> None:
        self.node_id = node_id
        self.endpoint = endpoint
        self.bucket = cfg.bucket
        self._cfg = cfg
        secure = endpoint.startswith("https://")
        host = endpoint.split("://", 1)[-1].rstrip("/")
        # sock_connect, not connect: aiohttp's ``connect`` also counts the wait for a
        # free pooled connection, so under a burst of writes (16 multipart uploads, 4
        # parts each) calls queued behind the pool failed as "Connection timeout" and
        # healthy nodes were marked suspect. Queueing is bounded upstream (the gateway's
        # transfer limit, and each call's request_timeout_s, queue included); a node
        # that does not accept a connection still fails within CONNECT_TIMEOUT_S.
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=min(CONNECT_TIMEOUT_S, cfg.request_timeout_s),
            sock_read=cfg.request_timeout_s)
        # The Minio client validates its arguments: build it first so a bad config
        # cannot leave an open session behind.
        self._minio = _Minio(host, access_key=cfg.access_key, secret_key=cfg.secret_key,
                             secure=secure, region=cfg.region)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=POOL_CONNECTIONS_PER_NODE), timeout=timeout)
        self._minio.set_session(self._session)

    async def close(self) -> None:
        await self._session.close()

    async def __aenter__(self) -> NodeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- calls -------------------------------------------------------------------

    async def put(self, key: str, data: bytes, sha256_hex: str | None = None, *,
                  retries: int | None = None) -> None:
        headers: DictType = {_SHA_HEADER: sha256_hex or hashlib.sha256(data).hexdigest()}

        async def call() -> None:
            # A fresh body per attempt: aiohttp closes a payload once sent.
            await self._minio._put_object(self.bucket, key, _WholeBody(data),  # type: ignore[arg-type]
                                          headers)

        await self._retrying("put", call, retries, sent=len(data))
        S3_BYTES.labels(self.node_id, "out").inc(len(data))

    async def get(self, key: str, offset: int = 0, length: int = 0, *,
                  retries: int | None = None) -> bytes:
        """The object's bytes; ``length=0`` means to the end."""

        async def call() -> bytes:
            resp = await self._minio.get_object(self.bucket, key, offset=offset, length=length)
            try:
                return await resp.read()
            finally:
                resp.release()

        data = await self._retrying("get", call, retries)
        S3_BYTES.labels(self.node_id, "in").inc(len(data))
        return data

    async def head(self, key: str) -> int:
        """The object's size; ObjectNotFound if it is absent."""
        return (await self.stat(key))[0]

    async def stat(self, key: str) -> tuple[int, datetime | None]:
        """The object's size and last-modified time (the node's clock, None if it did not
        say); ObjectNotFound if it is absent."""
        stat = await self._retrying("head", lambda: self._minio.stat_object(self.bucket, key))
        return int(stat.size or 0), stat.last_modified

    async def exists(self, key: str) -> bool:
        try:
            await self.head(key)
        except ObjectNotFound:
            return False
        return True

    async def delete(self, key: str) -> None:
        await self._retrying("delete", lambda: self._minio.remove_object(self.bucket, key))

    async def list(self, prefix: str = "") -> AsyncIterator[tuple[str, int]]:
        """``(key, size)`` of every object under ``prefix``."""
        try:
            async for obj in self._minio.list_objects(self.bucket, prefix=prefix,
                                                      recursive=True):
                yield str(obj.object_name), int(obj.size or 0)
        except Exception as exc:
            raise self._translate(exc) from exc

    async def list_with_times(self, prefix: str = ""
                              ) -> AsyncIterator[tuple[str, int, datetime | None]]:
        """``(key, size, last_modified)`` of every object under ``prefix``, in key order.

        Streamed a listing page (1000 keys) at a time; ``last_modified`` is the node's
        clock (timezone-aware), None if the node did not say.
        """
        try:
            async for obj in self._minio.list_objects(self.bucket, prefix=prefix,
                                                      recursive=True):
                yield str(obj.object_name), int(obj.size or 0), obj.last_modified
        except Exception as exc:
            raise self._translate(exc) from exc

    async def ping(self) -> None:
        """The node answers and holds the chunk bucket."""
        exists = await self._retrying("ping", lambda: self._minio.bucket_exists(self.bucket),
                                      retries=0)
        if not exists:
            raise StorageRejected(self.node_id, f"bucket {self.bucket!r} does not exist")

    # -- plumbing ----------------------------------------------------------------

    async def _retrying(self, op: str, call: Callable[[], Awaitable[T]],
                        retries: int | None = None, *, sent: int = 0) -> T:
        """``call`` with retries, in one client span (node id, operation, bytes moved,
        outcome); retried attempts are events of that span, not spans of their own."""
        with sampled_span(_TRACER, f"s3 {op}", SpanKind.CLIENT, record_exception=False,
                          set_status_on_exception=False) as span:
            if span.is_recording():
                span.set_attributes({"dfms.node.id": self.node_id, "dfms.s3.operation": op,
                                     "http.request.method": _HTTP_METHODS.get(op, "_OTHER"),
                                     "server.address": self.endpoint})
            try:
                result = await self._attempts(op, call, retries)
            except StorageError as exc:
                _end_span(span, exc)
                raise
            moved = len(result) if isinstance(result, bytes) else sent
            if moved:
                span.set_attribute("dfms.s3.bytes", moved)
            _end_span(span, None)
            return result

    async def _attempts(self, op: str, call: Callable[[], Awaitable[T]],
                        retries: int | None) -> T:
        attempts = (self._cfg.max_retries if retries is None else retries) + 1
        for attempt in range(attempts):
            start = time.perf_counter()
            try:
                async with asyncio.timeout(self._cfg.request_timeout_s):
                    result = await call()
            except Exception as exc:
                error = self._translate(exc)
                S3_REQUESTS.labels(self.node_id, op, type(error).__name__).inc()
                if not isinstance(error, NodeUnavailable) or attempt == attempts - 1:
                    raise error from exc
                trace.get_current_span().add_event("retry", {"error": str(error)})
                await asyncio.sleep(self._backoff(attempt))
                continue
            S3_SECONDS.labels(self.node_id, op).observe(time.perf_counter() - start,
                                                        trace_exemplar())
            S3_REQUESTS.labels(self.node_id, op, "ok").inc()
            return result
        raise AssertionError("unreachable")

    @staticmethod
    def _backoff(attempt: int) -> float:
        delay = min(RETRY_MAX_DELAY_S, RETRY_BASE_DELAY_S * 2.0**attempt)
        return delay * (0.5 + random.random() / 2)  # jitter keeps retries from aligning

    def _translate(self, exc: BaseException) -> StorageError:
        if isinstance(exc, StorageError):
            return exc
        if isinstance(exc, S3Error):
            if exc.code in _NOT_FOUND:
                return ObjectNotFound(self.node_id, f"{exc.code}: {exc.message}")
            status = exc.response.status if exc.response is not None else 0
            if status >= 500 or exc.code in {"SlowDown", "InternalError", "ServiceUnavailable"}:
                return NodeUnavailable(self.node_id, f"{exc.code}: {exc.message}")
            return StorageRejected(self.node_id, f"{exc.code}: {exc.message}")
        if isinstance(exc, ServerError | InvalidResponseError):
            code = getattr(exc, "_status_code", None) or getattr(exc, "_code", 0)
            if isinstance(code, int) and code == 404:
                return ObjectNotFound(self.node_id, str(exc))
            return NodeUnavailable(self.node_id, f"server error: {exc}")
        if isinstance(exc, TimeoutError | aiohttp.ClientError | OSError):
            return NodeUnavailable(self.node_id, f"{type(exc).__name__}: {exc}")
        return StorageError(self.node_id, f"{type(exc).__name__}: {exc}")
