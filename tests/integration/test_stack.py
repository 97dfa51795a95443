"""The local cluster is real: every part answers, keeps data, and stops cleanly."""

from __future__ import annotations

import asyncio
import io
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from miniopy_async import Minio

from dfms.events.topics import TOPICS
from dfms.metadata import migrate
from dfms.ring import store as ring_store
from tests.support.cluster import ClusterHandle, make_data_dir, pid_alive


def _minio(cluster: ClusterHandle, endpoint: str) -> Minio:
    cfg = cluster.config.s3
    return Minio(endpoint.removeprefix("http://"), access_key=cfg.access_key,
                 secret_key=cfg.secret_key, secure=False)


async def test_every_service_answers_health_ready_and_metrics(cluster: ClusterHandle) -> None:
    await cluster.control("start", "replication-manager")  # the suite keeps it stopped
    try:
        await check_every_service(cluster)
    finally:
        await cluster.control("stop", "replication-manager")


async def check_every_service(cluster: ClusterHandle) -> None:
    async with aiohttp.ClientSession() as http:
        for name, svc in cluster.info["services"].items():
            async with http.get(f"{svc['ops_url']}/health") as resp:
                assert resp.status == 200, name
                assert (await resp.json())["status"] == "ok"
            async with http.get(f"{svc['ops_url']}/ready") as resp:
                body = await resp.json()
                assert resp.status == 200, body
                assert all(dep["ok"] for dep in body["dependencies"].values())
            async with http.get(f"{svc['ops_url']}/metrics") as resp:
                assert resp.status == 200
                assert "dfms_service_up" in await resp.text()


async def test_cluster_file_lists_every_endpoint(cluster: ClusterHandle) -> None:
    info = cluster.info
    assert info["gateway_url"].startswith("http://127.0.0.1:")
    assert info["postgres"]["dsn"].startswith("postgresql://")
    assert info["redis"]["url"].startswith("redis://")
    assert info["kafka"]["bootstrap_servers"].startswith("127.0.0.1:")
    assert len(info["s3_nodes"]) == 3
    assert {n["zone"] for n in info["s3_nodes"]} == {"zone-a", "zone-b", "zone-c"}
    assert oct((cluster.data_dir / "cluster.json").stat().st_mode & 0o777) == "0o600"
    if not os.environ.get("DFMS_TEST_CLUSTER"):  # ours, started without --observability
        assert "prometheus" not in info and "prometheus" not in info["ports"]
        assert not (cluster.data_dir / "prometheus").exists()


async def test_postgres_is_migrated_and_ring_registered(cluster: ClusterHandle) -> None:
    conn = await asyncpg.connect(cluster.postgres_dsn)
    try:
        states = await migrate.status(conn)
        assert states and all(s.applied and s.checksum_ok for s in states)
        nodes = await conn.fetch("SELECT id, endpoint, data_dir FROM nodes ORDER BY id")
        assert [r["id"] for r in nodes] == ["node-1", "node-2", "node-3"]
        # so the health monitor reports each local node's disk
        assert [r["data_dir"] for r in nodes] == [
            str(cluster.data_dir.resolve() / "s3" / r["id"]) for r in nodes]
        ring = await ring_store.load_latest(conn)
        assert ring is not None
        assert sorted(m.node_id for m in ring.members) == ["node-1", "node-2", "node-3"]
    finally:
        await conn.close()


async def test_migrations_go_up_down_and_up_again(cluster: ClusterHandle) -> None:
    # A scratch database on the same server, so the shared schema stays intact.
    admin = await asyncpg.connect(cluster.postgres_dsn)
    scratch = f"dfms_mig_{secrets.token_hex(4)}"
    await admin.execute(f'CREATE DATABASE "{scratch}"')
    dsn = cluster.postgres_dsn.rsplit("/", 1)[0] + f"/{scratch}"
    conn = await asyncpg.connect(dsn)
    try:
        everything = migrate.discover()
        applied = await migrate.migrate_up(conn)
        assert [m.version for m in applied] == [m.version for m in everything]
        assert await migrate.migrate_up(conn) == []  # idempotent
        tables = await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname='public'")
        reverted = await migrate.migrate_down(conn, steps=len(everything))
        assert [m.version for m in reverted] == [m.version for m in reversed(everything)]
        left = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")
        assert [r["tablename"] for r in left] == ["schema_migrations"]
        await migrate.migrate_up(conn)
        again = await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname='public'")
        assert again == tables
        assert all(s.applied for s in await migrate.status(conn))
    finally:
        await conn.close()
        await admin.execute(f'DROP DATABASE "{scratch}"')
        await admin.close()


async def test_a_failing_migration_leaves_nothing_behind(cluster: ClusterHandle) -> None:
    conn = await asyncpg.connect(cluster.postgres_dsn)
    try:
        bad = migrate.Migration(999, "broken", "CREATE TABLE half_done (id int); SELECT 1/0;",
                                "DROP TABLE half_done;")
        with pytest.raises(asyncpg.DivisionByZeroError):
            async with conn.transaction():
                await conn.execute(bad.up_sql)
        assert await conn.fetchval("SELECT to_regclass('half_done')") is None
    finally:
        await conn.close()


