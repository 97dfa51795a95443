"""Lifecycles that clean up: a failed start undoes itself (issue 12, item 6)."""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import sys

import pytest

from dfms.config import load_config
from dfms.errors import DependencyUnavailable
from dfms.events.consumer import EventConsumer
from dfms.runtime.service import Service


class Resource:
    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False
        self.closes = 0

    def close(self) -> None:
        self.closed = True
        self.closes += 1


class HalfWay(Service):
    """Opens a pool and a client, then fails where a server would bind its port."""

    name = "half_way"

    def __init__(self, fail: bool = True, cleanup_fails: bool = False) -> None:
        super().__init__()
        self.fail = fail
        self.cleanup_fails = cleanup_fails
        self.opened: list[Resource] = []
        self.pool: Resource | None = None
        self.client: Resource | None = None
        self.task: asyncio.Task[None] | None = None
        self.starts = 0

    async def _start(self) -> None:
        self.starts += 1
        self.pool = Resource("pool")
        self.opened.append(self.pool)
        self.task = asyncio.create_task(asyncio.sleep(3600))
        await asyncio.sleep(0)
        self.client = Resource("client")
        self.opened.append(self.client)
        if self.fail:
            raise OSError("address already in use")

    async def _stop(self) -> None:
        task, self.task = self.task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        for attr in ("client", "pool"):
            res = getattr(self, attr)
            setattr(self, attr, None)
            if res is not None:
                res.close()
        if self.cleanup_fails:
            raise RuntimeError("cleanup broke too")


async def test_a_failed_start_undoes_what_it_did_and_reraises() -> None:
    svc = HalfWay()
    with pytest.raises(OSError, match="address already in use"):
        await svc.start()
    assert [r.closed for r in svc.opened] == [True, True]
    assert svc.task is None
    await svc.stop()  # safe after a failed start: nothing is closed twice
    await svc.stop()
    assert [r.closes for r in svc.opened] == [1, 1]


async def test_start_after_a_failed_start_starts_afresh() -> None:
    svc = HalfWay()
    with pytest.raises(OSError):
        await svc.start()
    svc.fail = False
    await svc.start()
    await svc.start()  # idempotent
    assert svc.starts == 2
    assert svc.pool is not None and not svc.pool.closed
    await svc.stop()
    assert all(r.closed for r in svc.opened)


async def test_a_failing_cleanup_is_logged_and_the_start_error_wins(
        caplog: pytest.LogCaptureFixture) -> None:
    svc = HalfWay(cleanup_fails=True)
    with caplog.at_level(logging.ERROR), pytest.raises(OSError, match="already in use"):
        await svc.start()
    assert all(r.closed for r in svc.opened)
    assert "cleaning up after a failed start failed" in caplog.text
    await svc.stop()


async def test_a_cancelled_start_cleans_up_too() -> None:
    gate = asyncio.Event()

    class Slow(HalfWay):
        async def _start(self) -> None:
            self.pool = Resource("pool")
            self.opened.append(self.pool)
            await gate.wait()  # e.g. a broker that does not answer

    svc = Slow()
    task = asyncio.create_task(svc.start())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [r.closed for r in svc.opened] == [True]
    await svc.stop()
    assert [r.closes for r in svc.opened] == [1]


async def test_concurrent_starts_start_once_and_stop_waits_for_start() -> None:
    svc = HalfWay(fail=False)
    await asyncio.gather(svc.start(), svc.start(), svc.stop())
    assert svc.starts == 1
    # The stop queued behind the starts ran after them: everything is closed.
    assert all(r.closed for r in svc.opened)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_event_consumer_is_a_service_that_cleans_up_a_failed_start() -> None:
    cfg = load_config(env={"DFMS_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{_closed_port()}",
                           "DFMS_KAFKA__REQUEST_TIMEOUT_S": "2"})

    async def handler(conn: object, event: object) -> None:
        raise AssertionError("no event expected")

    pool = object()  # given, so the consumer must not close it (nor need PostgreSQL)
    consumer = EventConsumer(cfg, "lifecycle-test", ["dfms.files"], handler,
                             pool=pool)  # type: ignore[arg-type]
    assert isinstance(consumer, Service)
    assert consumer.name == "lifecycle-test"
    with pytest.raises(DependencyUnavailable, match="Kafka unreachable"):
        await consumer.start()
    assert consumer._consumer is None and consumer._task is None
    assert not consumer.running
    assert consumer._pool is pool
    await consumer.stop()  # a no-op after the failed start
    await consumer.stop()


def test_importing_the_gateway_does_not_import_the_chunk_service_server() -> None:
    """The gateway reads chunks itself (the store's verified reads) but writes through
    the chunk service: its gRPC server and write pipeline stay out of the gateway."""
    code = ("import dfms.gateway.app, sys\n"
            "assert 'dfms.chunkservice.service' not in sys.modules\n"
            "assert 'dfms.chunkservice.reader' in sys.modules\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
