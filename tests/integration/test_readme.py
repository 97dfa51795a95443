"""The README's walk-through runs, block by block and in order, against the real cluster.

Every ```sh block of README.md is run in one bash script (variables carry from one
block to the next, as they do in a reader's terminal), except a block preceded by
``<!-- readme-test: skip REASON -->`` (the blocks that start a cluster or run the
suite). The script runs in a scratch directory where ``.dfms`` is the session
cluster's data dir and ``.venv`` the running interpreter's environment, so the
README's paths work as written; the default gateway address is replaced by the
session gateway's, and the example account's email by a fresh one. Every ``curl``
fails on an HTTP error (``--fail-with-body``), so a walk-through that drifts from
the product fails here.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cluster import ClusterHandle, make_data_dir

README = Path(__file__).resolve().parents[2] / "README.md"
SKIP = re.compile(r"<!-- readme-test: skip ([^>]*)-->\s*$")
BLOCK = re.compile(r"^```sh\n(.*?)^```", re.S | re.M)
DEFAULT_GATEWAY = "http://127.0.0.1:8080"
EXAMPLE_EMAIL = "me@example.com"
MIB = 1 << 20

PRELUDE = """set -euo pipefail
curl() { command curl --fail-with-body --show-error "$@"; }
"""


def readme_blocks() -> list[str]:
    """The ```sh blocks to run, in README order."""
    text = README.read_text()
    blocks = []
    for match in BLOCK.finditer(text):
        before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        if not SKIP.search(before):
            blocks.append(match.group(1))
    return blocks


@pytest.fixture
def workdir(cluster: ClusterHandle) -> Iterator[Path]:
    path = make_data_dir("dfms-readme-")
    (path / ".dfms").symlink_to(cluster.data_dir)
    (path / ".venv").symlink_to(Path(sys.prefix))
    # The files the walk-through uploads.
    (path / "report.pdf").write_bytes(b"%PDF-1.4\n" + os.urandom(300 * 1024))
    (path / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(64 * 1024))
    (path / "video.mp4").write_bytes(os.urandom(70 * MIB))  # two parts of 64 MiB max
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_the_readme_has_runnable_blocks() -> None:
    blocks = readme_blocks()
    assert len(blocks) >= 3, blocks
    assert any("/api/v1/files/upload" in b for b in blocks)
    assert any("multipart" in b for b in blocks)


def test_every_readme_block_runs_against_the_cluster(cluster: ClusterHandle,
                                                      workdir: Path) -> None:
    email = f"readme-{uuid.uuid4().hex[:12]}@example.com"
    script = PRELUDE + "\n".join(
        f"echo '>>> README block {i + 1}'\n{block}" for i, block in enumerate(readme_blocks()))
    script = script.replace(DEFAULT_GATEWAY, cluster.gateway_url).replace(EXAMPLE_EMAIL, email)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DFMS_")}
    result = subprocess.run(["bash", "-c", script], cwd=workdir, env=env, capture_output=True,
                            text=True, timeout=600, check=False)
    output = result.stdout[-6000:] + "\n--- stderr ---\n" + result.stderr[-4000:]
    assert result.returncode == 0, output
    last_block = f">>> README block {len(readme_blocks())}"
    assert last_block in result.stdout, output
