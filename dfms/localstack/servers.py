"""The servers of the local cluster: how to prepare, start and probe each one.

PostgreSQL refuses to run as root, so when ``dfms up`` runs as root the
database runs as a dedicated system user (created on first use).
"""

from __future__ import annotations

import asyncio
import grp
import os
import pwd
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg
import redis.asyncio as aioredis

from dfms.errors import StackError
from dfms.localstack import binaries
from dfms.localstack.ports import LOOPBACK
from dfms.localstack.supervisor import ProcessSpec

PG_SYSTEM_USER = "dfms-postgres"
PG_DB_USER = "dfms"
PG_DB_NAME = "dfms"
READY_TIMEOUT_S = 60.0


# --- PostgreSQL --------------------------------------------------------------

def pg_system_user() -> str | None:
    """The system user PostgreSQL runs as: ours when we are not root (None), else
    ``dfms-postgres`` (created on first use; PostgreSQL refuses to run as root)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        PG_SYSTEM_USER], check=True, capture_output=True)
    return PG_SYSTEM_USER


def _can_traverse(st: os.stat_result, uid: int, gids: set[int]) -> bool:
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid in gids:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def _closed_on_the_way(path: Path, user: str) -> Path | None:
    """The first existing directory on the way to ``path`` that ``user`` cannot search."""
    entry = pwd.getpwnam(user)
    gids = {entry.pw_gid, *(g.gr_gid for g in grp.getgrall() if user in g.gr_mem)}
    for directory in (path, *path.parents):
        if directory.exists() and not _can_traverse(directory.stat(), entry.pw_uid, gids):
            return directory  # a missing one is created later, by us, searchable
    return None


def _mode(directory: Path) -> str:
    return stat.filemode(directory.stat().st_mode)


def check_traversable(data_dir: Path, user: str) -> None:
    """Fail, naming the directory and the fix, if ``user`` cannot reach ``data_dir``.

    DFMS never changes the permissions of directories it did not create: a parent
    that is private to root (``mktemp -d`` makes 0700 ones) is the user's to open.
    """
    directory = _closed_on_the_way(data_dir, user)
    if directory is not None:
        raise StackError(
            f"PostgreSQL runs as the system user {user!r} (it refuses to run as root) "
            f"and cannot reach {data_dir}: {directory} is not searchable by that user "
            f"(mode {_mode(directory)}). Either allow it with "
            f"`chmod o+x {directory}`, or choose a --data-dir that every user can reach "
            f"(e.g. under /srv or /var/lib)")


def check_postgres_access(data_dir: Path, bin_dir: Path, user: str) -> None:
    """Before anything is made: ``user`` must reach the data dir and run the programs in
    ``bin_dir``, which the `stack` extra installed inside the virtualenv (one under
    root's 0700 home ended in a PermissionError from initdb, half-way through a start)."""
    check_traversable(data_dir, user)
    directory = _closed_on_the_way(bin_dir, user)
    if directory is not None:
        raise StackError(
            f"PostgreSQL runs as the system user {user!r} (it refuses to run as root) "
            f"and cannot run its programs in {bin_dir}: {directory} is not searchable by "
            f"that user (mode {_mode(directory)}). Either allow it with "
            f"`chmod o+x {directory}`, or install DFMS into a virtualenv every user can "
            f"reach (e.g. under /opt)")


def _chown(path: Path, user: str) -> None:
    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)


