"""Run mypy on the ``dfms`` package as it is installed, straight from the source tree.

The subsystem folders (``chunker/``, ``ring/``, ...) sit at the top of the repository but
are imported as ``dfms.<name>`` through ``[tool.setuptools] package-dir`` in
pyproject.toml, a mapping mypy cannot follow. So this script builds a link tree,
``build/typecheck/dfms/``, holding a symlink to every entry of ``dfms/`` plus one per
other package-dir root (read from pyproject.toml, as setup.py does, so a new root cannot
be forgotten), runs ``mypy -p dfms`` on it (the settings are ``[tool.mypy]`` in
pyproject.toml) and prints every path in mypy's output as the real source path.

Usage: ``python tools/typecheck.py [extra mypy options]``; the exit code is mypy's.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
TREE = HERE / "build" / "typecheck"
ROOT = "dfms"


def package_dir() -> dict[str, str]:
    """``[tool.setuptools] package-dir`` of pyproject.toml: package name -> folder."""
    data = tomllib.loads((HERE / "pyproject.toml").read_text())
    mapping: dict[str, str] = data["tool"]["setuptools"]["package-dir"]
    return mapping


def build_tree(mapping: dict[str, str], tree: Path = TREE) -> dict[str, str]:
    """Build the link tree in ``tree``; return link path prefix -> source path prefix
    (relative to the repository, as mypy prints them)."""
    if mapping.get(ROOT) != ROOT:
        raise SystemExit(f"package-dir must map {ROOT!r} to {ROOT}/")
    shutil.rmtree(tree, ignore_errors=True)
    top = tree / ROOT
    top.mkdir(parents=True)
    prefixes: dict[str, str] = {}
    for entry in sorted((HERE / ROOT).iterdir()):
        if entry.name != "__pycache__":
            (top / entry.name).symlink_to(entry)
    for name, folder in mapping.items():
        if name == ROOT:
            continue
        parent, _, leaf = name.rpartition(".")
        if parent != ROOT:
            raise SystemExit(f"package-dir root {name!r} is not directly below {ROOT}")
        link = top / leaf
        if link.exists() or link.is_symlink():
            raise SystemExit(f"{name} is both {ROOT}/{leaf} and {folder}/")
        link.symlink_to(HERE / folder)
        prefixes[f"{os.path.relpath(link, HERE)}/"] = f"{folder}/"
    prefixes[f"{os.path.relpath(top, HERE)}/"] = f"{ROOT}/"
    return prefixes


def source_paths(text: str, prefixes: dict[str, str]) -> str:
    """``text`` with every link-tree path replaced by the source path it stands for."""
    # Longest prefix first: build/typecheck/dfms/gc/ before build/typecheck/dfms/.
    pattern = re.compile("|".join(re.escape(p) for p in sorted(prefixes, key=len, reverse=True)))
    return pattern.sub(lambda m: prefixes[m.group(0)], text)


def main() -> int:
    prefixes = build_tree(package_dir())
    env = dict(os.environ, MYPYPATH=str(TREE.relative_to(HERE)))
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "-p", ROOT, *sys.argv[1:]],
        cwd=HERE, env=env, capture_output=True, text=True, check=False)
    sys.stdout.write(source_paths(proc.stdout, prefixes))
    sys.stderr.write(source_paths(proc.stderr, prefixes))
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
