"""The `dfms` command line: one console script, one subcommand per job."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from dfms.config import Config, dump_yaml, load_config, markdown_table, sample_yaml
from dfms.errors import ConfigError, DfmsError
from dfms.runtime.logs import setup_logging
from dfms.runtime.service import PassStats

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
    if args.data_dir and not cluster_cfg.exists():
        raise ConfigError("--data-dir", str(args.data_dir),
                          "no dfms.yaml there; start the cluster with `dfms up` first")
    return load_config(cluster_cfg if cluster_cfg.exists() else None)


# --- up ----------------------------------------------------------------------

async def _up(args: argparse.Namespace) -> int:
    from dfms.localstack.cluster import LocalCluster, UpOptions

    opts = UpOptions(data_dir=_data_dir(args), nodes=args.nodes,
                     gateway_port=args.gateway_port,
                     config_path=Path(args.config) if args.config else None)
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
    print(f"dfms up: ready in {cluster.ready_after_s:.1f}s; Ctrl-C stops everything", flush=True)
    await stop.wait()
    print("dfms up: stopping (reverse order)", flush=True)
    await cluster.stop()
    print("dfms up: stopped", flush=True)
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    setup_logging("INFO", "text")
    return asyncio.run(_up(args))


# --- services ------------------------------------------------------------------

def cmd_gateway(args: argparse.Namespace) -> int:
    from dfms.gateway.app import GatewayService
    from dfms.runtime.service import main_for

    cfg = resolve_config(args)
    return main_for(GatewayService(cfg), cfg)


def cmd_chunk_service(args: argparse.Namespace) -> int:
    from dfms.chunkservice.service import ChunkService
    from dfms.runtime.service import main_for

    cfg = resolve_config(args)
    return main_for(ChunkService(cfg), cfg)


def cmd_health_monitor(args: argparse.Namespace) -> int:
    from dfms.healthmon.service import HealthMonitor
    from dfms.runtime.service import main_for

    cfg = resolve_config(args)
    return main_for(HealthMonitor(cfg), cfg)


def cmd_event_relay(args: argparse.Namespace) -> int:
    from dfms.events.relay import OutboxRelay
    from dfms.runtime.service import main_for

    cfg = resolve_config(args)
    return main_for(OutboxRelay(cfg), cfg)


def cmd_gc_worker(args: argparse.Namespace) -> int:
    from dfms.gc.worker import GcWorker
    from dfms.runtime.service import main_for

    cfg = resolve_config(args)
    if args.dry_run and not args.once:
        raise ConfigError("--dry-run", True, "only meaningful with --once")
    if not args.once:
        return main_for(GcWorker(cfg), cfg)
    setup_logging(cfg.logging.level, cfg.logging.format)

    async def one_pass() -> int:
        worker = GcWorker(cfg, dry_run=args.dry_run)
        try:
            stats = await worker.run_once()
        finally:
            await worker.close()
        return _print_stats(stats)

    return asyncio.run(one_pass())


def _print_stats(stats: PassStats) -> int:
    for name, count in sorted(stats.counters.items()):
        print(f"{name:<34} {count}")
    print(f"{'errors':<34} {stats.errors}")
    return 0 if stats.errors == 0 else 1


def cmd_replication_manager(args: argparse.Namespace) -> int:
    from dfms.replication.manager import ReplicationManager
    from dfms.replication.scrubber import Scrubber
    from dfms.runtime.service import main_for

    cfg = resolve_config(args)
    if not (args.once or args.scrub):
        return main_for(ReplicationManager(cfg), cfg)
    setup_logging(cfg.logging.level, cfg.logging.format)

    async def one_pass() -> int:
        if args.scrub:
            scrubber = Scrubber(cfg)
            try:
                code = _print_stats(await scrubber.full_pass())
                if scrubber.last_pass_seconds is not None:  # the pass began before this run
                    print(f"{'pass_seconds':<34} {scrubber.last_pass_seconds:.3f}")
                return code
            finally:
                await scrubber.close()
        manager = ReplicationManager(cfg)
        try:
            return _print_stats(await manager.run_once())
        finally:
            await manager.close()

    return asyncio.run(one_pass())


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
            await _ensure_topics(cfg)
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


async def _ensure_topics(cfg: Config) -> None:
    """The Kafka topics belong to the schema too; an unreachable broker only warns (the
    outbox keeps events until the relay can publish, and `dfms up` creates them)."""
    from dfms.events.topics import ensure_topics

    try:
        created = await ensure_topics(cfg.kafka)
    except DfmsError as exc:
        print(f"warning: Kafka topics not checked: {exc}", file=sys.stderr)
        return
    print(f"Kafka topics: {', '.join(created) + ' created' if created else 'all present'}")


def cmd_migrate(args: argparse.Namespace) -> int:
    return asyncio.run(_migrate(args))


# --- cluster control ------------------------------------------------------------------

async def _cluster(args: argparse.Namespace) -> int:
    import aiohttp

    from dfms.localstack.cluster import read_cluster_file
    from dfms.localstack.control import TOKEN_HEADER

    info = read_cluster_file(_data_dir(args))
    control = info.get("control") or {}
    if info.get("state") != "ready" or not control:
        raise DfmsError(f"no running cluster in {_data_dir(args)} (start it with `dfms up`)")
    headers = {TOKEN_HEADER: control["token"]}
    async with aiohttp.ClientSession(headers=headers) as http:
        if args.action == "ps":
            async with http.get(f"{control['url']}/processes") as resp:
                for name, state in (await resp.json()).items():
                    print(f"{name:<20} {'running' if state['running'] else 'stopped':<8} "
                          f"pid {state['pid']}")
            return 0
        if not args.name:
            raise DfmsError(f"`dfms cluster {args.action}` needs a process name (see `ps`)")
        async with http.post(f"{control['url']}/processes/{args.name}/{args.action}") as resp:
            body = await resp.json()
            if resp.status != 200:
                raise DfmsError(f"{args.action} {args.name}: {body.get('error')}")
            print(f"{args.action} {args.name}: {body}")
    return 0


def cmd_cluster(args: argparse.Namespace) -> int:
    return asyncio.run(_cluster(args))


# --- keys and config ---------------------------------------------------------------

def cmd_keys(args: argparse.Namespace) -> int:
    from dfms.keys import generate_key

    keys_dir = Path(args.dir) if args.dir else _data_dir(args) / "keys"
    key = generate_key(keys_dir)
    print(f"generated ES256 key {key.kid} in {keys_dir} (now current)")
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

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dfms", description="DFMS distributed file store")
    parser.add_argument("--config", help="YAML config file (default: $DFMS_CONFIG, else the "
                        "data dir's dfms.yaml written by `dfms up`)")
    parser.add_argument("--data-dir", help=f"cluster data directory (default: ${ENV_DATA_DIR} "
                        f"or {DEFAULT_DATA_DIR})")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start the whole local cluster in this terminal")
    up.add_argument("--nodes", type=int, default=3, help="S3 storage nodes (default 3)")
    up.add_argument("--gateway-port", type=int, default=8080,
                    help="gateway port (default 8080; 0 picks a free one)")
    up.set_defaults(func=cmd_up)

    gw = sub.add_parser("gateway", help="run the HTTP gateway")
    gw.set_defaults(func=cmd_gateway)

    cs = sub.add_parser("chunk-service", help="run the gRPC chunk service")
    cs.set_defaults(func=cmd_chunk_service)

    hm = sub.add_parser("health-monitor", help="probe the storage nodes, track their health")
    hm.set_defaults(func=cmd_health_monitor)

    relay = sub.add_parser("event-relay", help="publish outbox events to Kafka")
    relay.set_defaults(func=cmd_event_relay)

    gcw = sub.add_parser("gc-worker", help="run the garbage collector (or one pass)")
    gcw.add_argument("--once", action="store_true", help="run one pass, print its counts")
    gcw.add_argument("--dry-run", action="store_true",
                     help="with --once: only report what a pass would collect")
    gcw.set_defaults(func=cmd_gc_worker)

    rm = sub.add_parser("replication-manager",
                        help="repair, rebalance and scrub replicas (or one pass)")
    mode = rm.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true",
                      help="run one pass (repair queue and full reconciliation), print counts")
    mode.add_argument("--scrub", action="store_true",
                      help="run one full scrub pass over every replica, print counts")
    rm.set_defaults(func=cmd_replication_manager)

    clu = sub.add_parser("cluster", help="list, stop, kill or start processes of `dfms up`")
    clu.add_argument("action", choices=("ps", "stop", "kill", "start"))
    clu.add_argument("name", nargs="?", help="process name, e.g. node-2")
    clu.set_defaults(func=cmd_cluster)

    mig = sub.add_parser("migrate", help="apply, revert or list schema migrations")
    mig.add_argument("action", choices=("up", "down", "status"))
    mig.add_argument("--to", type=int, help="up: stop at this version")
    mig.add_argument("--steps", type=int, default=1, help="down: how many to revert")
    mig.set_defaults(func=cmd_migrate)

    keys = sub.add_parser("keys", help="manage ES256 token-signing keys")
    keys.add_argument("action", choices=("generate",))
    keys.add_argument("--dir", help="key directory (default: <data dir>/keys)")
    keys.set_defaults(func=cmd_keys)

    conf = sub.add_parser("config", help="show the effective config or a sample file")
    conf.add_argument("action", choices=("show", "sample", "markdown"))
    conf.set_defaults(func=cmd_config)

    adm = sub.add_parser("admin", help="account administration against the cluster database")
    adm_sub = adm.add_subparsers(dest="action", required=True)
    create = adm_sub.add_parser("create-user", help="create an account and print its id")
    create.add_argument("--email", required=True)
    create.add_argument("--password", help="the password (default: prompt, or a line of "
                        "stdin when it is not a terminal)")
    create.add_argument("--display-name", help="default: the part of the email before '@'")
    create.add_argument("--admin", action="store_true", help="give the account the admin role")
    create.set_defaults(func=cmd_admin)
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
    except DfmsError as exc:
        print(f"dfms: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
