"""`dfms up`: the whole local cluster, on loopback, with all data in one directory.

Start order: PostgreSQL, Redis, the Kafka-API broker, the S3 nodes; then
migrations, topics, signing keys, node and ring registration; then every DFMS
service process. Stop order is the reverse. Endpoints are written to
``<data dir>/cluster.json`` for scripts; the effective config the services run
with is ``<data dir>/dfms.yaml``.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TextIO

from aiohttp import web
from miniopy_async.api import Minio

from dfms.config import Config, dump_yaml, load_config, mask_url
from dfms.errors import ClusterLockedError, StackError
from dfms.events.topics import ensure_topics
from dfms.keys import ensure_keys
from dfms.localstack import binaries, observability, servers
from dfms.localstack.control import build_control_app
from dfms.localstack.ports import LOOPBACK, PortAllocator, port_is_free
from dfms.localstack.records import ProcessRecord, Recorded, start_ticks, write_private
from dfms.localstack.supervisor import ManagedProcess, ProcessSpec, Supervisor
from dfms.metadata import db
from dfms.metadata.membership import NodeSpec, register_nodes
from dfms.metadata.migrate import migrate_up
from dfms.runtime.logs import get_logger

log = get_logger("up")

CLUSTER_FILE = "cluster.json"
STALE = "stale"
CONFIG_FILE = "dfms.yaml"
SECRETS_FILE = "secrets.json"
LOCK_FILE = "up.lock"
S3_ACCESS_KEY = "dfmsadmin"
ZONES = ("zone-a", "zone-b", "zone-c")


@dataclass(frozen=True)
class UpOptions:
    data_dir: Path
    nodes: int = 3
    gateway_port: int = 8080
    config_path: Path | None = None
    observability: bool = False  # also start Prometheus and (if installed) the trace UI


@dataclass(frozen=True)
class ServiceDef:
    """A DFMS service process: its CLI command and where its ops routes answer."""

    name: str
    command: str
    port_key: tuple[str, str]  # (config section, field) of the port that serves /ready
    grpc_port_key: tuple[str, str] | None = None


# Started in this order (each waits for the previous to be ready), stopped in reverse.
SERVICES: tuple[ServiceDef, ...] = (
    ServiceDef("chunk-service", "chunk-service", ("chunk_service", "ops_port"),
               grpc_port_key=("chunk_service", "grpc_port")),
    ServiceDef("gateway", "gateway", ("gateway", "port")),
    ServiceDef("gc-worker", "gc-worker", ("gc", "ops_port")),
    ServiceDef("event-relay", "event-relay", ("events", "ops_port")),
    ServiceDef("health-monitor", "health-monitor", ("healthmon", "ops_port")),
    ServiceDef("replication-manager", "replication-manager", ("replication", "ops_port")),
)


@dataclass
class ClusterInfo:
    data_dir: Path
    config_path: Path
    gateway_url: str = ""
    postgres: dict[str, Any] = field(default_factory=dict)
    redis: dict[str, Any] = field(default_factory=dict)
    kafka: dict[str, Any] = field(default_factory=dict)
    s3_nodes: list[dict[str, Any]] = field(default_factory=list)
    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    control: dict[str, Any] = field(default_factory=dict)
    prometheus: dict[str, Any] = field(default_factory=dict)  # with --observability
    trace_ui: dict[str, Any] = field(default_factory=dict)  # with it, if Phoenix is here

    def to_json(self, state: str, up_pid: int) -> dict[str, Any]:
        doc = {"state": state, "pid": up_pid, "data_dir": str(self.data_dir),
               "control": self.control,
               "config_path": str(self.config_path), "gateway_url": self.gateway_url,
               "postgres": self.postgres, "redis": self.redis, "kafka": self.kafka,
               "s3_nodes": self.s3_nodes, "services": self.services, "ports": self.ports}
        if self.prometheus:
            doc["prometheus"] = self.prometheus
        if self.trace_ui:
            doc["trace_ui"] = self.trace_ui
        return doc


def read_cluster_file(data_dir: Path) -> dict[str, Any]:
    """cluster.json, with ``state`` "stale" when it says ready but the `dfms up` that
    wrote it is gone (killed: it had no chance to write "stopped")."""
    path = data_dir / CLUSTER_FILE
    if not path.exists():
        return {}
    try:
        info = dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}
    if info.get("state") == "ready" and not Recorded("dfms up", int(info.get("pid") or 0),
                                                     int(info.get("pid_start") or -1)).alive:
        info["state"] = STALE
    return info


def _alive(mp: ManagedProcess) -> Callable[[], bool]:
    """Whether ``mp`` still runs, for servers.wait_ready (bound to this process, not to a
    loop variable)."""
    return lambda: mp.running


def _load_secrets(data_dir: Path) -> dict[str, str]:
    path = data_dir / SECRETS_FILE
    if path.exists():
        return dict(json.loads(path.read_text()))
    values = {name: secrets.token_urlsafe(24)
              for name in ("postgres_password", "redis_password", "s3_secret_key")}
    write_private(path, json.dumps(values, indent=2))
    return values


class LocalCluster:
    def __init__(self, opts: UpOptions, out: TextIO = sys.stdout) -> None:
        self.opts = opts
        self.data_dir = opts.data_dir.resolve()
        self.out = out
        self.record = ProcessRecord(self.data_dir)
        self.supervisor = Supervisor(out, on_start=self._on_process_start)
        self._state: str | None = None  # what cluster.json says, once written
        self._lock_fh: IO[str] | None = None
        self.info = ClusterInfo(self.data_dir, self.data_dir / CONFIG_FILE)
        self.config: Config | None = None
        self.ready_after_s: float | None = None
        self.first_start = False
        self._control: web.AppRunner | None = None
        self._probes: dict[str, Any] = {}
        self._endpoints: dict[str, str] = {}  # where each process listens, for `cluster ps`
        self._phoenix: Path | None = None  # the trace UI's executable, when it is started

    # -- lifecycle ------------------------------------------------------------

    async def start(self) -> ClusterInfo:
        started = time.monotonic()
        if self.opts.observability:
            observability.prometheus_binary()  # missing: say so before making anything
            self._phoenix = observability.phoenix_binary()
            if self._phoenix is None:
                print(observability.PHOENIX_HINT, file=self.out, flush=True)
        pg_user = servers.pg_system_user()
        if pg_user:  # before anything is made: the database must reach its dir and programs
            servers.check_postgres_access(self.data_dir, binaries.postgres_bin_dir(), pg_user)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.first_start = not (self.data_dir / SECRETS_FILE).exists()
        self._lock()
        survivors = self.record.survivors()
        if survivors:
            self._unlock()
            names = ", ".join(f"{r.name} (pid {r.pid})" for r in survivors)
            raise StackError(
                f"processes of an earlier `dfms up` of {self.data_dir} are still running: "
                f"{names}. Its `dfms up` was killed before it could stop them; stop them "
                f"(kill {' '.join(str(r.pid) for r in survivors)}) and start again")
        try:
            await self._start_all()
        except BaseException:
            await self.stop()
            raise
        self.ready_after_s = time.monotonic() - started
        self._write_cluster_file("ready")
        return self.info

    async def stop(self) -> None:
        if self._control is not None:
            await self._control.cleanup()
            self._control = None
        await self.supervisor.stop_all()
        if self.supervisor.processes:
            self.record.clear()
        if self._lock_fh is not None:
            self._write_cluster_file("stopped")
            self._unlock()

    def _unlock(self) -> None:
        if self._lock_fh is not None:
            fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
            self._lock_fh.close()
            self._lock_fh = None

    def _lock(self) -> None:
        fh = open(self.data_dir / LOCK_FILE, "a+")  # noqa: SIM115 - held for the cluster's life
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise ClusterLockedError(
                f"{self.data_dir} is already in use by another `dfms up` (pid {holder}); "
                "stop it first or choose another --data-dir") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._lock_fh = fh

    async def _start_all(self) -> None:
        previous = read_cluster_file(self.data_dir).get("ports", {})
        ports = PortAllocator(previous)
        gw_port = self.opts.gateway_port
        if gw_port and not port_is_free(gw_port):
            raise StackError(f"gateway port {gw_port} is in use; pass --gateway-port "
                             "with a free port (0 picks one)")
        self.info.ports = ports.assigned
        secret = _load_secrets(self.data_dir)
        await self._start_postgres(ports, secret["postgres_password"])
        await self._start_redis(ports, secret["redis_password"])
        await self._start_s3_nodes(ports, secret["s3_secret_key"])
        await self._start_kafka(ports, secret["s3_secret_key"])
        if self._phoenix is not None:  # before the services: they export to it from the start
            await self._start_trace_ui(self._phoenix, ports)
        self.config = self._write_config(ports, gw_port)
        await self._bootstrap(self.config)
        await self._start_services(self.config)
        if self.opts.observability:
            await self._start_prometheus(ports)
        await self._start_control(ports)

    async def _start_control(self, ports: PortAllocator) -> None:
        token = secrets.token_urlsafe(24)
        self._control = web.AppRunner(
            build_control_app(self.supervisor, token, self._probes, self._endpoints),
            access_log=None)
        await self._control.setup()
        port = ports.get("control")
        await web.TCPSite(self._control, LOOPBACK, port).start()
        self.info.control = {"url": f"http://{LOOPBACK}:{port}", "token": token}

    # -- servers --------------------------------------------------------------

    async def _start_and_wait(self, spec: ProcessSpec, probe: Any, port: int) -> ManagedProcess:
        self._probes[spec.name] = probe
        self._endpoints[spec.name] = f"{LOOPBACK}:{port}"
        mp = await self.supervisor.start(spec)
        took = await servers.wait_ready(spec.name, probe, lambda: mp.running)
        log.info("ready", extra={"proc": spec.name, "seconds": round(took, 2)})
        return mp

    async def _start_postgres(self, ports: PortAllocator, password: str) -> None:
        pg_dir = self.data_dir / "postgres"
        servers.check_postgres_not_running(pg_dir)
        user = servers.pg_system_user()
        await asyncio.to_thread(servers.prepare_postgres, pg_dir, password, user)
        port = ports.get("postgres")
        mp = await self._start_and_wait(servers.postgres_spec(pg_dir, port, user),
                                        lambda: servers.postgres_ready(port, password), port)
        self.info.postgres = {"dsn": servers.postgres_dsn(port, password), "port": port,
                              "pid": mp.pid}

    async def _start_redis(self, ports: PortAllocator, password: str) -> None:
        port = ports.get("redis")
        url = servers.redis_url(port, password)
        mp = await self._start_and_wait(
            servers.redis_spec(self.data_dir / "redis", port, password),
            lambda: servers.redis_ready(url), port)
        self.info.redis = {"url": url, "port": port, "pid": mp.pid}

    async def _start_kafka(self, ports: PortAllocator, secret_key: str) -> None:
        port = ports.get("kafka")
        store = self.info.kafka["store_endpoint"]
        mp = await self._start_and_wait(
            servers.kafka_spec(port, store, S3_ACCESS_KEY, secret_key),
            lambda: servers.tcp_ready(port), port)
        self.info.kafka.update({"bootstrap_servers": f"{LOOPBACK}:{port}", "port": port,
                                "pid": mp.pid, "storage": servers.KAFKA_STORAGE_URL})

    async def _start_s3_nodes(self, ports: PortAllocator, secret_key: str) -> None:
        """The ring's nodes and the broker's own store, in parallel: each takes a few
        seconds and they do not depend on one another."""
        names = [f"node-{i}" for i in range(1, self.opts.nodes + 1)] + [servers.KAFKA_STORE]
        specs = []
        for name in names:
            node_ports = servers.S3NodePorts(
                **{p: ports.get(f"{name}.{p}") for p in servers.S3_NODE_PORTS})
            is_store = name == servers.KAFKA_STORE
            bucket = servers.KAFKA_BUCKET if is_store else "dfms-chunks"
            node_dir = self.data_dir / ("kafka" if is_store else "s3") / name
            spec = servers.s3_node_spec(name, node_dir, node_ports, S3_ACCESS_KEY, secret_key,
                                        bucket)
            self._probes[name] = self._bucket_probe(node_ports.s3, secret_key, bucket)
            self._endpoints[name] = f"{LOOPBACK}:{node_ports.s3}"
            specs.append((name, node_ports, spec))
        procs = [await self.supervisor.start(spec) for _, _, spec in specs]
        await asyncio.gather(*(
            servers.wait_ready(name, self._probes[name], _alive(mp))
            for (name, _, _), mp in zip(specs, procs, strict=True)))
        store_ports, store_proc = specs[-1][1], procs[-1]
        self.info.kafka = {"store_endpoint": f"http://{LOOPBACK}:{store_ports.s3}",
                           "store_pid": store_proc.pid}
        self.info.s3_nodes = [
            {"id": name, "endpoint": f"http://{LOOPBACK}:{p.s3}", "zone": ZONES[i % 3],
             "pid": mp.pid, "data_dir": str(self.data_dir / "s3" / name)}
            for i, ((name, p, _), mp) in enumerate(zip(specs[:-1], procs[:-1], strict=True))]

    @staticmethod
    def _bucket_probe(port: int, secret_key: str, bucket: str) -> Any:
        async def probe() -> None:
            client = Minio(f"{LOOPBACK}:{port}", access_key=S3_ACCESS_KEY,
                           secret_key=secret_key, secure=False)
            try:
                if not await client.bucket_exists(bucket):
                    await client.make_bucket(bucket)
            finally:
                await client.close_session()
        return probe

    async def _start_prometheus(self, ports: PortAllocator) -> None:
        """Prometheus scraping the /metrics of every DFMS service on the ports they got
        in this start, with the alert rules loaded."""
        base = self.data_dir / observability.PROMETHEUS_DIR
        port = ports.get("prometheus")
        targets = {name: svc["ops_url"].removeprefix("http://")
                   for name, svc in self.info.services.items()}
        config, rules_dir = observability.write_config(base, targets, port)
        if not observability.ALERT_RULES.exists():
            log.warning("alert rules not found: Prometheus runs without them",
                        extra={"rules": str(observability.ALERT_RULES)})
        url = f"http://{LOOPBACK}:{port}"
        mp = await self._start_and_wait(observability.prometheus_spec(base, config, port),
                                        lambda: servers.http_ready(url, "/-/ready"), port)
        self.info.prometheus = {"url": url, "port": port, "pid": mp.pid,
                                "config": str(config), "rules_dir": str(rules_dir)}

    async def _start_trace_ui(self, binary: Path, ports: PortAllocator) -> None:
        """Arize Phoenix: a trace UI and span API, receiving OTLP from every service."""
        port, grpc_port = ports.get("trace_ui"), ports.get("trace_ui.grpc")
        url = f"http://{LOOPBACK}:{port}"
        spec = observability.phoenix_spec(binary, self.data_dir / observability.TRACE_UI_DIR,
                                          port, grpc_port)
        mp = await self._start_and_wait(spec, lambda: servers.http_ready(url, "/healthz"),
                                        port)
        self.info.trace_ui = observability.trace_ui_info(url, port, grpc_port, mp.pid)

    def _telemetry_overrides(self) -> dict[str, object]:
        """With the local trace UI, every service exports to it and keeps every trace (a
        laptop wants to see each request); an endpoint in the user's config, or the
        OTEL_* variables, still win."""
        if not self.info.trace_ui:
            return {}
        if load_config(self.opts.config_path).telemetry.endpoint:
            return {}
        return {"endpoint": self.info.trace_ui["otlp_endpoint"], "protocol": "http/protobuf",
                "sampler_arg": 1.0}

    # -- configuration and bootstrap ---------------------------------------------

    def _write_config(self, ports: PortAllocator, gateway_port: int) -> Config:
        secret = _load_secrets(self.data_dir)
        overrides: dict[str, dict[str, object]] = {
            "postgres": {"dsn": self.info.postgres["dsn"]},
            "redis": {"url": self.info.redis["url"]},
            "kafka": {"bootstrap_servers": self.info.kafka["bootstrap_servers"]},
            "s3": {"access_key": S3_ACCESS_KEY, "secret_key": secret["s3_secret_key"]},
            "gateway": {"port": ports.get("gateway", gateway_port or None)},
            "chunk_service": {"grpc_port": ports.get("chunk_service.grpc"),
                              "ops_port": ports.get("chunk_service.ops")},
            "gc": {"ops_port": ports.get("gc.ops")},
            "events": {"ops_port": ports.get("events.ops")},
            "healthmon": {"ops_port": ports.get("healthmon.ops")},
            "replication": {"ops_port": ports.get("replication.ops")},
            "chunk_client": {"target": f"{LOOPBACK}:{ports.assigned['chunk_service.grpc']}"},
            "auth": {"keys_dir": str(self.data_dir / "keys")},
        }
        if telemetry := self._telemetry_overrides():
            overrides["telemetry"] = telemetry
        cfg = load_config(self.opts.config_path, overrides=overrides)
        rep, nodes = cfg.replication, self.opts.nodes
        if rep.replicas_n > nodes:
            # A stack smaller than the replica count still works (without redundancy),
            # rather than never becoming ready for want of a write quorum.
            overrides["replication"].update(replicas_n=nodes,
                                            write_quorum_w=min(rep.write_quorum_w, nodes))
            cfg = load_config(self.opts.config_path, overrides=overrides)
            log.warning("fewer nodes than replicas: keeping fewer copies", extra={
                "nodes": nodes, "replicas_n": cfg.replication.replicas_n,
                "write_quorum_w": cfg.replication.write_quorum_w})
        write_private(self.info.config_path, dump_yaml(cfg))
        return cfg

    async def _bootstrap(self, cfg: Config) -> None:
        conn = await db.connect(cfg.postgres)
        try:
            applied = await migrate_up(conn)
            log.info("migrations applied", extra={"count": len(applied)})
            # Their directories are on this host: the health monitor reports their disks.
            nodes = [NodeSpec(n["id"], n["endpoint"], n["zone"], data_dir=n["data_dir"])
                     for n in self.info.s3_nodes]
            epoch = await register_nodes(conn, nodes, bucket=cfg.s3.bucket)
            log.info("nodes registered", extra={"nodes": len(nodes), "ring_epoch": epoch})
        finally:
            await conn.close()
        created = await ensure_topics(cfg.kafka)
        log.info("kafka topics", extra={"new_topics": ",".join(created) or "none"})
        ensure_keys(Path(cfg.auth.keys_dir))

    async def _start_services(self, cfg: Config) -> None:
        env = {"DFMS_CONFIG": str(self.info.config_path), "PYTHONUNBUFFERED": "1"}
        for svc in SERVICES:
            section, fname = svc.port_key
            port = getattr(getattr(cfg, section), fname)
            url = f"http://{LOOPBACK}:{port}"
            spec = ProcessSpec(name=svc.name, argv=[sys.executable, "-m", "dfms", svc.command],
                               env=env, restart=True)
            self._probes[svc.name] = lambda url=url: servers.http_ready(url)
            mp = await self.supervisor.start(spec)
            took = await servers.wait_ready(svc.name, self._probes[svc.name],
                                            _alive(mp))
            log.info("ready", extra={"proc": svc.name, "seconds": round(took, 2)})
            self.info.services[svc.name] = {"ops_url": url, "pid": mp.pid}
            self._endpoints[svc.name] = f"{LOOPBACK}:{port}"
            if svc.grpc_port_key:
                section, fname = svc.grpc_port_key
                grpc_port = getattr(getattr(cfg, section), fname)
                self.info.services[svc.name]["grpc_target"] = f"{LOOPBACK}:{grpc_port}"
                self._endpoints[svc.name] = f"{LOOPBACK}:{grpc_port} (ops :{port})"
        self.info.gateway_url = self.info.services["gateway"]["ops_url"]

    def _on_process_start(self, mp: ManagedProcess) -> None:
        """Every start (first, restarted by the supervisor, or `dfms cluster start`)
        records the new pid, so no record names a pid that is gone."""
        self.record.add(mp.spec.name, mp.pid or 0)
        if self._state == "ready":
            self._write_cluster_file("ready")

    def _refresh_pids(self) -> None:
        info = self.info
        slots: dict[str, dict[str, Any]] = {"postgres": info.postgres, "redis": info.redis,
                                            "kafka": info.kafka, **info.services,
                                            "prometheus": info.prometheus,
                                            "trace-ui": info.trace_ui}
        slots.update((node["id"], node) for node in info.s3_nodes)
        for name, slot in slots.items():
            mp = self._proc(name)
            if mp is not None and slot:
                slot["pid"] = mp.pid
        store = self._proc(servers.KAFKA_STORE)
        if store is not None and info.kafka:
            info.kafka["store_pid"] = store.pid

    def _write_cluster_file(self, state: str) -> None:
        self._refresh_pids()
        self._state = state
        doc = self.info.to_json(state, os.getpid())
        doc["pid_start"] = start_ticks(os.getpid())
        write_private(self.data_dir / CLUSTER_FILE, json.dumps(doc, indent=2) + "\n")

    def _proc(self, name: str) -> ManagedProcess | None:
        try:
            return self.supervisor.get(name)
        except KeyError:
            return None

    def endpoints_text(self) -> str:
        rows = [("gateway", self.info.gateway_url)]
        rows += [(name, f"{svc['ops_url']}/health") for name, svc in self.info.services.items()]
        rows += [("postgres", mask_url(self.info.postgres["dsn"])),
                 ("redis", mask_url(self.info.redis["url"])),
                 ("kafka", f"{self.info.kafka['bootstrap_servers']}  (durable: "
                           f"{self.info.kafka['storage']} on {self.info.kafka['store_endpoint']})")]
        rows += [(n["id"], f"{n['endpoint']}  ({n['zone']})") for n in self.info.s3_nodes]
        if self.info.prometheus:
            rows.append(("prometheus", f"{self.info.prometheus['url']}  (alerts: "
                                       f"{self.info.prometheus['url']}/alerts)"))
        if self.info.trace_ui:
            rows.append(("traces", f"{self.info.trace_ui['url']}  (Phoenix; OTLP at "
                                   f"{self.info.trace_ui['otlp_traces_url']})"))
        rows.append(("endpoints and secrets", str(self.data_dir / CLUSTER_FILE)))
        return "\n".join(f"  {name:<20} {where}" for name, where in rows)
