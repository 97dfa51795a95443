"""A dependency outage is named at the edges: PostgreSQL's failures become
MetadataUnavailable, an unreachable chunk service ChunkServiceUnavailable, and the
gateway answers each with 503, ``Retry-After`` and its own code, never an address.

Real sockets: a loopback port nobody listens on refuses at once, and a real gRPC
server killed mid-call breaks the connection under the client.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from dfms import errors as deps
from dfms.chunkservice.client import ChunkClient
from dfms.chunkservice.errors import ChunkServiceError
from dfms.chunkservice.status import ERROR_TYPES
from dfms.gateway.error_table import ANSWERS, api_error
from dfms.gateway.middleware import error_middleware, request_id_middleware
from dfms.metadata.db import metadata_outage

CODES = {deps.MetadataUnavailable: "metadata_unavailable",
         deps.ChunkServiceUnavailable: "chunk_service_unavailable",
         deps.StorageUnavailable: "storage_unavailable",
         deps.RateLimiterUnavailable: "rate_limiter_unavailable",
         deps.BrokerUnavailable: "service_unavailable",
         deps.DependencyUnavailable: "service_unavailable"}


def closed_port() -> int:
    """A loopback port that was just free: connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def refused_by_postgres() -> BaseException:
    try:
        await asyncpg.connect(f"postgresql://u:p@127.0.0.1:{closed_port()}/db", timeout=5)
    except Exception as exc:
        return exc
    raise AssertionError("a closed port accepted a PostgreSQL connection")


def test_every_dependency_answers_503_with_retry_after_and_its_code() -> None:
    for cls, code in CODES.items():
        err = api_error(cls("postgresql://dfms:s3cret@10.1.2.3:5432 refused"))
        assert (err.status, err.code) == (503, code), cls.__name__
        assert int(err.headers["Retry-After"]) >= 1, cls.__name__
        # The message names the dependency, never the address or a secret in the cause.
        assert "10.1.2.3" not in err.message and "s3cret" not in err.message, err.message
    assert all(a.status != 502 for c, a in ANSWERS.items()
               if issubclass(c, deps.DependencyUnavailable))


async def test_postgres_refusing_is_an_outage_and_other_errors_are_not() -> None:
    refused = await refused_by_postgres()
    assert isinstance(refused, OSError)  # what asyncpg lets through from connect()
    found = metadata_outage(refused)
    assert isinstance(found, deps.MetadataUnavailable) and found.__cause__ is refused
    for exc in (asyncpg.exceptions.ConnectionDoesNotExistError("closed mid-operation"),
                asyncpg.exceptions.AdminShutdownError("terminating connection"),
                asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
                asyncpg.exceptions.TooManyConnectionsError("too many clients")):
        assert isinstance(metadata_outage(exc), deps.MetadataUnavailable), exc
    # The same kinds of error raised anywhere else, and PostgreSQL's answers about
    # the request itself, are not outages.
    for exc in (ConnectionRefusedError("not from asyncpg"), TimeoutError(),
                asyncpg.exceptions.UniqueViolationError("duplicate key"),
                asyncpg.InterfaceError("another operation is in progress"),
                ValueError("x")):
        assert metadata_outage(exc) is None, exc


def test_an_error_raised_while_handling_a_broken_connection_is_an_outage() -> None:
    """asyncpg's pool, releasing a connection that broke mid-query, fails on the reset
    with an InternalClientError; the outage is what it was handling."""
    state = "cannot switch to state 15; another operation (2) is in progress"
    try:
        try:
            raise asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed")
        except asyncpg.PostgresError:
            raise asyncpg.exceptions.InternalClientError(state) from None
    except asyncpg.exceptions.InternalClientError as exc:
        assert exc.__cause__ is None and exc.__context__ is not None
        assert isinstance(metadata_outage(exc), deps.MetadataUnavailable)


def _pg_message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