def prepare_postgres(pg_dir: Path, password: str, user: str | None) -> None:
    """initdb on first start, as ``user`` (None = us)."""
    pg_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if user:
        _chown(pg_dir, user)
    if (pg_dir / "PG_VERSION").exists():
        return
    # initdb reads the password from a file: it goes in a private directory of the
    # PostgreSQL user inside the data dir, removed when initdb is done.
    init_dir = pg_dir.parent / ".postgres-init"
    shutil.rmtree(init_dir, ignore_errors=True)
    init_dir.mkdir(mode=0o700)
    pwfile = init_dir / "password"
    try:
        pwfile.write_text(password + "\n")
        if user:
            _chown(init_dir, user)
            _chown(pwfile, user)
        result = subprocess.run(
            [str(binaries.postgres_bin_dir() / "initdb"), "-D", str(pg_dir), "-U", PG_DB_USER,
             f"--pwfile={pwfile}", "--auth-host=scram-sha-256", "--auth-local=scram-sha-256",
             "--encoding=UTF8", "--locale=C"],
            user=user, capture_output=True, text=True, check=False)
    finally:
        shutil.rmtree(init_dir, ignore_errors=True)
    if result.returncode != 0:
        raise StackError(f"initdb failed: {result.stderr.strip() or result.stdout.strip()}")


def check_postgres_not_running(pg_dir: Path) -> None:
    pidfile = pg_dir / "postmaster.pid"
    if not pidfile.exists():
        return
    try:
        pid = int(pidfile.read_text().split("\n", 1)[0])
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError):
        return  # stale pid file; PostgreSQL removes it itself
    except PermissionError:
        pass
    raise StackError(f"a PostgreSQL server (pid {pid}) is still running on {pg_dir}; "
                     "stop it before starting the cluster")


def postgres_spec(pg_dir: Path, port: int, user: str | None) -> ProcessSpec:
    return ProcessSpec(
        name="postgres",
        argv=[str(binaries.postgres_bin_dir() / "postgres"), "-D", str(pg_dir),
              "-c", f"port={port}", "-c", f"listen_addresses={LOOPBACK}",
              "-c", "unix_socket_directories=", "-c", "max_connections=200",
              "-c", "shared_buffers=128MB", "-c", "fsync=on",
              "-c", "logging_collector=off", "-c", "log_min_messages=warning"],
        user=user,
        stop_signal=signal.SIGINT,  # "fast" shutdown: abort transactions, checkpoint, exit
        stop_timeout_s=30.0)


def postgres_dsn(port: int, password: str, db: str = PG_DB_NAME) -> str:
    return f"postgresql://{PG_DB_USER}:{password}@{LOOPBACK}:{port}/{db}"


async def postgres_ready(port: int, password: str) -> None:
    conn = await asyncpg.connect(postgres_dsn(port, password, "postgres"), timeout=2)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", PG_DB_NAME)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{PG_DB_NAME}"')
    finally:
        await conn.close()


# --- Redis -------------------------------------------------------------------

def redis_spec(redis_dir: Path, port: int, password: str) -> ProcessSpec:
    redis_dir.mkdir(parents=True, exist_ok=True)
    conf = redis_dir / "redis.conf"
    # The password goes in a 0600 file, not on the command line where `ps` shows it.
    conf.write_text(f"requirepass {password}\n")
    conf.chmod(0o600)
    return ProcessSpec(
        name="redis",
        argv=[str(binaries.redis_server()), str(conf), "--port", str(port), "--bind", LOOPBACK,
              "--dir", str(redis_dir), "--appendonly", "yes", "--save", "60 1",
              "--protected-mode", "yes", "--daemonize", "no"])


def redis_url(port: int, password: str) -> str:
    return f"redis://:{password}@{LOOPBACK}:{port}/0"


async def redis_ready(url: str) -> None:
    client = aioredis.from_url(url, socket_connect_timeout=2)
    try:
        await client.ping()
    finally:
        await client.aclose()


# --- Kafka API (Tansu) -------------------------------------------------------

# Tansu keeps topics, messages and committed consumer offsets in this bucket of
# an S3 server of its own (`kafka-store`), never on a ring node, so a node drill
# cannot take the broker down.
KAFKA_STORE = "kafka-store"
KAFKA_BUCKET = "tansu"
KAFKA_STORAGE_URL = f"s3://{KAFKA_BUCKET}/"
KAFKA_REGION = "us-east-1"


