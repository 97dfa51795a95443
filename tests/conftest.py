"""Session-wide fixtures: one real local cluster for every integration test.

Set ``DFMS_TEST_CLUSTER`` to the data dir (or cluster.json) of a cluster that
`dfms up` is already running to reuse it instead of starting one.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from tests.support.cluster import ClusterHandle, attach, make_data_dir


@pytest.fixture(scope="session")
def cluster() -> Iterator[ClusterHandle]:
    external = os.environ.get("DFMS_TEST_CLUSTER")
    if external:
        yield attach(external)
        return
    data_dir = make_data_dir("dfms-test-")
    handle = ClusterHandle(data_dir=data_dir / "cluster")
    handle.data_dir.mkdir()
    handle.start()
    try:
        yield handle
    finally:
        code = handle.stop()
        if code == 0:
            shutil.rmtree(data_dir, ignore_errors=True)
        else:
            print(f"dfms up exited with {code}; logs kept in {data_dir}")