async def _dying_postgres(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Speak PostgreSQL's start-up, then do what a dying server does to an idle
    connection: send FATAL. The socket stays open until the client closes it, as it
    does for a moment when PostgreSQL is killed."""
    (length,) = struct.unpack("!I", await reader.readexactly(4))
    await reader.readexactly(length - 4)
    hello = _pg_message(b"R", struct.pack("!I", 0))  # authentication ok
    for key, value in ((b"server_version", b"18.0"), (b"client_encoding", b"UTF8")):
        hello += _pg_message(b"S", key + b"\0" + value + b"\0")
    writer.write(hello + _pg_message(b"K", struct.pack("!II", 1, 2)) + _pg_message(b"Z", b"I"))
    writer.write(_pg_message(b"E", b"SFATAL\0VFATAL\0C57P01\0Mterminating connection due "
                                   b"to unexpected postmaster exit\0\0"))
    await writer.drain()
    while await reader.read(65536):
        pass
    writer.close()


async def test_a_statement_on_a_connection_the_server_is_killing_is_an_outage() -> None:
    """The CI's red run: PostgreSQL SIGKILLed, an idle pooled connection got the FATAL
    first, and the next statement on it failed with a bare InternalClientError (no
    cause): that upload answered 500 instead of 503 metadata_unavailable."""
    server = await asyncio.start_server(_dying_postgres, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    con = await asyncpg.connect(host="127.0.0.1", port=port, user="u", database="d",
                                ssl=False, timeout=5)
    try:
        await asyncio.sleep(0.2)  # the FATAL arrives while the connection is idle
        with pytest.raises(asyncpg.exceptions.InternalClientError) as raised:
            await con.fetchrow("SELECT 1")
        assert raised.value.__context__ is None and raised.value.__cause__ is None
        assert isinstance(metadata_outage(raised.value), deps.MetadataUnavailable)
        answer = api_error(raised.value)
        assert (answer.status, answer.code) == (503, "metadata_unavailable")
    finally:
        con.terminate()
        server.close()
        await server.wait_closed()


async def test_the_gateway_answers_a_refused_database_with_503_metadata_unavailable() -> None:
    async def handler(request: web.Request) -> web.Response:
        await asyncpg.connect(f"postgresql://u:p@127.0.0.1:{closed_port()}/db", timeout=5)
        raise AssertionError("unreachable")

    app = web.Application(middlewares=[request_id_middleware, error_middleware])
    app.router.add_get("/x", handler)
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/x")
        body: dict[str, Any] = await resp.json()
        assert resp.status == 503 and body["error"]["code"] == "metadata_unavailable"
        assert resp.headers["Retry-After"] == "5"
        assert "127.0.0.1" not in body["error"]["message"]


def test_the_chunk_service_sends_each_dependency_by_name() -> None:
    for cls in (deps.MetadataUnavailable, deps.StorageUnavailable, deps.BrokerUnavailable,
                deps.DependencyUnavailable):
        assert ERROR_TYPES[cls.__name__] is cls


async def _frames() -> AsyncIterator[bytes]:
    yield b"never sent"


@pytest.mark.parametrize("call", ["upload", "download"])
async def test_an_unreachable_chunk_service_fails_within_the_connect_timeout(call: str) -> None:
    async with ChunkClient(f"127.0.0.1:{closed_port()}", connect_timeout_s=1.0) as client:
        with pytest.raises(deps.ChunkServiceUnavailable) as info:
            if call == "upload":
                await client.upload(_frames())
            else:
                async for _ in client.download(chunks=[]):
                    pass
    assert not isinstance(info.value, ChunkServiceError)
    assert api_error(info.value).code == "chunk_service_unavailable"


async def _endless_frames() -> AsyncIterator[bytes]:
    while True:
        yield bytes(64 * 1024)


async def _read_line(proc: asyncio.subprocess.Process) -> str:
    assert proc.stdout is not None
    return (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().strip()


@pytest.mark.parametrize("frames_read", [1, 3, 6])
async def test_a_chunk_service_killed_mid_upload_is_an_outage(frames_read: int) -> None:
    """Killed while the client's sends are queued behind flow control, the call fails in
    the client's own transport (grpc says INTERNAL); the server never spoke, so it is
    503 chunk_service_unavailable, not 502 storage_error."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.support.slow_chunk_server",
        stdout=asyncio.subprocess.PIPE, cwd=Path(__file__).parents[2])
    try:
        port = int(await _read_line(proc))
        async with ChunkClient(f"127.0.0.1:{port}", connect_timeout_s=5.0,
                               frame_size_bytes=64 * 1024) as client:
            upload = asyncio.create_task(client.upload(_endless_frames()))
            for _ in range(frames_read):
                assert await _read_line(proc) == "frame"
            proc.kill()
            with pytest.raises(deps.ChunkServiceUnavailable) as info:
                await asyncio.wait_for(upload, 30)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
    assert api_error(info.value).code == "chunk_service_unavailable"


@pytest.mark.parametrize("call", ["upload", "download"])
async def test_a_call_started_just_after_the_chunk_service_died_fails_fast(
        call: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The channel was ready when the client checked, then the service was killed before
    the call went out (the race an outage drill hit): the call fails at once instead of
    waiting, without a deadline, for the service to come back."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.support.slow_chunk_server",
        stdout=asyncio.subprocess.PIPE, cwd=Path(__file__).parents[2])
    try:
        port = int(await _read_line(proc))
        async with ChunkClient(f"127.0.0.1:{port}", connect_timeout_s=5.0) as client:
            await client.wait_ready()
            proc.kill()
            await proc.wait()

            async def already_checked() -> None:
                pass
            monkeypatch.setattr(client, "_connected", already_checked)
            with pytest.raises(deps.ChunkServiceUnavailable):
                async with asyncio.timeout(10):
                    if call == "upload":
                        await client.upload(_frames())
                    else:
                        async for _ in client.download(chunks=[]):
                            pass
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