def kafka_spec(port: int, store_endpoint: str, access_key: str, secret_key: str) -> ProcessSpec:
    url = f"tcp://{LOOPBACK}:{port}"
    return ProcessSpec(
        name="kafka",
        argv=[str(binaries.tansu()), "broker", "--listener-url", url,
              "--advertised-listener-url", url, "--storage-engine", KAFKA_STORAGE_URL],
        env={"AWS_ENDPOINT": store_endpoint, "AWS_ACCESS_KEY_ID": access_key,
             "AWS_SECRET_ACCESS_KEY": secret_key, "AWS_DEFAULT_REGION": KAFKA_REGION,
             "AWS_ALLOW_HTTP": "true"},
        # Orphaned by a killed `dfms up`, Tansu took up to 5.3 s to stop on SIGTERM (its
        # store stopping beside it). It has written a batch and an offset commit to its
        # store before acknowledging them, so SIGKILL loses nothing acknowledged:
        # tests/probe/test_broker_durability.py restarts it both ways.
        death_signal=signal.SIGKILL)


async def tcp_ready(port: int) -> None:
    _, writer = await asyncio.open_connection(LOOPBACK, port)
    writer.close()
    await writer.wait_closed()


# --- S3 nodes (SeaweedFS `weed mini`) ------------------------------------------

S3_NODE_PORTS = ("s3", "master", "volume", "filer", "admin")


@dataclass(frozen=True)
class S3NodePorts:
    s3: int
    master: int
    volume: int
    filer: int
    admin: int

    @property
    def all(self) -> list[int]:
        ports = [self.s3, self.master, self.volume, self.filer, self.admin]
        return ports + [p + 10000 for p in ports]


def s3_node_spec(node_id: str, node_dir: Path, ports: S3NodePorts, access_key: str,
                 secret_key: str, bucket: str) -> ProcessSpec:
    node_dir.mkdir(parents=True, exist_ok=True)

    def pair(flag: str, port: int) -> list[str]:
        return [f"-{flag}.port={port}", f"-{flag}.port.grpc={port + 10000}"]

    argv = [str(binaries.weed()), "mini", f"-dir={node_dir}", f"-ip={LOOPBACK}",
            f"-ip.bind={LOOPBACK}", *pair("master", ports.master),
            *pair("volume", ports.volume), *pair("filer", ports.filer), *pair("s3", ports.s3),
            *pair("admin", ports.admin), "-admin.ui=false", "-webdav=false",
            "-master.telemetry=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-bucket={bucket}"]
    return ProcessSpec(
        name=node_id, argv=argv, cwd=str(node_dir),
        env={"AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key},
        # Orphaned by a killed `dfms up`, a `weed mini` took 2-5 s to stop on SIGTERM.
        # What it acknowledged is in its files already (a process kill takes nothing back
        # from the page cache), and SIGKILL is the node drill `dfms cluster kill` runs.
        death_signal=signal.SIGKILL)


async def http_answers(url: str) -> None:
    """Ready when the server answers HTTP at all (S3 answers 403 to anonymous calls)."""
    timeout = aiohttp.ClientTimeout(total=2)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as resp:
        if resp.status >= 500:
            raise StackError(f"{url} answered {resp.status}")


async def wait_ready(name: str, probe: Callable[[], Awaitable[None]], alive: Callable[[], bool],
                     timeout_s: float = READY_TIMEOUT_S) -> float:
    """Poll ``probe`` until it succeeds; fail fast if the process has died."""
    start = time.monotonic()
    last: Exception | None = None
    while time.monotonic() - start < timeout_s:
        if not alive():
            raise StackError(f"{name} exited during start-up (see its log lines above)")
        try:
            await probe()
            return time.monotonic() - start
        except Exception as exc:  # not up yet: keep polling until the deadline
            last = exc
        await asyncio.sleep(0.2)
    raise StackError(f"{name} was not ready after {timeout_s:.0f}s: {last}")


async def http_ready(base_url: str, path: str = "/ready") -> None:
    """Ready when ``path`` (a DFMS service's /ready by default) answers 200."""
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as session, \
            session.get(f"{base_url}{path}") as resp:
        if resp.status != 200:
            raise StackError(f"{base_url}{path} answered {resp.status}: {await resp.text()}")
