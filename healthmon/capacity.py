"""Free and total bytes of each storage node's disk, where the health monitor can see it.

A node record may carry ``data_dir``: where the node keeps its objects, as a path on
the health monitor's host. That is true of the nodes `dfms up` runs (processes under
the cluster's data directory) and of a single-host deployment, and there the monitor
reports the size and free space of that directory's filesystem every pass. A node on
another host (a MinIO server in production) has no ``data_dir``: its capacity is only
known to the node itself, so Prometheus scrapes it from the node's own metrics
(docs/operations.md, DfmsNodeDiskNearlyFull).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client import Gauge

from dfms.runtime.logs import get_logger

log = get_logger("health_monitor")

DISK_FREE = Gauge("dfms_node_disk_free_bytes",
                  "Bytes a non-root process can still write on the filesystem of the node's "
                  "data directory (nodes registered with one)", ["node"])
DISK_TOTAL = Gauge("dfms_node_disk_total_bytes",
                   "Size of the filesystem of the node's data directory (nodes registered "
                   "with one)", ["node"])

# statvfs of a hung network filesystem can block for minutes; the pass must not wait
# (the thread it runs in is left to finish on its own).
STATVFS_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class DiskSpace:
    free: int
    total: int


def disk_space(path: str) -> DiskSpace:
    # shutil's free is f_bavail: the root-reserved blocks a node process cannot use are
    # left out, so "free" is what the node can actually still write.
    usage = shutil.disk_usage(path)
    return DiskSpace(usage.free, usage.total)


async def read_disk_space(path: str, timeout_s: float = STATVFS_TIMEOUT_S) -> DiskSpace | None:
    """None when the path cannot be read (missing, no permission, too slow)."""
    try:
        async with asyncio.timeout(timeout_s):
            return await asyncio.to_thread(disk_space, path)
    except (OSError, TimeoutError):
        return None


class DiskGauges:
    """Keeps one pair of series per node whose data directory could be read this pass."""

    def __init__(self, timeout_s: float = STATVFS_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        self._readable: set[str] = set()
        self._unreadable: set[str] = set()

    async def update(self, data_dirs: Mapping[str, str]) -> None:
        """``data_dirs``: node id -> data directory, for the nodes not removed."""
        spaces = await asyncio.gather(*(read_disk_space(path, self.timeout_s)
                                        for path in data_dirs.values()))
        readable = {node: space for node, space in zip(data_dirs, spaces, strict=True)
                    if space is not None}
        self.set(readable)
        unreadable = set(data_dirs) - set(readable)
        for node in sorted(unreadable - self._unreadable):  # once, not every pass
            log.warning("cannot read the node's data directory: no disk space reported",
                        extra={"node": node, "data_dir": data_dirs[node]})
        self._unreadable = unreadable

    def set(self, readable: Mapping[str, DiskSpace]) -> None:
        for node, space in readable.items():
            DISK_FREE.labels(node).set(space.free)
            DISK_TOTAL.labels(node).set(space.total)
        for node in self._readable - set(readable):
            # A stale value would hide a disk that fills up: no series is honest (and a
            # node that was removed, or lost its data_dir, has nothing to report).
            for gauge in (DISK_FREE, DISK_TOTAL):
                with contextlib.suppress(KeyError):
                    gauge.remove(node)
        self._readable = set(readable)
