"""A service that fails to start releases what it had opened (issue 12, item 6)."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
import pytest

from dfms.chunkservice import service as chunk_service_module
from dfms.chunkservice.placement import Placement
from dfms.chunkservice.service import ChunkService
from dfms.config import load_config
from dfms.errors import DependencyUnavailable
from dfms.events.consumer import EventConsumer
from dfms.events.topics import FILES_TOPIC
from tests.support.cluster import ClusterHandle


def _with_application_name(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    query = [*parse_qsl(parts.query), ("application_name", name)]
    return urlunsplit(parts._replace(query=urlencode(query)))


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port bound and listening (without SO_REUSEPORT) for the test."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


async def _connections(db: asyncpg.Connection, application_name: str) -> int:
    return int(await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
        application_name))


async def test_chunk_service_on_a_taken_port_fails_clearly_and_leaks_nothing(
        cluster: ClusterHandle, db: asyncpg.Connection, taken_port: int,
        monkeypatch: pytest.MonkeyPatch) -> None:
    app_name = f"dfms-taken-port-{uuid.uuid4().hex[:8]}"
    dsn = _with_application_name(cluster.postgres_dsn, app_name)
    cfg = load_config(cluster.data_dir / "dfms.yaml", env={}, overrides={
        "postgres": {"dsn": dsn, "pool_min_size": 2},
        "chunk_service": {"host": "127.0.0.1", "grpc_port": taken_port, "ops_port": 0}})
    placements: list[Placement] = []

    class RecordedPlacement(Placement):
        async def start(self) -> None:
            placements.append(self)
            await super().start()

    monkeypatch.setattr(chunk_service_module, "Placement", RecordedPlacement)
    assert await _connections(db, app_name) == 0
    svc = ChunkService(cfg)

    with pytest.raises(OSError, match=rf"cannot listen on 127\.0\.0\.1:{taken_port}"):
        await svc.start()

    # The start got as far as the pool and the placement (with its node clients) ...
    assert len(placements) == 1
    placement = placements[0]
    # ... and undid both: no refresh loop, no node clients, no pool connections.
    assert placement._task is None and placement._clients == {}
    assert svc._pool is None and svc._placement is None and svc._server is None
    assert await _connections(db, app_name) == 0
    await svc.stop()  # safe after a failed start, and a no-op
    assert await _connections(db, app_name) == 0


async def test_chunk_service_starts_once_the_port_is_free(cluster: ClusterHandle,
                                                          db: asyncpg.Connection) -> None:
    """The same service object starts cleanly after a failed start (nothing half-set)."""
    app_name = f"dfms-retry-start-{uuid.uuid4().hex[:8]}"
    dsn = _with_application_name(cluster.postgres_dsn, app_name)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        cfg = load_config(cluster.data_dir / "dfms.yaml", env={}, overrides={
            "postgres": {"dsn": dsn},
            "chunk_service": {"host": "127.0.0.1", "grpc_port": port, "ops_port": 0}})
        svc = ChunkService(cfg)
        with pytest.raises(OSError):
            await svc.start()
    await svc.start()
    try:
        assert svc.bound_port == port
        assert await _connections(db, app_name) >= 1
    finally:
        await svc.stop()
    assert await _connections(db, app_name) == 0


async def test_event_consumer_closes_its_own_pool_when_kafka_is_unreachable(
        cluster: ClusterHandle, db: asyncpg.Connection) -> None:
    app_name = f"dfms-consumer-start-{uuid.uuid4().hex[:8]}"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    cfg = load_config(cluster.data_dir / "dfms.yaml", env={}, overrides={
        "postgres": {"dsn": _with_application_name(cluster.postgres_dsn, app_name),
                     "pool_min_size": 2},
        "kafka": {"bootstrap_servers": f"127.0.0.1:{closed_port}", "request_timeout_s": 2.0}})

    async def handler(conn: object, event: object) -> None:
        raise AssertionError("no event expected")

    consumer = EventConsumer(cfg, f"lifecycle-{app_name}", [FILES_TOPIC], handler)
    with pytest.raises(DependencyUnavailable, match="Kafka unreachable"):
        await consumer.start()
    assert consumer._pool is None and consumer._consumer is None
    assert await _connections(db, app_name) == 0
    await consumer.stop()
