"""What a storage node is allowed to look like: the one set of rules for its id,
endpoint, zone, weight and data directory.

The admin API (``POST /api/v1/admin/nodes``) and the CLI (``dfms nodes register``)
both check a new node here, so nothing the API would refuse gets in through the
command line, or the other way round. Only the standard library is imported: the
CLI uses these checks while it parses its arguments.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from dfms.errors import DfmsError

NODE_ID_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
MAX_ZONE_CHARS = 64
MAX_ENDPOINT_CHARS = 2048
MAX_DATA_DIR_CHARS = 4096  # PATH_MAX on Linux

ID_RULE = "must be 1-63 lowercase letters, digits or '-', starting with a letter or digit"
ENDPOINT_RULE = ("must be an http(s) URL of a host and optional port, with no path, query, "
                 "credentials or fragment (e.g. http://10.0.0.7:8333)")
ZONE_RULE = f"must be 1-{MAX_ZONE_CHARS} printable characters"
WEIGHT_RULE = "must be a finite number > 0"
DATA_DIR_RULE = (f"must be an absolute path of at most {MAX_DATA_DIR_CHARS} printable "
                 "characters (the node's data directory as the health monitor's host sees it)")


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """A storage node to register: what the ring needs to place chunks on it, and where
    it keeps its data if the health monitor's host can see that directory (the monitor
    then reports its disk space; None for a node elsewhere, e.g. a MinIO server)."""

    node_id: str
    endpoint: str
    zone: str
    weight: float = 1.0
    data_dir: str | None = None


class InvalidNode(DfmsError, ValueError):
    """A node field breaks its rule; ``reason`` says what is allowed."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"'{field}' {reason}")


def check_node_id(node_id: str) -> str:
    """The id as given; ids are stored and compared exactly, never normalized."""
    if not NODE_ID_RE.fullmatch(node_id):
        raise InvalidNode("id", ID_RULE)
    return node_id


def clean_endpoint(raw: str) -> str:
    """The endpoint in canonical form: ``scheme://host[:port]``, no trailing slash."""
    if len(raw) > MAX_ENDPOINT_CHARS:
        raise InvalidNode("endpoint", "is too long")
    try:
        parts = urlsplit(raw.strip())
        port = parts.port
    except ValueError:  # a port that is no number, or out of range
        raise InvalidNode("endpoint", ENDPOINT_RULE) from None
    if (parts.scheme not in ("http", "https") or not parts.hostname
            or parts.username is not None or parts.password is not None
            or parts.path not in ("", "/") or parts.query or parts.fragment):
        raise InvalidNode("endpoint", ENDPOINT_RULE)
    host = parts.hostname
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


def clean_zone(raw: str) -> str:
    zone = raw.strip()
    if not zone or len(zone) > MAX_ZONE_CHARS or not zone.isprintable():
        raise InvalidNode("zone", ZONE_RULE)
    return zone


def check_weight(raw: float) -> float:
    try:
        weight = float(raw)
    except OverflowError:  # an integer too large for a float
        weight = math.inf
    if not math.isfinite(weight) or weight <= 0:
        raise InvalidNode("weight", WEIGHT_RULE)
    return weight


def check_data_dir(raw: str) -> str:
    """The path as given: it is only ever handed to statvfs, never joined or created."""
    if (not raw or len(raw) > MAX_DATA_DIR_CHARS or not raw.isprintable()
            or not raw.startswith("/")):
        raise InvalidNode("data_dir", DATA_DIR_RULE)
    return raw


def node_spec(node_id: str, endpoint: str, zone: str, weight: float = 1.0,
              data_dir: str | None = None) -> NodeSpec:
    """A checked, canonical NodeSpec; ``InvalidNode`` names the first field that is wrong."""
    return NodeSpec(check_node_id(node_id), clean_endpoint(endpoint), clean_zone(zone),
                    check_weight(weight),
                    None if data_dir is None else check_data_dir(data_dir))
