"""Outbox relay throughput: events/s from PostgreSQL to the cluster's Kafka broker.

N events (a typical ``chunk.stored``-sized payload) are inserted into the outbox
while the cluster's own relay is stopped; then ``OutboxRelay.run_once()`` runs in
this process until the backlog is empty. The limit run sends the same N messages
(same keys, values, headers, batching and ``acks=all``) with a bare aiokafka
producer: the ratio relay / raw is what the relay's own work (claim, mark
published, order checks) costs on top of the broker. Both run twice: against the
cluster's durable broker (Tansu on its own S3 store) and against a memory-only
Tansu started beside it (what the local stack ran before), for the cost of
durability.

    python benchmarks/bench_relay.py [--events 20000] [--data-dir D]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
from harness import DATA_DIR_HELP, run_on_cluster

from dfms.config import Config
from dfms.events.outbox import _INSERT
from dfms.events.relay import OutboxRelay
from dfms.events.topics import CHUNKS_TOPIC, ensure_topics, start_producer
from dfms.localstack import binaries, servers
from dfms.localstack.handle import ClusterHandle
from dfms.localstack.ports import LOOPBACK, PortAllocator

PAYLOAD = {"sha256": "ab" * 32, "size": 1 << 20, "node_ids": ["node-1", "node-2", "node-3"]}
INSERT_BATCH = 5000


async def fill_outbox(conn: asyncpg.Connection, count: int) -> None:
    body = json.dumps(PAYLOAD)
    for start in range(0, count, INSERT_BATCH):
        rows = [(uuid.uuid4(), CHUNKS_TOPIC, f"key-{i % 997}", "bench.relay", body, 1,
                 None) for i in range(start, min(count, start + INSERT_BATCH))]
        await conn.executemany(_INSERT, rows)


async def relay_run(cluster: ClusterHandle, cfg: Config, count: int) -> float:
    conn = await asyncpg.connect(cluster.postgres_dsn)
    try:
        await fill_outbox(conn, count)
    finally:
        await conn.close()
    relay = OutboxRelay(cfg)
    try:
        await relay.run_once()  # producer start and topic metadata outside the timing
        started = time.perf_counter()
        while True:
            stats = await relay.run_once()
            if not stats.counters.get("published") and stats.errors == 0:
                break
        return time.perf_counter() - started
    finally:
        await relay.close()


async def raw_run(cfg: Config, count: int) -> float:
    producer = await start_producer(cfg.kafka, "bench-raw", max_batch_size=256 * 1024,
                                    linger_ms=2)
    value = json.dumps({"event_id": str(uuid.uuid4()), "payload": PAYLOAD}).encode()
    try:
        started = time.perf_counter()
        futures = [await producer.send(CHUNKS_TOPIC, value=value,
                                       key=f"key-{i % 997}".encode(),
                                       headers=[("type", b"bench.relay")])
                   for i in range(count)]
        await asyncio.gather(*futures)
        return time.perf_counter() - started
    finally:
        await producer.stop()


@contextlib.asynccontextmanager
async def memory_broker() -> AsyncIterator[str]:
    """A memory-only Tansu beside the cluster's durable one (what `dfms up` ran before)."""
    port = PortAllocator().get("bench-kafka")
    url = f"tcp://{LOOPBACK}:{port}"
    proc = await asyncio.create_subprocess_exec(
        str(binaries.tansu()), "broker", "--listener-url", url, "--advertised-listener-url",
        url, "--storage-engine", "memory://tansu/", stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL)
    try:
        await servers.wait_ready("bench-kafka", lambda: servers.tcp_ready(port),
                                 lambda: proc.returncode is None)
        yield f"{LOOPBACK}:{port}"
    finally:
        proc.terminate()
        await proc.wait()


async def measure(cluster: ClusterHandle, cfg: Config, label: str, count: int) -> None:
    await ensure_topics(cfg.kafka)
    relay_s = await relay_run(cluster, cfg, count)
    raw_s = await raw_run(cfg, count)
    print(f"{label}, {count} events:")
    print(f"  relay (outbox -> Kafka): {relay_s:6.2f} s  {count / relay_s:8.0f} events/s")
    print(f"  raw producer (limit):    {raw_s:6.2f} s  {count / raw_s:8.0f} events/s")
    print(f"  ratio relay / raw: {raw_s / relay_s:.2f}")


async def bench(cluster: ClusterHandle, count: int) -> None:
    await cluster.control("stop", "event-relay")
    try:
        durable = cluster.config
        await measure(cluster, durable, f"durable broker ({cluster.info['kafka']['storage']})",
                      count)
        async with memory_broker() as bootstrap:
            memory = dataclasses.replace(durable, kafka=dataclasses.replace(
                durable.kafka, bootstrap_servers=bootstrap))
            await measure(cluster, memory, "memory broker (memory://tansu/)", count)
    finally:
        await cluster.control("start", "event-relay")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--data-dir", help=DATA_DIR_HELP)
    args = parser.parse_args()
    run_on_cluster(lambda cluster: bench(cluster, args.events), args.data_dir)


if __name__ == "__main__":
    main()
