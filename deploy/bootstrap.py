"""One-shot bootstrap of a DFMS deployment: what `dfms up` does after the migrations.

    python deploy/bootstrap.py --node minio-1,http://minio-1:9000,zone-a [--node ...] [--keys]

The `dfms` CLI has no command for these steps yet (`dfms up` does them in-process,
in ``dfms.localstack.cluster.LocalCluster._bootstrap``), so the compose file runs this
script in the DFMS image, with the same ``DFMS_*`` environment as the services:

* ``--node ID,ENDPOINT,ZONE[,WEIGHT]`` registers a storage node and adds it to the
  ring (``dfms.metadata.cluster_state.register_nodes``). Only node ids the database
  has never seen are registered: after the first run the admin API
  (``POST /api/v1/admin/nodes``, ``.../drain``, ``DELETE``) owns the nodes, so a node
  drained or removed there is not put back into the ring by the next
  ``docker compose up``.
* ``--keys`` creates the first ES256 signing key and the share-link secret in
  ``auth.keys_dir`` when there are none (an existing key is kept, never rotated).

Run after ``dfms migrate up``. Exit code 0 on success, 2 on a bad argument or config,
1 when PostgreSQL is unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from urllib.parse import urlsplit

from dfms.config import load_config
from dfms.errors import ConfigError, DfmsError
from dfms.metadata.cluster_state import NodeSpec

# The admin API's rules for a node (dfms.gateway.routes_admin), without importing the
# gateway: an id the API would refuse must not get in through here either.
NODE_ID_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-")
MAX_NODE_ID = 63
MAX_ZONE_CHARS = 64


def parse_node(text: str) -> NodeSpec:
    """``ID,ENDPOINT,ZONE[,WEIGHT]`` as a NodeSpec; ValueError says what is wrong."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (3, 4):
        raise ValueError(f"{text!r}: expected ID,ENDPOINT,ZONE[,WEIGHT]")
    node_id, endpoint, zone = parts[:3]
    if (not node_id or len(node_id) > MAX_NODE_ID or not set(node_id) <= NODE_ID_CHARS
            or node_id.startswith("-")):
        raise ValueError(f"{text!r}: the id must be 1-{MAX_NODE_ID} lowercase letters, "
                         "digits or '-', not starting with '-'")
    url = urlsplit(endpoint)
    if (url.scheme not in ("http", "https") or not url.hostname
            or url.path not in ("", "/") or url.query or url.username):
        raise ValueError(f"{text!r}: the endpoint must be an http(s) URL of a host and "
                         "port, e.g. http://minio-1:9000")
    if not zone or len(zone) > MAX_ZONE_CHARS or not zone.isprintable():
        raise ValueError(f"{text!r}: the zone must be 1-{MAX_ZONE_CHARS} printable characters")
    weight = 1.0
    if len(parts) == 4:
        try:
            weight = float(parts[3])
        except ValueError:
            weight = 0.0
        if not 0 < weight < float("inf"):
            raise ValueError(f"{text!r}: the weight must be a finite number > 0")
    return NodeSpec(node_id, endpoint.rstrip("/"), zone, weight)


def _node_arg(text: str) -> NodeSpec:
    try:
        return parse_node(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bootstrap.py", description="register storage nodes and create signing keys")
    parser.add_argument("--node", dest="nodes", action="append", default=[], type=_node_arg,
                        metavar="ID,ENDPOINT,ZONE[,WEIGHT]",
                        help="a storage node to register if its id is new (repeatable)")
    parser.add_argument("--keys", action="store_true",
                        help="create the first signing key and the share-link secret")
    return parser


async def register_new_nodes(nodes: list[NodeSpec]) -> None:
    from dfms.metadata import db
    from dfms.metadata.cluster_state import register_nodes

    ids = [n.node_id for n in nodes]
    if len(set(ids)) != len(ids):
        raise ConfigError("--node", ",".join(ids), "a node id is given twice")
    cfg = load_config()
    conn = await db.connect(cfg.postgres)
    try:
        known = {r["id"] for r in await conn.fetch(
            "SELECT id FROM nodes WHERE id = ANY($1::text[])", ids)}
        new = [n for n in nodes if n.node_id not in known]
        for node_id in sorted(known):
            print(f"node {node_id}: already registered (the admin API manages it)")
        if not new:
            return
        epoch = await register_nodes(conn, new, bucket=cfg.s3.bucket)
    finally:
        await conn.close()
    for node in new:
        print(f"node {node.node_id}: registered ({node.endpoint}, zone {node.zone}, "
              f"weight {node.weight:g})")
    print(f"ring epoch {epoch}")


def ensure_key_material() -> None:
    from dfms.auth.share_tokens import load_or_create_secret
    from dfms.keys import ensure_keys

    keys_dir = Path(load_config().auth.keys_dir)
    key = ensure_keys(keys_dir)
    load_or_create_secret(keys_dir)
    print(f"signing key {key.kid} is current in {keys_dir}; share-link secret present")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.nodes and not args.keys:
        parser.error("nothing to do: give --node and/or --keys")
    try:
        if args.nodes:
            asyncio.run(register_new_nodes(args.nodes))
        if args.keys:
            ensure_key_material()
    except ConfigError as exc:
        print(f"bootstrap: config error: {exc}", file=sys.stderr)
        return 2
    except DfmsError as exc:
        print(f"bootstrap: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
