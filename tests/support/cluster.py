"""The cluster handle tests use (it lives in the package so benchmarks share it)."""

from __future__ import annotations

import contextlib
import os
import signal
import time

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from dfms.localstack.handle import ClusterHandle, attach, make_data_dir, pid_alive

__all__ = ["ClusterHandle", "attach", "chunk_service_puts", "dump_service_stacks",
           "make_data_dir", "pid_alive"]


async def chunk_service_puts(cluster: ClusterHandle, node: str, *, failed_only: bool = False
                             ) -> float:
    """PUTs the cluster's chunk service has sent to ``node`` so far (from its metrics);
    with ``failed_only``, those whose outcome was not ok."""
    url = cluster.info["services"]["chunk-service"]["ops_url"]
    async with aiohttp.ClientSession() as s, s.get(f"{url}/metrics") as resp:
        text = await resp.text()
    return sum(sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples
               if sample.name == "dfms_s3_requests_total" and sample.labels.get("op") == "put"
               and sample.labels.get("node") == node
               and not (failed_only and sample.labels.get("outcome") == "ok"))


def dump_service_stacks(cluster: ClusterHandle, settle_s: float = 1.0) -> None:
    """Have every DFMS service of ``cluster`` write its tasks' and threads' stacks to
    the cluster log (SIGUSR2, see dfms.runtime.stacks)."""
    services = cluster.read_info().get("services", {})
    for svc in services.values():
        with contextlib.suppress(ProcessLookupError, KeyError, TypeError):
            os.kill(int(svc["pid"]), signal.SIGUSR2)
    time.sleep(settle_s)
