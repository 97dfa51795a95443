"""The cluster a benchmark runs on: the one `dfms up` runs in --data-dir, else a
throwaway one started for the run and deleted after it."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from dfms.localstack.handle import ClusterHandle, attach, make_data_dir

DATA_DIR_HELP = "attach to the cluster `dfms up` runs there"


def run_on_cluster(bench: Callable[[ClusterHandle], Coroutine[Any, Any, object]],
                   data_dir: str | None = None, *, prefix: str = "dfms-bench-",
                   up_args: Sequence[str] = ()) -> None:
    """Run ``bench`` on the cluster of ``data_dir``, or on a new one (`dfms up` with
    ``up_args``) that is stopped and deleted afterwards, also when it fails to start."""
    if data_dir:
        asyncio.run(bench(attach(data_dir)))
        return
    base = make_data_dir(prefix)
    cluster = ClusterHandle(data_dir=base / "cluster")
    cluster.data_dir.mkdir()
    try:
        cluster.start(*up_args)
        asyncio.run(bench(cluster))
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)