async def test_redis_round_trip(cluster: ClusterHandle) -> None:
    client = aioredis.from_url(cluster.redis_url)
    try:
        key = f"test:{uuid.uuid4()}"
        await client.set(key, b"value", ex=30)
        assert await client.get(key) == b"value"
        assert 0 < await client.ttl(key) <= 30
        await client.delete(key)
        assert await client.get(key) is None
    finally:
        await client.aclose()


async def test_redis_refuses_clients_without_the_password(cluster: ClusterHandle) -> None:
    port = cluster.info["redis"]["port"]
    client = aioredis.from_url(f"redis://127.0.0.1:{port}/0")
    try:
        with pytest.raises(Exception, match=r"(?i)auth"):
            await client.ping()
    finally:
        await client.aclose()


async def test_kafka_topics_exist_and_a_consumer_group_reads_what_was_produced(
        cluster: ClusterHandle) -> None:
    topic = "dfms.chunks"
    assert topic in TOPICS
    marker = uuid.uuid4().hex.encode()
    producer = AIOKafkaProducer(bootstrap_servers=cluster.kafka_bootstrap,
                                enable_idempotence=False)
    await producer.start()
    try:
        for i in range(3):
            await producer.send_and_wait(topic, marker + b":%d" % i, key=marker)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=cluster.kafka_bootstrap,
                                group_id=f"test-{marker.decode()}",
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        got: list[bytes] = []
        deadline = time.monotonic() + 60
        while len(got) < 3 and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=1000)
            got += [m.value for msgs in batch.values() for m in msgs
                    if m.value and m.value.startswith(marker)]
        assert got == [marker + b":%d" % i for i in range(3)]  # one key: one partition, in order
        await consumer.commit()
    finally:
        await consumer.stop()


async def test_put_get_delete_on_every_s3_node(cluster: ClusterHandle) -> None:
    bucket = cluster.config.s3.bucket
    payload = os.urandom(256 * 1024)
    for node in cluster.s3_nodes:
        client = _minio(cluster, node["endpoint"])
        try:
            key = f"te/st/{uuid.uuid4().hex}"
            await client.put_object(bucket, key, io.BytesIO(payload), len(payload))
            resp = await client.get_object(bucket, key)
            try:
                assert await resp.read() == payload, node["id"]
            finally:
                resp.close()
            await client.remove_object(bucket, key)
            keys = [o.object_name async for o in client.list_objects(bucket, prefix="te/st/")]
            assert key not in keys
        finally:
            await client.close_session()


async def test_s3_nodes_refuse_wrong_credentials(cluster: ClusterHandle) -> None:
    node = cluster.s3_nodes[0]
    client = Minio(node["endpoint"].removeprefix("http://"), access_key="nobody",
                   secret_key="wrong-secret", secure=False)
    try:
        with pytest.raises(Exception, match=r"(?i)access|signature|denied|invalid"):
            await client.put_object(cluster.config.s3.bucket, "x/y/z", io.BytesIO(b"1"), 1)
    finally:
        await client.close_session()


