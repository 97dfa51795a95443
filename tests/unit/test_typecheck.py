"""tools/typecheck.py: the link tree mypy checks, and what mypy catches through it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from tests.support.scripts import load_script

REPO = Path(__file__).resolve().parents[2]


def _typecheck() -> ModuleType:
    return load_script("tools/typecheck.py")


def test_link_tree_holds_every_package_dir_root(tmp_path: Path) -> None:
    tc = _typecheck()
    mapping = tc.package_dir()
    prefixes = tc.build_tree(mapping, tmp_path / "tree")
    top = tmp_path / "tree" / "dfms"
    for name, folder in mapping.items():
        if name != "dfms":
            assert (top / name.removeprefix("dfms.")).resolve() == REPO / folder
    for entry in (REPO / "dfms").iterdir():
        if entry.name != "__pycache__":
            assert (top / entry.name).resolve() == entry
    link = os.path.relpath(top, REPO)
    out = tc.source_paths(f"{link}/gc/worker.py:1: error\n{link}/config.py:2: error\n",
                          prefixes)
    assert out == "gc/worker.py:1: error\ndfms/config.py:2: error\n"


def test_opt_default_of_the_wrong_type_is_a_mypy_error(tmp_path: Path) -> None:
    tc = _typecheck()
    tc.build_tree(tc.package_dir(), tmp_path / "tree")
    snippet = tmp_path / "fields.py"
    snippet.write_text(
        "from dataclasses import dataclass\n"
        "from dfms.config import opt\n"
        "@dataclass(frozen=True)\n"
        "class Section:\n"
        "    port: int = opt('8080', 'a port')\n"
        "    ratio: float = opt(1, 'an int is a float')\n"
        "    names: tuple[str, ...] = opt((), 'a list')\n")
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "--config-file", "",
         "--cache-dir", str(tmp_path / "cache"), str(snippet)],
        cwd=tmp_path, env=dict(os.environ, MYPYPATH=str(tmp_path / "tree")),
        capture_output=True, text=True, check=False)
    errors = [line for line in proc.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 1, proc.stdout + proc.stderr
    assert "fields.py:5:" in errors[0] and '"str"' in errors[0] and '"int"' in errors[0]
