"""The `dfms` command line: one console script, one subcommand per job."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from dfms import __version__
from dfms.client.cli import add_user_commands
from dfms.config import ENV_PREFIX, Config, dump_yaml, load_config, markdown_table, sample_yaml
from dfms.errors import (
    ConfigError,
    DfmsError,
    NoConfigError,
)
from dfms.nodes import (
    WEIGHT_RULE,
    InvalidNode,
    NodeSpec,
    check_data_dir,
    check_node_id,
    check_weight,
    clean_endpoint,
    clean_zone,
)
from dfms.runtime.logs import get_logger, setup_logging
from dfms.runtime.service import PassStats

if TYPE_CHECKING:
    from dfms.metadata.admin import NodeRow
    from dfms.replication.scrubber import Scrubber
    from dfms.runtime.pooled import PooledService
    from dfms.runtime.service import Service

DEFAULT_DATA_DIR = ".dfms"
ENV_DATA_DIR = "DFMS_DATA_DIR"


def _data_dir(args: argparse.Namespace) -> Path:
    return Path(args.data_dir or os.environ.get(ENV_DATA_DIR) or DEFAULT_DATA_DIR)


def resolve_config(args: argparse.Namespace) -> Config:
    """--config, else DFMS_CONFIG, else the config `dfms up` wrote in the data dir."""
    if args.config:
        return load_config(args.config)
    if os.environ.get("DFMS_CONFIG"):
        return load_config()
    cluster_cfg = _data_dir(args) / "dfms.yaml"
    if cluster_cfg.exists():
        return load_config(cluster_cfg)
    if args.data_dir:
        raise ConfigError("--data-dir", str(args.data_dir),
                          "no dfms.yaml there; start the cluster with `dfms up` first")
    if any(var.startswith(ENV_PREFIX) and "__" in var for var in os.environ):
        return load_config()  # configured by DFMS_<SECTION>__<OPTION> alone (containers)
    raise NoConfigError(
        f"no cluster config found: {cluster_cfg.resolve()} does not exist. Start a local "
        f"cluster here with `dfms up`, or point at one with --data-dir DIR (a `dfms up` "
        f"data dir), --config FILE or $DFMS_CONFIG, or configure with "
        f"DFMS_<SECTION>__<OPTION> environment variables")


# --- up ----------------------------------------------------------------------

async def _up(args: argparse.Namespace) -> int:
    from dfms.localstack.cluster import LocalCluster, UpOptions

    opts = UpOptions(data_dir=_data_dir(args), nodes=args.nodes,
                     gateway_port=args.gateway_port,
                     config_path=Path(args.config) if args.config else None,
                     observability=args.observability)
    cluster = LocalCluster(opts)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    start = asyncio.create_task(cluster.start())
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({start, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if not start.done():
        print("dfms up: interrupted during start-up; stopping", flush=True)
        start.cancel()
        with contextlib.suppress(asyncio.CancelledError, DfmsError):
            await start
        return 130
    stopper.cancel()
    start.result()  # re-raise a start-up failure
    print(f"\nDFMS local cluster ({opts.nodes} S3 nodes), data in {cluster.data_dir}:")
    print(cluster.endpoints_text())
    if cluster.first_start:
        print(_next_steps(cluster.data_dir))
    print(f"dfms up: ready in {cluster.ready_after_s:.1f}s; Ctrl-C stops everything", flush=True)
    await stop.wait()
    print("dfms up: stopping (reverse order)", flush=True)
    await cluster.stop()
    print("dfms up: stopped", flush=True)
    return 0


def _next_steps(data_dir: Path) -> str:
    dd = f" --data-dir {data_dir}" if data_dir != Path(DEFAULT_DATA_DIR).resolve() else ""
    return "\n".join((
        "", "Next steps (printed on a first start):",
        f"  create the first admin:  dfms admin create-user{dd} --admin --email you@example.com",
        f"  the services' config:    {data_dir / 'dfms.yaml'}   (dfms config show{dd})",
        f"  endpoints and secrets:   {data_dir / 'cluster.json'}",
        f"  processes:               dfms cluster ps{dd}",
        "  stop everything:         Ctrl-C here (the data stays; `dfms up` again resumes)", ""))


def cmd_up(args: argparse.Namespace) -> int:
    setup_logging("INFO", "text")
    return asyncio.run(_up(args))


# --- services ------------------------------------------------------------------

def _serve(args: argparse.Namespace, service: Callable[[Config], Service]) -> int:
    """Run a service until it is stopped. Each command imports its own service class, so
    `dfms gateway` does not import the GC, the chunk service or the replication manager."""
    from dfms.runtime.service import main_for

    cfg = resolve_config(args)
    return main_for(service(cfg), cfg)


def cmd_gateway(args: argparse.Namespace) -> int:
    from dfms.gateway.app import GatewayService

    return _serve(args, GatewayService)


def cmd_chunk_service(args: argparse.Namespace) -> int:
    from dfms.chunkservice.service import ChunkService

    return _serve(args, ChunkService)


def cmd_health_monitor(args: argparse.Namespace) -> int:
    from dfms.healthmon.service import HealthMonitor

    return _serve(args, HealthMonitor)


def cmd_event_relay(args: argparse.Namespace) -> int:
    from dfms.events.relay import OutboxRelay

    return _serve(args, OutboxRelay)


_P = TypeVar("_P", bound="PooledService")


def _one_pass(cfg: Config, service: str, make: Callable[[], _P],
              run: Callable[[_P], Awaitable[int]]) -> int:
    """Run one pass in the foreground (--once, --scrub), print it, and close what ran it.
    It is traced as ``service``'s passes are (a root span per pass, when an endpoint is
    set), and the spans are flushed before the command exits. ``make`` is called inside
    the event loop, so a runner may bind loop objects as it is built."""
    from dfms.runtime.service import flush_traces, pass_span
    from dfms.runtime.telemetry import setup_tracing

    setup_logging(cfg.logging.level, cfg.logging.format)

    async def main() -> int:
        telemetry = setup_tracing(service, cfg.telemetry)  # before the runner's clients
        try:
            runner = make()
            try:
                with pass_span(runner.name) as span:
                    span.set_attribute("dfms.pass.manual", True)  # not a scheduled pass
                    return await run(runner)
            finally:
                await runner.close()
        finally:
            await flush_traces(telemetry, get_logger("dfms.cli"))

    return asyncio.run(main())


async def _run_once(runner: PooledService) -> int:
    return _print_stats(await runner.run_once())


async def _scrub(scrubber: Scrubber) -> int:
    code = _print_stats(await scrubber.full_pass())
    if scrubber.last_pass_seconds is not None:  # the pass began before this run
        print(f"{'pass_seconds':<34} {scrubber.last_pass_seconds:.3f}")
    return code


def _print_stats(stats: PassStats) -> int:
    from opentelemetry import trace

    from dfms.runtime.service import record_pass

    record_pass(trace.get_current_span(), stats)
    for name, count in sorted(stats.counters.items()):
        print(f"{name:<34} {count}")
    print(f"{'errors':<34} {stats.errors}")
    return 0 if stats.errors == 0 else 1


def cmd_gc_worker(args: argparse.Namespace) -> int:
    from dfms.gc.worker import GcWorker
    from dfms.runtime.service import main_for

    cfg = resolve_config(args)
    if args.dry_run and not args.once:
        raise ConfigError("--dry-run", True, "only meaningful with --once")
    if not args.once:
        return main_for(GcWorker(cfg), cfg)
    return _one_pass(cfg, GcWorker.name, lambda: GcWorker(cfg, dry_run=args.dry_run),
                     _run_once)


def cmd_replication_manager(args: argparse.Namespace) -> int:
    from dfms.replication.manager import ReplicationManager
    from dfms.replication.scrubber import Scrubber
    from dfms.runtime.service import main_for

    cfg = resolve_config(args)
    if args.scrub:  # also with --once: a scrub is the pass asked for
        return _one_pass(cfg, ReplicationManager.name, lambda: Scrubber(cfg), _scrub)
    if args.once:
        return _one_pass(cfg, ReplicationManager.name, lambda: ReplicationManager(cfg),
                         _run_once)
    return main_for(ReplicationManager(cfg), cfg)


# --- migrate -------------------------------------------------------------------

async def _migrate(args: argparse.Namespace) -> int:
    from dfms.metadata import db, migrate

    cfg = resolve_config(args)
    conn = await db.connect(cfg.postgres)
    try:
        if args.action == "up":
            done = await migrate.migrate_up(conn, target=args.to)
            for m in done:
                print(f"applied  {m.version:04d}_{m.name}")
            print(f"{len(done)} migration(s) applied")
            await _ensure_topics(cfg, args.wait_for_topics)
        elif args.action == "down":
            done = await migrate.migrate_down(conn, steps=args.steps)
            for m in done:
                print(f"reverted {m.version:04d}_{m.name}")
            print(f"{len(done)} migration(s) reverted")
        else:
            for st in await migrate.status(conn):
                mark = "applied" if st.applied else "pending"
                warn = "" if st.checksum_ok else "  (file changed since it was applied!)"
                print(f"{st.version:04d}_{st.name:<24} {mark}{warn}")
    finally:
        await conn.close()
    return 0


async def _ensure_topics(cfg: Config, wait_s: float = 0.0) -> None:
    """The Kafka topics belong to the schema too. By default a broker that is unreachable
    or refuses them only warns (the outbox keeps events, and the relay creates missing
    topics before it publishes); given ``wait_s`` (--wait-for-topics), it is retried that
    long and then an error."""
    from dfms.events.topics import ensure_topics

    try:
        created = await ensure_topics(cfg.kafka, wait_s=wait_s)
    except DfmsError as exc:
        if wait_s > 0:
            raise DfmsError(f"Kafka topics not created within {wait_s:g}s: {exc}") from exc
        print(f"warning: Kafka topics not checked: {exc}", file=sys.stderr)
        return
    if created:
        print(f"Kafka topics: {', '.join(created)} created (replication factor "
              f"{cfg.kafka.topic_replication_factor})")
    else:
        print("Kafka topics: all present")


def cmd_migrate(args: argparse.Namespace) -> int:
    return asyncio.run(_migrate(args))


# --- cluster control ------------------------------------------------------------------

def _human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / (1 << 20):.0f} MiB" if n < 10 << 30 else f"{n / (1 << 30):.1f} GiB"


def _human_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    minutes, secs = divmod(int(s), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _print_processes(listing: dict[str, dict[str, Any]]) -> None:
    print(f"{'NAME':<20} {'STATE':<12} {'PID':>7}  {'RSS':>8}  {'UPTIME':>8}  "
          f"{'RESTARTS':>8}  LISTENS ON")
    for name, p in listing.items():
        # The control API keeps the pid of a process that is no longer running.
        pid = p["pid"] if p["running"] and p["pid"] else "-"
        print(f"{name:<20} {p['state']:<12} {pid:>7}  "
              f"{_human_bytes(p['rss_bytes']):>8}  {_human_seconds(p['uptime_s']):>8}  "
              f"{p['restarts']:>8}  {p['endpoint'] or '-'}")


# What `dfms cluster ACTION NAME` printed when it worked; exit code 0.
_DONE = {"stop": "stopped {name} (exit code {exit_code}); it stays down until "
                 "`dfms cluster start {name}`",
         "kill": "killed {name} with SIGKILL; it stays down until `dfms cluster start {name}`",
         "start": "started {name} (pid {pid}); it is ready"}
# Nothing to do (exit code 0 too). Without this the control API's answer read as if
# something had happened: the exit code of an earlier stop ("killed node-2" of a node
# already down), or "started" for a process that never stopped.
_IDLE = {"stop": "{name} was not running ({state}): nothing to stop; it stays down until "
                 "`dfms cluster start {name}`",
         "kill": "{name} was not running ({state}): nothing to kill; it stays down until "
                 "`dfms cluster start {name}`",
         "start": "{name} is already running (pid {pid})"}


async def _cluster(args: argparse.Namespace) -> int:
    import aiohttp

    from dfms.localstack.control import TOKEN_HEADER

    control = _control_endpoint(args)
    headers = {TOKEN_HEADER: control["token"]}
    if args.action != "ps" and not args.name:
        raise DfmsError(f"`dfms cluster {args.action}` needs a process name "
                        "(see `dfms cluster ps`)")
    try:
        async with aiohttp.ClientSession(headers=headers) as http:
            async with http.get(f"{control['url']}/processes") as resp:
                listing = await resp.json()
            if args.action == "ps":
                _print_processes(listing)
                return 0
            known = listing.get(args.name)
            idle = known is not None and known["running"] == (args.action == "start")
            # A process waiting out a restart is not running, but the call still
            # cancels that restart; one stopped on purpose has nothing to undo.
            if not (idle and known["state"] in ("running", "stopped")):
                async with http.post(f"{control['url']}/processes/{args.name}/"
                                     f"{args.action}") as resp:
                    body = await resp.json()
    except aiohttp.ClientConnectionError as exc:
        raise DfmsError(f"the `dfms up` of {_data_dir(args)} does not answer ({exc}); "
                        "is it still running?") from exc
    if idle:
        print(_IDLE[args.action].format(name=args.name, **known))
        return 0
    if resp.status != 200:
        raise DfmsError(f"could not {args.action} {args.name}: {body.get('error')}")
    print(_DONE[args.action].format(**{**body, "name": args.name}))
    return 0


def _control_endpoint(args: argparse.Namespace) -> dict[str, Any]:
    """The control API of the running `dfms up` of the data dir, or why there is none."""
    from dfms.localstack.cluster import STALE, read_cluster_file
    from dfms.localstack.records import ProcessRecord

    info = read_cluster_file(_data_dir(args))
    control: dict[str, Any] = info.get("control") or {}
    if info.get("state") == STALE:
        left = ", ".join(f"{r.name} (pid {r.pid})"
                         for r in ProcessRecord(_data_dir(args)).survivors()) or "none"
        raise DfmsError(f"the `dfms up` of {_data_dir(args)} (pid {info.get('pid')}) is no "
                        f"longer running: its cluster.json is stale (was it killed?). "
                        f"Processes of it still running: {left}")
    if info.get("state") != "ready" or not control:
        raise DfmsError(f"no running cluster in {_data_dir(args)} (start it with `dfms up`)")
    return control


def cmd_cluster(args: argparse.Namespace) -> int:
    return asyncio.run(_cluster(args))


# --- storage nodes -------------------------------------------------------------------

async def _nodes_register(args: argparse.Namespace) -> int:
    from dfms.metadata import admin as adm
    from dfms.metadata import db, membership
    from dfms.metadata.errors import NodeExists

    cfg = resolve_config(args)
    node = NodeSpec(args.node_id, args.endpoint, args.zone, args.weight, args.node_data_dir)
    conn = await db.connect(cfg.postgres)
    try:
        # The admin API's own add: the same checks, the endpoint probe, one new epoch.
        done = await membership.add_node(conn, node, cfg.s3)
    except NodeExists:  # registered before (or just now, by a concurrent run)
        known = await adm.get_node(conn, node.node_id)
        assert known is not None  # node ids are never deleted by the CLI or the API
        _print_known(node, known)
        return 0
    finally:
        await conn.close()
    print(f"node {node.node_id}: registered ({node.endpoint}, zone {node.zone}, weight "
          f"{node.weight:g}); ring epoch {done.epoch}")
    return 0


def _print_known(node: NodeSpec, row: NodeRow) -> None:
    print(f"node {row.id}: already registered ({row.endpoint}, zone {row.zone}, weight "
          f"{row.weight:g}, {row.admin_state}); not changed: registered nodes are managed "
          "through the admin API (/api/v1/admin/nodes)")
    given = {"endpoint": (row.endpoint, node.endpoint), "zone": (row.zone, node.zone),
             "weight": (row.weight, node.weight)}
    differ = [f"{name} {mine} (given: {theirs})" for name, (mine, theirs) in given.items()
              if mine != theirs]
    if differ:
        print(f"warning: node {row.id} is registered with another " + ", ".join(differ),
              file=sys.stderr)


def cmd_nodes_register(args: argparse.Namespace) -> int:
    return asyncio.run(_nodes_register(args))


async def _nodes_list(args: argparse.Namespace) -> int:
    from dfms.metadata import admin as adm
    from dfms.metadata import db
    from dfms.ring import store as ring_store

    cfg = resolve_config(args)
    conn = await db.connect(cfg.postgres)
    try:
        nodes = await adm.list_nodes(conn)
        ring = await ring_store.load_latest(conn)
    finally:
        await conn.close()
    in_ring = {m.node_id: m.state for m in ring.members} if ring is not None else {}
    rows = [("ID", "ENDPOINT", "ZONE", "WEIGHT", "STATE", "RING", "HEALTH")]
    rows += [(n.id, n.endpoint, n.zone, f"{n.weight:g}", n.admin_state,
              in_ring.get(n.id, "-"), n.health) for n in nodes]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip())
    print(f"ring epoch {ring.epoch}" if ring is not None else "no ring yet: register a node")
    return 0


def cmd_nodes_list(args: argparse.Namespace) -> int:
    return asyncio.run(_nodes_list(args))


# --- keys and config ---------------------------------------------------------------

def cmd_keys(args: argparse.Namespace) -> int:
    from dfms.keys import generate_key

    keys_dir = Path(args.dir) if args.dir else Path(resolve_config(args).auth.keys_dir)
    try:
        if args.if_missing:
            return _first_keys(keys_dir)
        key = generate_key(keys_dir)
    except OSError as exc:
        raise DfmsError(f"cannot write keys in {keys_dir}: {exc}") from exc
    print(f"generated ES256 key {key.kid} in {keys_dir} (now current)")
    return 0


def _first_keys(keys_dir: Path) -> int:
    """The first signing key and the share-link secret, each only if there is none: what
    a deployment runs on every start (an existing key is kept, never rotated)."""
    from dfms.auth.share_tokens import KEY_FILE, load_or_create_secret
    from dfms.keys import CURRENT_FILE, ensure_keys

    had_key, had_secret = (keys_dir / CURRENT_FILE).exists(), (keys_dir / KEY_FILE).exists()
    key = ensure_keys(keys_dir)
    load_or_create_secret(keys_dir)
    print(f"signing key {key.kid} in {keys_dir}: "
          + ("present, kept" if had_key else "generated (now current)"))
    print(f"share-link secret {keys_dir / KEY_FILE}: "
          + ("present, kept" if had_secret else "created"))
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    if args.action == "sample":
        sys.stdout.write(sample_yaml())
    elif args.action == "markdown":
        sys.stdout.write(markdown_table())
    else:
        sys.stdout.write(dump_yaml(resolve_config(args), mask_secrets=True))
    return 0


# --- admin ---------------------------------------------------------------------------

def _admin_password(args: argparse.Namespace) -> str:
    """--password, else a prompt on a terminal, else one line of stdin (for scripts that
    should not put the password in the process list)."""
    if args.password is not None:
        return str(args.password)
    if sys.stdin.isatty():
        import getpass

        return getpass.getpass("password: ")
    return sys.stdin.readline().rstrip("\r\n")


async def _admin(args: argparse.Namespace) -> int:
    from dfms.auth import accounts
    from dfms.metadata import db

    cfg = resolve_config(args)
    # Validate and hash before connecting, the same way the API does (shared code).
    new = await accounts.prepare_user(
        cfg.auth, email=args.email, password=_admin_password(args),
        display_name=args.display_name or args.email.strip().partition("@")[0],
        role="admin" if args.admin else "user")
    conn = await db.connect(cfg.postgres)
    try:
        user = await accounts.insert_user(conn, new)
    finally:
        await conn.close()
    print(user.id)
    return 0


def cmd_admin(args: argparse.Namespace) -> int:
    return asyncio.run(_admin(args))


# --- parser --------------------------------------------------------------------------

def _global_options(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument("--config", default=default, help="YAML config file (default: "
                        "$DFMS_CONFIG, else the data dir's dfms.yaml written by `dfms up`)")
    parser.add_argument("--data-dir", default=default, help=f"cluster data directory "
                        f"(default: ${ENV_DATA_DIR} or {DEFAULT_DATA_DIR})")


def _subcommands(parser: argparse.ArgumentParser, dest: str
                 ) -> Callable[..., argparse.ArgumentParser]:
    """``add(name, help, func)``: a subcommand that also takes the global options.

    Given after the subcommand they win; left out, they keep what was given before it
    (SUPPRESS: an absent option does not overwrite the namespace)."""
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, argparse.SUPPRESS)
    sub = parser.add_subparsers(dest=dest, required=True)

    def add(name: str, help: str, func: Callable[[argparse.Namespace], int] | None = None
            ) -> argparse.ArgumentParser:
        child = sub.add_parser(name, help=help, description=help, parents=[common])
        if func is not None:
            child.set_defaults(func=func)
        return child
    return add


def _add_up(add: Callable[..., argparse.ArgumentParser]) -> None:
    up = add("up", "start the whole local cluster in this terminal", cmd_up)
    up.add_argument("--nodes", type=int, default=3, help="S3 storage nodes (default 3)")
    up.add_argument("--gateway-port", type=int, default=8080,
                    help="gateway port (default 8080; 0 picks a free one)")
    up.add_argument("--observability", action="store_true",
                    help="also start Prometheus (Debian's `prometheus` package) scraping "
                         "every service, with the alert rules")


def _add_services(add: Callable[..., argparse.ArgumentParser]) -> None:
    add("gateway", "run the HTTP gateway", cmd_gateway)
    add("chunk-service", "run the gRPC chunk service", cmd_chunk_service)
    add("health-monitor", "probe the storage nodes, track their health", cmd_health_monitor)
    add("event-relay", "publish outbox events to Kafka", cmd_event_relay)
    gcw = add("gc-worker", "run the garbage collector (or one pass)", cmd_gc_worker)
    gcw.add_argument("--once", action="store_true", help="run one pass, print its counts")
    gcw.add_argument("--dry-run", action="store_true",
                     help="with --once: only report what a pass would collect")
    rm = add("replication-manager", "repair, rebalance and scrub replicas (or one pass)",
             cmd_replication_manager)
    mode = rm.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true",
                      help="run one pass (repair queue and full reconciliation), print counts")
    mode.add_argument("--scrub", action="store_true",
                      help="run one full scrub pass over every replica, print counts")


def _node_rule(check: Callable[[str], object]) -> Callable[[str], object]:
    """An argument type from a rule of ``dfms.nodes``: a broken rule is a usage error."""
    def convert(text: str) -> object:
        try:
            return check(text)
        except InvalidNode as exc:
            raise argparse.ArgumentTypeError(exc.reason) from None

    convert.__name__ = check.__name__
    return convert


def _weight(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InvalidNode("weight", WEIGHT_RULE) from None
    return check_weight(value)


def _add_nodes(add: Callable[..., argparse.ArgumentParser]) -> None:
    nodes = _subcommands(add("nodes", "register and list storage nodes"), "action")
    reg = nodes("register", "register a storage node and add it to the ring, if its id is "
                "new", cmd_nodes_register)
    reg.epilog = ("Only an id the database has never seen is registered (after a check that "
                  "the endpoint answers with the configured S3 credentials and has the "
                  "bucket); a known id is left as it is, even if drained or removed since, "
                  "so running this again (e.g. on every deployment) changes nothing. "
                  "Afterwards the admin API manages the node.")
    reg.add_argument("node_id", metavar="ID", type=_node_rule(check_node_id),
                     help="node id: lowercase letters, digits and '-' (never reused)")
    reg.add_argument("--endpoint", required=True, type=_node_rule(clean_endpoint),
                     help="the node's S3 endpoint, e.g. http://minio-1:9000")
    reg.add_argument("--zone", required=True, type=_node_rule(clean_zone),
                     help="failure domain (rack, room, availability zone): replicas of a "
                     "chunk go to distinct zones where possible")
    reg.add_argument("--weight", type=_node_rule(_weight), default=1.0,
                     help="share of the chunks relative to the other nodes (default 1)")
    # Not --data-dir: that global option names the `dfms up` cluster's directory.
    reg.add_argument("--local-data-dir", dest="node_data_dir", metavar="PATH",
                     type=_node_rule(check_data_dir), default=None,
                     help="the node's data directory, only if the health monitor runs on "
                     "the same host: it then reports that disk's free space "
                     "(dfms_node_disk_free_bytes); leave out for a node elsewhere")
    nodes("list", "list the storage nodes: endpoint, zone, weight, state, ring state, health",
          cmd_nodes_list)


def _add_keys(add: Callable[..., argparse.ArgumentParser]) -> None:
    keys = add("keys", "manage ES256 token-signing keys", cmd_keys)
    keys.add_argument("action", choices=("generate",))
    keys.add_argument("--dir", help="key directory (default: auth.keys_dir of the config)")
    keys.add_argument("--if-missing", action="store_true",
                      help="create the first signing key and the share-link secret only "
                      "where there are none; existing ones are kept (for deployments)")


def _add_tools(add: Callable[..., argparse.ArgumentParser]) -> None:
    clu = add("cluster", "list, stop, kill or start processes of `dfms up`", cmd_cluster)
    clu.epilog = ("ps lists every process with its state, pid, memory, uptime and address. "
                  "stop sends the process its normal shutdown signal and waits (a clean stop); "
                  "kill sends SIGKILL (a crash, for fault drills). Neither is restarted until "
                  "`start`, which waits until the process is ready again.")
    clu.add_argument("action", choices=("ps", "stop", "kill", "start"))
    clu.add_argument("name", nargs="?", help="process name, e.g. node-2")
    mig = add("migrate", "apply, revert or list schema migrations", cmd_migrate)
    mig.add_argument("action", choices=("up", "down", "status"))
    mig.add_argument("--to", type=int, help="up: stop at this version")
    mig.add_argument("--steps", type=int, default=1, help="down: how many to revert")
    mig.add_argument("--wait-for-topics", type=float, default=0.0, metavar="SECONDS",
                     help="up: keep trying to create missing Kafka topics this long (brokers "
                     "still starting), then fail; default: try once, only warn")
    _add_keys(add)
    _add_nodes(add)
    conf = add("config", "show the effective config or a sample file", cmd_config)
    conf.add_argument("action", choices=("show", "sample", "markdown"))
    adm = add("admin", "account administration against the cluster database")
    create = _subcommands(adm, "action")("create-user", "create an account and print its id",
                                         cmd_admin)
    create.add_argument("--email", required=True)
    create.add_argument("--password", help="the password (default: prompt, or a line of "
                        "stdin when it is not a terminal)")
    create.add_argument("--display-name", help="default: the part of the email before '@'")
    create.add_argument("--admin", action="store_true", help="give the account the admin role")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dfms", description="DFMS distributed file store")
    parser.add_argument("--version", action="version", version=f"dfms {__version__}")
    _global_options(parser, None)
    add = _subcommands(parser, "command")
    _add_up(add)
    _add_services(add)
    _add_tools(add)
    add_user_commands(add)  # login, put, get, ls, ...: the SDK's user commands
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    if getattr(args, "nodes", 1) < 1:
        print("dfms: error: --nodes must be at least 1", file=sys.stderr)
        return 2
    try:
        return func(args)
    except ConfigError as exc:
        print(f"dfms: config error: {exc}", file=sys.stderr)
        return 2
    except NoConfigError as exc:
        print(f"dfms: {exc}", file=sys.stderr)
        return 2
    except DfmsError as exc:
        print(f"dfms: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `dfms cluster ps | head` closed the pipe: no traceback, and none either when
        # the interpreter flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports a command a pipe ended