def test_second_up_on_the_same_data_dir_fails_clearly(cluster: ClusterHandle) -> None:
    if cluster.proc is None:
        pytest.skip("attached to an external cluster")  # its lock is held elsewhere
    result = subprocess.run(
        [sys.executable, "-m", "dfms", "--data-dir", str(cluster.data_dir), "up",
         "--gateway-port", "0"], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert "already in use by another `dfms up`" in result.stderr
    assert cluster.proc.poll() is None  # the running cluster is untouched


def test_cli_reads_the_cluster_config(cluster: ClusterHandle) -> None:
    run = [sys.executable, "-m", "dfms", "--data-dir", str(cluster.data_dir)]
    status = subprocess.run([*run, "migrate", "status"], capture_output=True, text=True,
                            timeout=60, check=True)
    assert "0001_cluster" in status.stdout and "pending" not in status.stdout
    after = subprocess.run([sys.executable, "-m", "dfms", "migrate", "status", "--data-dir",
                            str(cluster.data_dir)], capture_output=True, text=True, timeout=60,
                           check=True, cwd="/")
    assert after.stdout == status.stdout  # the global option after the subcommand
    up = subprocess.run([*run, "migrate", "up"], capture_output=True, text=True, timeout=60,
                        check=True)
    assert "0 migration(s) applied" in up.stdout
    assert "Kafka topics: all present" in up.stdout, up.stdout + up.stderr
    shown = subprocess.run([*run, "config", "show"], capture_output=True, text=True,
                           timeout=60, check=True)
    secret = cluster.config.s3.secret_key
    assert secret and secret not in shown.stdout
    assert "***" in shown.stdout
    if cluster.proc is not None:
        ps = subprocess.run([*run, "cluster", "ps"], capture_output=True, text=True,
                            timeout=60, check=True)
        header, *lines = ps.stdout.splitlines()
        assert header.split() == ["NAME", "STATE", "PID", "RSS", "UPTIME", "RESTARTS",
                                  "LISTENS", "ON"]
        rows = {line.split()[0]: line.split() for line in lines}
        assert {"postgres", "redis", "kafka", "kafka-store", "node-1", "chunk-service",
                "gateway", "gc-worker", "event-relay", "health-monitor"} <= set(rows)
        gateway = rows["gateway"]
        assert gateway[1] == "running" and int(gateway[2]) == cluster.info["services"][
            "gateway"]["pid"]
        assert gateway[4] == "MiB" and int(gateway[3]) > 10  # resident memory
        assert gateway[-1] == cluster.gateway_url.removeprefix("http://")
        assert rows["replication-manager"][1] in ("running", "stopped")  # tests toggle it


async def _write_marks(info: dict[str, object], secret_key: str, mark: str) -> None:
    pg = info["postgres"]
    conn = await asyncpg.connect(pg["dsn"])  # type: ignore[index]
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS survive (mark text)")
        await conn.execute("INSERT INTO survive VALUES ($1)", mark)
    finally:
        await conn.close()
    r = aioredis.from_url(info["redis"]["url"])  # type: ignore[index]
    await r.set("survive", mark)
    await r.aclose()
    for node in info["s3_nodes"]:  # type: ignore[attr-defined]
        client = Minio(node["endpoint"].removeprefix("http://"), access_key="dfmsadmin",
                       secret_key=secret_key, secure=False)
        await client.put_object("dfms-chunks", "su/rv/ive", io.BytesIO(mark.encode()),
                                len(mark))
        await client.close_session()


async def _read_marks(info: dict[str, object], secret_key: str) -> list[str]:
    conn = await asyncpg.connect(info["postgres"]["dsn"])  # type: ignore[index]
    try:
        marks = [await conn.fetchval("SELECT mark FROM survive")]
        ring = await ring_store.load_latest(conn)
        assert ring is not None
        marks.append(f"ring:{len(ring.members)}@{ring.epoch}")
    finally:
        await conn.close()
    r = aioredis.from_url(info["redis"]["url"])  # type: ignore[index]
    marks.append((await r.get("survive") or b"").decode())
    await r.aclose()
    for node in info["s3_nodes"][:2]:  # type: ignore[index]
        client = Minio(node["endpoint"].removeprefix("http://"), access_key="dfmsadmin",
                       secret_key=secret_key, secure=False)
        resp = await client.get_object("dfms-chunks", "su/rv/ive")
        marks.append((await resp.read()).decode())
        resp.close()
        await client.close_session()
    return marks


async def test_data_survives_restart_and_stop_leaves_no_process() -> None:
    """A second cluster: start with 2 nodes, write, stop, start with 5, read back."""
    base = make_data_dir("dfms-restart-")
    handle = ClusterHandle(data_dir=base / "data")
    handle.data_dir.mkdir()
    try:
        await asyncio.to_thread(handle.start, "--nodes", "2")
        secret = handle.config.s3.secret_key
        await _write_marks(handle.info, secret, "kept")
        first_pids = [*handle.pids(), int(handle.info["pid"])]
        assert await asyncio.to_thread(handle.stop) == 0
        leftover = [p for p in first_pids if pid_alive(p)]
        assert leftover == [], f"processes left behind: {leftover}"
        assert json.loads((handle.data_dir / "cluster.json").read_text())["state"] == "stopped"

        await asyncio.to_thread(handle.start, "--nodes", "5")
        assert len(handle.info["s3_nodes"]) == 5
        assert handle.log_text().count("Next steps (printed on a first start)") == 1
        marks = await _read_marks(handle.info, secret)
        # The ring grew from 2 members (epoch 1) to 5 (epoch 2); data kept everywhere.
        assert marks == ["kept", "ring:5@2", "kept", "kept", "kept"]
    finally:
        await asyncio.to_thread(handle.stop)
        shutil.rmtree(base, ignore_errors=True)


async def test_sigusr2_writes_a_services_stacks_to_its_log_and_it_goes_on(
        cluster: ClusterHandle) -> None:
    assert cluster.log_path is not None, "the suite's cluster logs to a file"
    size = cluster.log_path.stat().st_size
    pid = int(cluster.read_info()["services"]["gateway"]["pid"])
    os.kill(pid, signal.SIGUSR2)
    deadline = time.monotonic() + 10
    while "gateway" not in (new := cluster.log_path.read_bytes()[size:].decode(errors="replace")
                            ) or "=== threads" not in new:
        assert time.monotonic() < deadline, new[-2000:]
        await asyncio.sleep(0.1)
    dump = [line for line in new.splitlines() if line.startswith("gateway")]
    assert any("asyncio task(s)" in line for line in dump), new[-2000:]
    assert any("--- task" in line for line in dump)
    async with aiohttp.ClientSession() as http, \
            http.get(f"{cluster.gateway_url}/health") as resp:
        assert resp.status == 200  # it went on serving
    assert pid_alive(pid)
