"""Typed, frozen configuration.

Values are layered: built-in defaults, then an optional YAML file
(``--config`` or ``DFMS_CONFIG``), then ``DFMS_<SECTION>__<FIELD>``
environment variables. Every field carries a one-line meaning (used for the
sample config and ``dfms config show``) and its constraints; an invalid value
raises ``ConfigError`` naming the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, SupportsFloat, SupportsIndex, TypeVar, get_origin, get_type_hints

import yaml

from dfms.chunker import ChunkerParams, InvalidChunkerParams
from dfms.errors import ConfigError

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

ENV_PREFIX = "DFMS_"
ENV_CONFIG_PATH = "DFMS_CONFIG"
MASK = "***"


T = TypeVar("T")


def opt(default: T, doc: str, *, lo: float | None = None, hi: float | None = None,
        choices: tuple[str, ...] | None = None, secret: bool = False,
        check: Callable[[T], str | None] | None = None) -> T:
    """Declare a config field with its meaning and constraints.

    Typed as its default, so a default of the wrong type for the field's annotation
    (``port: int = opt("8080", ...)``) is a mypy error.

    A ``tuple[str, ...]`` field is a list: a YAML list, or in an environment variable
    items separated by commas or spaces. ``check(value)`` returns what is wrong with a
    value, or None."""
    meta = {"doc": doc, "lo": lo, "hi": hi, "choices": choices, "secret": secret,
            "check": check}
    return field(default=default, metadata=meta)


def _cidrs(networks: tuple[str, ...]) -> str | None:
    """None when every item is an IP network (a bare address is a network of one)."""
    for item in networks:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            return (f"{item!r} is not an IP network; expected CIDRs such as 10.0.0.0/8 "
                    "or 2001:db8::/32, or single addresses")
    return None


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: str = opt("INFO", "log level", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    format: str = opt("text", "log line format: text (key=value) or json", choices=("text", "json"))


@dataclass(frozen=True, slots=True)
class PostgresConfig:
    dsn: str = opt("postgresql://dfms@127.0.0.1:5432/dfms", "PostgreSQL DSN", secret=True)
    pool_min_size: int = opt(1, "connections kept open per process", lo=0, hi=100)
    pool_max_size: int = opt(10, "most connections per process", lo=1, hi=500)
    connect_timeout_s: float = opt(10.0, "timeout for opening a connection", lo=0.1)
    command_timeout_s: float = opt(30.0, "timeout for one statement", lo=0.1)


@dataclass(frozen=True, slots=True)
class RedisConfig:
    url: str = opt("redis://127.0.0.1:6379/0", "Redis URL", secret=True)
    socket_timeout_s: float = opt(2.0, "timeout for one Redis command", lo=0.05)


@dataclass(frozen=True, slots=True)
class KafkaConfig:
    bootstrap_servers: str = opt("127.0.0.1:9092", "comma-separated Kafka bootstrap servers")
    topic_partitions: int = opt(3, "partitions of each DFMS topic when created", lo=1, hi=1024)
    topic_replication_factor: int = opt(1, "replicas of each DFMS topic when created (at "
                                        "most the number of brokers; 3 on a three-broker "
                                        "cluster)", lo=1, hi=32767)
    request_timeout_s: float = opt(30.0, "timeout for one Kafka request", lo=1.0)


@dataclass(frozen=True, slots=True)
class S3Config:
    access_key: str = opt("dfmsadmin", "S3 access key of the storage nodes")
    secret_key: str = opt("", "S3 secret key of the storage nodes", secret=True)
    bucket: str = opt("dfms-chunks", "bucket that holds chunk objects on every node")
    region: str = opt("us-east-1", "S3 region name sent to the nodes")
    request_timeout_s: float = opt(30.0, "timeout for one S3 request", lo=0.1)
    max_retries: int = opt(3, "retries of an idempotent S3 call", lo=0, hi=20)


@dataclass(frozen=True, slots=True)
class ChunkerConfig:
    algorithm: str = opt("fastcdc", "content-defined chunker", choices=("fastcdc", "rabin"))
    min_size_bytes: int = opt(256 * KIB, "smallest chunk (except a file's last)", lo=64)
    avg_size_bytes: int = opt(1 * MIB, "target average chunk size", lo=256)
    max_size_bytes: int = opt(4 * MIB, "largest chunk", lo=1024, hi=16 * MIB)


@dataclass(frozen=True, slots=True)
class ReplicationConfig:
    replicas_n: int = opt(3, "replicas of every chunk", lo=1, hi=16)
    write_quorum_w: int = opt(2, "replica writes that must succeed before a write counts", lo=1,
                              hi=16)
    interval_s: float = opt(10.0, "how often the replication manager works through the repair "
                            "queue (events wake it sooner)", lo=0.1)
    reconcile_interval_s: float = opt(600.0, "time between two full reconciliation passes "
                                      "over every chunk (node and ring events start one "
                                      "sooner)", lo=1.0)
    repair_delay_s: float = opt(300.0, "a node must be down this long before its replicas "
                                "are copied elsewhere (brief outages cause no repair storm)",
                                lo=0.0)
    max_concurrent_copies: int = opt(4, "chunks repaired or moved at the same time", lo=1,
                                     hi=256)
    copy_bytes_per_s: int = opt(100 * MIB, "bandwidth limit of repair and rebalance copies "
                                "(0 = unlimited)", lo=0)
    batch_size: int = opt(500, "chunks read per database page in a pass", lo=1, hi=100000)
    scrub_bytes_per_s: int = opt(10 * MIB, "rate at which the scrubber re-reads and re-hashes "
                                 "replicas (0 = scrubber off)", lo=0)
    scrub_interval_s: float = opt(1.0, "pause between two scrub batches", lo=0.0)
    scrub_min_pass_interval_s: float = opt(3600.0, "a new full scrub pass starts at most "
                                           "this long after the previous one started (a "
                                           "small cluster is not re-read in a loop)", lo=0.0)
    ops_port: int = opt(9196, "HTTP port for the replication manager's /health, /ready and "
                        "/metrics", lo=0, hi=65535)


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    host: str = opt("127.0.0.1", "address the HTTP gateway listens on")
    port: int = opt(8080, "port of the HTTP gateway (also serves /health, /ready, /metrics)",
                    lo=0, hi=65535)
    public_url: str = opt("", "base URL clients reach the gateway at (share links); empty = "
                          "the origin of the request that created the link")
    trusted_proxies: tuple[str, ...] = opt((), "networks (CIDRs) of the reverse proxies in "
                                           "front of the gateway: from them the client "
                                           "address is the right-most X-Forwarded-For entry "
                                           "outside these networks; empty = ignore the "
                                           "header, the client is the TCP peer",
                                           check=_cidrs)
    max_upload_bytes: int = opt(50 * GIB, "largest file one upload may carry", lo=0)
    max_json_bytes: int = opt(1 * MIB, "largest JSON request body", lo=1 * KIB, hi=64 * MIB)
    max_line_bytes: int = opt(8 * KIB, "longest request line", lo=1 * KIB, hi=64 * KIB)
    max_header_bytes: int = opt(16 * KIB, "longest single request header", lo=1 * KIB,
                                hi=64 * KIB)
    max_headers: int = opt(64, "most request headers", lo=8, hi=1024)
    body_idle_timeout_s: float = opt(120.0, "a request or response body that moves no byte "
                                     "for this long is aborted (no total time limit)", lo=1.0)
    keepalive_timeout_s: float = opt(75.0, "idle keep-alive connections are closed after",
                                     lo=1.0)
    # Load shedding (dfms/gateway/shedding.py). The 2-core reference machine serves
    # about 140 small transfers/s when saturated (overload.js): 64 at once is under half
    # a second of work, and still lets 16 ingest uploads send 4 parts each in parallel.
    max_in_flight_requests: int = opt(64, "API calls other than transfers served at once; "
                                      "past it (and the wait queue) 503 overloaded; 0 = no "
                                      "limit", lo=0, hi=100_000)
    max_in_flight_transfers: int = opt(64, "uploads, multipart parts and downloads (share "
                                       "links too) served at once, a limit apart from other "
                                       "calls so neither starves the other; 0 = no limit",
                                       lo=0, hi=100_000)
    shed_queue_size: int = opt(32, "requests of each class that may wait for a slot when its "
                               "limit is reached; more are refused at once", lo=0, hi=100_000)
    shed_max_wait_s: float = opt(0.5, "longest a request waits for a slot before its 503 "
                                 "overloaded", lo=0.0, hi=60.0)
    shed_retry_after_s: int = opt(1, "Retry-After of a 503 overloaded", lo=1, hi=3600)
    page_size_default: int = opt(50, "items per listing page unless the client asks", lo=1,
                                 hi=1000)
    page_size_max: int = opt(500, "most items per listing page", lo=1, hi=10000)


@dataclass(frozen=True, slots=True)
class ChunkServiceConfig:
    host: str = opt("127.0.0.1", "address the gRPC chunk service listens on")
    grpc_port: int = opt(9091, "gRPC port of the chunk service", lo=0, hi=65535)
    ops_port: int = opt(9191, "HTTP port for /health, /ready and /metrics", lo=0, hi=65535)
    upload_parallel_chunks: int = opt(4, "chunks of one upload written to nodes at once", lo=1,
                                      hi=64)
    upload_read_ahead_bytes: int = opt(16 * MIB, "bytes of an upload received ahead of the "
                                       "chunker, so the network never waits on node writes",
                                       lo=256 * KIB, hi=1 * GIB)
    download_prefetch_chunks: int = opt(3, "chunks read ahead while a download streams", lo=1,
                                        hi=64)
    frame_size_bytes: int = opt(1 * MIB, "size of the data frames streamed over gRPC",
                                lo=4 * KIB, hi=4 * MIB)
    straggler_timeout_s: float = opt(2.0, "once the write quorum acknowledged, how long the "
                                     "remaining replica writes may still finish", lo=0.0)
    node_refresh_interval_s: float = opt(5.0, "how often node states and the ring are "
                                         "re-read from PostgreSQL", lo=0.1)


@dataclass(frozen=True, slots=True)
class ChunkServiceClientConfig:
    target: str = opt("127.0.0.1:9091", "host:port of the chunk service that clients call")
    connect_timeout_s: float = opt(10.0, "time to wait for the chunk service to accept a call",
                                   lo=0.1)


@dataclass(frozen=True, slots=True)
class AuthConfig:
    keys_dir: str = opt("keys", "directory of ES256 signing keys (relative to the data dir)")
    issuer: str = opt("dfms", "JWT iss claim")
    audience: str = opt("dfms-api", "JWT aud claim")
    access_token_ttl_s: int = opt(900, "lifetime of an access token", lo=30, hi=86400)
    refresh_token_ttl_s: int = opt(30 * 86400, "lifetime of a refresh token", lo=60,
                                   hi=365 * 86400)
    password_min_length: int = opt(10, "shortest password accepted at registration", lo=8,
                                   hi=128)
    argon2_memory_kib: int = opt(65536, "Argon2id memory cost per hash (KiB)", lo=8192,
                                 hi=4 * 1024 * 1024)
    argon2_iterations: int = opt(3, "Argon2id time cost (passes)", lo=1, hi=20)
    argon2_lanes: int = opt(1, "Argon2id parallelism (lanes)", lo=1, hi=16)


@dataclass(frozen=True, slots=True)
class LifecycleConfig:
    keep_versions: int = opt(10, "versions kept per file (older ones go to GC); 0 = no count "
                             "limit", lo=0, hi=100000)
    keep_versions_days: int = opt(0, "also keep every version younger than this many days; "
                                  "0 = age does not protect a version", lo=0, hi=36500)
    trash_retention_days: int = opt(30, "trashed items are purged by GC after this many days",
                                    lo=0, hi=36500)
    default_quota_bytes: int = opt(10 * GIB, "storage quota of a user the admin gave none; "
                                   "0 = unlimited", lo=0)
    multipart_part_min_bytes: int = opt(5 * MIB, "smallest part of a multipart upload "
                                        "(except the last)", lo=1)
    multipart_part_max_bytes: int = opt(5 * GIB, "largest part of a multipart upload", lo=1)
    multipart_max_parts: int = opt(10000, "most parts in one multipart upload", lo=1,
                                   hi=100000)
    multipart_expiry_s: int = opt(86400, "an unfinished multipart upload expires after",
                                  lo=60)
    # Chunk-level uploads (dfms/gateway/routes_chunks.py).
    upload_session_expiry_s: int = opt(86400, "an upload session of the chunk-level API "
                                       "expires after; until then GC keeps the chunks sent "
                                       "in it", lo=60)
    chunks_missing_max: int = opt(10000, "most chunk hashes one POST /api/v1/chunks/missing "
                                  "may ask about", lo=1, hi=1_000_000)
    commit_max_chunks: int = opt(100000, "most chunks in the manifest of one POST "
                                 "/api/v1/files/commit", lo=1, hi=10_000_000)


@dataclass(frozen=True, slots=True)
class GcConfig:
    interval_s: float = opt(3600.0, "time between two collector passes", lo=1.0)
    grace_period_s: float = opt(86400.0, "an unreferenced chunk is condemned, and a condemned "
                                "one deleted, only after this long (in-flight uploads are "
                                "safe within it)", lo=0.0)
    ops_port: int = opt(9193, "HTTP port for the GC worker's /health, /ready and /metrics",
                        lo=0, hi=65535)
    batch_size: int = opt(500, "items handled per transaction in a pass", lo=1, hi=100000)


@dataclass(frozen=True, slots=True)
class HealthmonConfig:
    interval_s: float = opt(10.0, "time between two probes of each node", lo=0.1)
    ops_port: int = opt(9194, "HTTP port for the health monitor's /health, /ready, /metrics",
                        lo=0, hi=65535)
    failures_to_down: int = opt(3, "consecutive failed probes that mark a node down (the "
                                "first failure marks it suspect)", lo=1, hi=100)
    successes_to_healthy: int = opt(2, "consecutive good probes that bring a node back",
                                    lo=1, hi=100)
    latency_limit_ms: float = opt(2000.0, "a probe slower than this counts as failed", lo=1.0)
    probe_timeout_s: float = opt(5.0, "timeout of one probe request", lo=0.1)
    passive_suspect_after: int = opt(3, "consecutive failed requests to a node after which "
                                     "the chunk service or replication manager marks a "
                                     "healthy node suspect itself (only probes mark it "
                                     "down or healthy again); 0 = never", lo=0, hi=1000)
    cluster_gauges_interval_s: float = opt(30.0, "how often the health monitor recomputes "
                                           "the cluster gauges (chunks, dedup, at-risk "
                                           "chunks, queues: aggregate queries over every "
                                           "replica); checked after each probe pass",
                                           lo=1.0)


@dataclass(frozen=True, slots=True)
class EventsConfig:
    relay_interval_s: float = opt(1.0, "how often the outbox relay looks for unsent events "
                                  "(it is also woken by NOTIFY)", lo=0.05)
    relay_batch_size: int = opt(500, "outbox rows published per relay round", lo=1,
                                hi=100000)
    ops_port: int = opt(9195, "HTTP port for the event relay's /health, /ready, /metrics",
                        lo=0, hi=65535)
    consumer_max_attempts: int = opt(5, "handling attempts before an event goes to the "
                                     "dead-letter topic", lo=1, hi=100)
    consumer_retry_base_s: float = opt(0.5, "first retry delay of a failing event (doubles)",
                                       lo=0.01)
    # The live stream, GET /api/v1/events (dfms/gateway/routes_events.py).
    stream_heartbeat_s: float = opt(15.0, "a comment line on every live event stream this "
                                    "often when no event came (keeps proxies from closing "
                                    "it); below gateway.body_idle_timeout_s", lo=1.0,
                                    hi=600.0)
    stream_max_per_user: int = opt(5, "live event streams one account may hold open on one "
                                   "gateway; more are refused 429 too_many_streams", lo=1,
                                   hi=1000)
    stream_max_total: int = opt(2000, "live event streams one gateway holds open at most",
                                lo=1, hi=1_000_000)
    stream_max_age_s: float = opt(3600.0, "a live event stream ends after this long; the "
                                  "client reconnects (and is authenticated again)",
                                  lo=10.0)
    stream_ticket_ttl_s: int = opt(30, "lifetime of a single-use ticket that opens a live "
                                   "event stream from a browser", lo=5, hi=3600)
    stream_buffer_events: int = opt(10_000, "recent events each gateway keeps to replay a "
                                    "resumed stream without reading Kafka again", lo=0,
                                    hi=10_000_000)
    stream_queue_events: int = opt(1000, "events waiting to be written to one stream; a "
                                   "client that falls further behind is disconnected and "
                                   "resumes", lo=10, hi=1_000_000)
    stream_replay_max_events: int = opt(200_000, "most messages read again from Kafka to "
                                        "resume one stream; further back the client gets "
                                        "stream.reset", lo=100)


@dataclass(frozen=True, slots=True)
class SharesConfig:
    max_expiry_s: int = opt(30 * 86400, "longest lifetime of a share link", lo=60)
    default_expiry_s: int = opt(7 * 86400, "lifetime of a share link when none is asked",
                                lo=60)
    password_attempts_per_window: int = opt(10, "wrong share-link passwords allowed per "
                                            "link and client address per rate-limit window",
                                            lo=1)


@dataclass(frozen=True, slots=True)
class SearchConfig:
    similarity_threshold: float = opt(0.3, "trigram similarity a name needs to match a "
                                      "misspelt query (0..1)", lo=0.0, hi=1.0)


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    enabled: bool = opt(True, "apply the sliding-window rate limits below")
    window_s: int = opt(60, "length of the sliding window", lo=1, hi=3600)
    global_per_window: int = opt(20000, "requests per window for the whole gateway", lo=1)
    user_per_window: int = opt(3000, "requests per window per user (or client address "
                               "when anonymous)", lo=1)
    auth_per_window: int = opt(30, "auth requests (login, register, refresh) per window per "
                               "client address", lo=1)
    upload_per_window: int = opt(600, "uploads per window per user", lo=1)
    download_per_window: int = opt(1200, "downloads per window per user", lo=1)
    other_per_window: int = opt(2000, "other API requests per window per user", lo=1)
    fail_open: bool = opt(True, "when Redis is unreachable, let requests through (true) or "
                          "answer 503 (false); either way it is counted in a metric")


@dataclass(frozen=True, slots=True)
class OpsConfig:
    host: str = opt("127.0.0.1", "address the ops HTTP servers of background services bind")
    shutdown_grace_s: float = opt(10.0, "time in-flight work gets to finish on SIGTERM", lo=0.0)


SAMPLERS = ("always_on", "always_off", "traceidratio", "parentbased_always_on",
            "parentbased_always_off", "parentbased_traceidratio")
OTLP_PROTOCOLS = ("http/protobuf", "grpc")


@dataclass(frozen=True, slots=True)
class TelemetryConfig:
    """OpenTelemetry traces (dfms/runtime/telemetry.py). Each key has a standard OTEL_*
    environment variable of the same meaning, which wins when it is set."""

    enabled: bool = opt(True, "set up tracing when an endpoint is given (false, or "
                        "OTEL_SDK_DISABLED=true: never)")
    endpoint: str = opt("", "OTLP collector base URL, e.g. http://127.0.0.1:4318 (traces go "
                        "to <endpoint>/v1/traces over http/protobuf); empty = no exporter, "
                        "no spans (OTEL_EXPORTER_OTLP_ENDPOINT)")
    protocol: str = opt("http/protobuf", "OTLP transport (OTEL_EXPORTER_OTLP_PROTOCOL)",
                        choices=OTLP_PROTOCOLS)
    sampler: str = opt("parentbased_traceidratio", "which traces are kept "
                       "(OTEL_TRACES_SAMPLER); parent-based: a service follows its "
                       "caller, so a trace is whole or absent", choices=SAMPLERS)
    sampler_arg: float = opt(0.01, "ratio of new traces kept by the *traceidratio samplers "
                             "(OTEL_TRACES_SAMPLER_ARG); why 0.01: docs/operations.md, "
                             "Traces", lo=0.0, hi=1.0)
    environment: str = opt("development", "deployment.environment resource attribute of "
                           "every span (production, staging...)")


@dataclass(frozen=True, slots=True)
class Config:
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    postgres: PostgresConfig = field(default_factory=PostgresConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    s3: S3Config = field(default_factory=S3Config)
    chunker: ChunkerConfig = field(default_factory=ChunkerConfig)
    replication: ReplicationConfig = field(default_factory=ReplicationConfig)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    chunk_service: ChunkServiceConfig = field(default_factory=ChunkServiceConfig)
    chunk_client: ChunkServiceClientConfig = field(default_factory=ChunkServiceClientConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    ratelimit: RateLimitConfig = field(default_factory=RateLimitConfig)
    lifecycle: LifecycleConfig = field(default_factory=LifecycleConfig)
    gc: GcConfig = field(default_factory=GcConfig)
    healthmon: HealthmonConfig = field(default_factory=HealthmonConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    shares: SharesConfig = field(default_factory=SharesConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    ops: OpsConfig = field(default_factory=OpsConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)


# --- loading -----------------------------------------------------------------

_SIZE_UNITS = {"": 1, "b": 1, "kib": KIB, "mib": MIB, "gib": GIB, "kb": 1000, "mb": 10**6,
               "gb": 10**9}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([a-zA-Z]*)\s*$")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _sections() -> dict[str, type]:
    hints = get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config)}


def _coerce_list(key: str, raw: object) -> tuple[str, ...]:
    """A list option: a YAML list of strings, or one string of items separated by commas
    or whitespace (how an environment variable gives it)."""
    if isinstance(raw, str):
        return tuple(item for item in re.split(r"[\s,]+", raw) if item)
    if isinstance(raw, (list, tuple)) and all(isinstance(v, str) for v in raw):
        return tuple(v.strip() for v in raw if v.strip())
    raise ConfigError(key, raw, "expected a list of strings (in an environment variable: "
                      "items separated by commas)")


def _coerce(key: str, raw: object, kind: type, name: str) -> object:
    if get_origin(kind) is tuple:
        return _coerce_list(key, raw)
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in _TRUE | _FALSE:
            return text in _TRUE
        raise ConfigError(key, raw, "expected a boolean (true/false)")
    if kind is int:
        if isinstance(raw, bool):
            raise ConfigError(key, raw, "expected an integer")
        if isinstance(raw, int):
            return raw
        match = _SIZE_RE.match(str(raw).replace("_", ""))
        unit = match.group(2).lower() if match else None
        if match and unit in _SIZE_UNITS and (unit == "" or name.endswith("_bytes")):
            return int(match.group(1)) * _SIZE_UNITS[unit]
        allowed = "an integer" + (" or a size like 4MiB" if name.endswith("_bytes") else "")
        raise ConfigError(key, raw, f"expected {allowed}")
    if kind is float:
        if isinstance(raw, bool):
            raise ConfigError(key, raw, "expected a number")
        if not isinstance(raw, str | bytes | SupportsFloat | SupportsIndex):
            raise ConfigError(key, raw, "expected a number")
        try:
            return float(raw)
        except (TypeError, ValueError):
            raise ConfigError(key, raw, "expected a number") from None
    if isinstance(raw, (dict, list)):
        raise ConfigError(key, raw, "expected a string")
    return str(raw)


def _check(key: str, value: object, meta: Mapping[str, Any]) -> None:
    lo, hi, choices = meta.get("lo"), meta.get("hi"), meta.get("choices")
    problem = meta["check"](value) if meta.get("check") else None
    if problem:
        raise ConfigError(key, value, problem)
    if choices is not None and value not in choices:
        raise ConfigError(key, value, f"expected one of {', '.join(choices)}")
    if isinstance(value, (int, float)):
        if lo is not None and value < lo:
            raise ConfigError(key, value, f"must be >= {lo}")
        if hi is not None and value > hi:
            raise ConfigError(key, value, f"must be <= {hi}")
        if isinstance(value, float) and value != value:  # NaN
            raise ConfigError(key, value, "must be a number")


def _build_section(name: str, cls: type, values: Mapping[str, object]) -> object:
    hints = get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in values:
        if key not in known:
            allowed = ", ".join(sorted(known))
            raise ConfigError(f"{name}.{key}", values[key], f"unknown option; known: {allowed}")
    kwargs: dict[str, object] = {}
    for fname, f in known.items():
        if fname not in values:
            continue
        key = f"{name}.{fname}"
        value = _coerce(key, values[fname], hints[fname], fname)
        _check(key, value, f.metadata)
        kwargs[fname] = value
    return cls(**kwargs)


def _validate_cross(cfg: Config) -> None:
    rep = cfg.replication
    if rep.write_quorum_w > rep.replicas_n:
        raise ConfigError("replication.write_quorum_w", rep.write_quorum_w,
                          f"must be <= replication.replicas_n ({rep.replicas_n})")
    ch = cfg.chunker
    if not ch.min_size_bytes < ch.avg_size_bytes < ch.max_size_bytes:
        raise ConfigError("chunker.avg_size_bytes", ch.avg_size_bytes,
                          f"must lie strictly between min_size_bytes ({ch.min_size_bytes}) "
                          f"and max_size_bytes ({ch.max_size_bytes})")
    try:
        chunker_params(ch)
    except InvalidChunkerParams as exc:
        raise ConfigError(f"chunker.{exc.param}_bytes", exc.value, exc.allowed) from exc
    pg = cfg.postgres
    if pg.pool_min_size > pg.pool_max_size:
        raise ConfigError("postgres.pool_min_size", pg.pool_min_size,
                          f"must be <= postgres.pool_max_size ({pg.pool_max_size})")


def chunker_params(ch: ChunkerConfig) -> ChunkerParams:
    """The chunker's own parameter object, validated by the chunker's rules."""
    return ChunkerParams(ch.algorithm, ch.min_size_bytes, ch.avg_size_bytes,
                         ch.max_size_bytes).validate()


def _merge(base: dict[str, dict[str, object]], layer: Mapping[str, object], origin: str) -> None:
    sections = _sections()
    for name, values in layer.items():
        if name not in sections:
            raise ConfigError(name, values, f"unknown section in {origin}; known: "
                              + ", ".join(sorted(sections)))
        if not isinstance(values, Mapping):
            raise ConfigError(name, values, f"a section in {origin} must be a mapping")
        base.setdefault(name, {}).update(values)


def _env_layer(env: Mapping[str, str]) -> dict[str, dict[str, object]]:
    layer: dict[str, dict[str, object]] = {}
    for var, value in env.items():
        if not var.startswith(ENV_PREFIX) or "__" not in var:
            continue
        section, _, name = var[len(ENV_PREFIX):].lower().partition("__")
        layer.setdefault(section, {})[name] = value
    return layer


def read_yaml(path: str | Path) -> dict[str, object]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("--config", str(path), f"cannot read the file ({exc.strerror})") from exc
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError("--config", str(path), f"not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError("--config", str(path), "the file must hold a mapping of sections")
    return data


def load_config(path: str | Path | None = None, *, env: Mapping[str, str] | None = None,
                overrides: Mapping[str, Mapping[str, object]] | None = None) -> Config:
    """Build the effective config: defaults < YAML file < environment < overrides."""
    env = os.environ if env is None else env
    merged: dict[str, dict[str, object]] = {}
    path = path or env.get(ENV_CONFIG_PATH)
    if path:
        _merge(merged, read_yaml(path), str(path))
    _merge(merged, _env_layer(env), "the environment")
    if overrides:
        _merge(merged, overrides, "overrides")
    # Each value is the section dataclass its name calls for, known only at run time.
    sections: dict[str, Any] = {name: _build_section(name, cls, merged.get(name, {}))
                                for name, cls in _sections().items()}
    cfg = Config(**sections)
    _validate_cross(cfg)
    return cfg


# --- presenting --------------------------------------------------------------

def mask_url(url: str) -> str:
    """A URL or DSN with its password hidden, the rest kept readable."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", rf"\g<1>{MASK}@", url)


def _plain(value: object) -> object:
    """A value as YAML and JSON have it: list options as lists."""
    return list(value) if isinstance(value, tuple) else value


def _mask(value: object) -> object:
    if isinstance(value, str) and "://" in value:
        return mask_url(value)
    return MASK if value else value


def to_dict(cfg: Config, *, mask_secrets: bool = False) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    for section in dataclasses.fields(cfg):
        obj = getattr(cfg, section.name)
        values: dict[str, object] = {}
        for f in dataclasses.fields(obj):
            value = _plain(getattr(obj, f.name))
            values[f.name] = _mask(value) if mask_secrets and f.metadata.get("secret") else value
        out[section.name] = values
    return out


def dump_yaml(cfg: Config, *, mask_secrets: bool = False) -> str:
    return yaml.safe_dump(to_dict(cfg, mask_secrets=mask_secrets), sort_keys=False)


def sample_yaml() -> str:
    """Every option with its default and one-line meaning, as a commented YAML file."""
    lines = ["# DFMS configuration: every option, its default and what it means.",
             "# Layering: built-in defaults < this file (--config / DFMS_CONFIG)",
             "# < environment variables DFMS_<SECTION>__<OPTION> (e.g. DFMS_GATEWAY__PORT=9000).",
             "# Sizes (*_bytes) accept units: 256KiB, 4MiB, 1GiB. Durations (*_s) are seconds.",
             ""]
    defaults = Config()
    for section in dataclasses.fields(defaults):
        lines.append(f"{section.name}:")
        obj = getattr(defaults, section.name)
        for f in dataclasses.fields(obj):
            lines.append(f"  # {f.metadata['doc']}")
            value = yaml.safe_dump({f.name: _plain(getattr(obj, f.name))},
                                   default_flow_style=True)
            lines.append(f"  {value.strip()[1:-1]}")
        lines.append("")
    return "\n".join(lines)


def markdown_table() -> str:
    """The README's configuration table: every option, default, env var and meaning."""
    rows = ["| option | default | env var | meaning |", "|---|---|---|---|"]
    defaults = Config()
    for section in dataclasses.fields(defaults):
        obj = getattr(defaults, section.name)
        for f in dataclasses.fields(obj):
            value = _plain(getattr(obj, f.name))
            if f.metadata.get("secret") and not value:
                value = "(generated by `dfms up`)"
            env = f"{ENV_PREFIX}{section.name.upper()}__{f.name.upper()}"
            rows.append(f"| `{section.name}.{f.name}` | `{value}` | `{env}` | "
                        f"{f.metadata['doc']} |")
    return "\n".join(rows) + "\n"
