"""The parts of the build pyproject.toml cannot declare: the package list and the C extension.

Packages are discovered, never listed by hand: every directory below each root of
``[tool.setuptools] package-dir`` in pyproject.toml (``dfms`` itself and the top-level
subsystem folders mapped to ``dfms.<name>``) is a package, named after the root it
sits in. A new package, or a new data folder, cannot be left out of the wheel.
"""

import os
import sys
import tomllib
from pathlib import Path

from setuptools import Extension, find_namespace_packages, setup

HERE = Path(__file__).resolve().parent

# Never part of the installed package, wherever they turn up under a root.
EXCLUDE = ("tests", "tests.*", "*.tests", "*.tests.*", "benchmarks", "benchmarks.*")


def discover_packages(package_dir: dict[str, str]) -> list[str]:
    """Each root and every folder below it, named ``<root>.<sub.folder>``."""
    packages = set(package_dir)
    for root, path in package_dir.items():
        # Namespace discovery: a folder of data (e.g. gateway/static/) is a package too,
        # so setuptools ships its files as package data without warning about them.
        for sub in find_namespace_packages(str(HERE / path), exclude=EXCLUDE):
            name = f"{root}.{sub}"
            # A folder that is no identifier (e.g. static/vendor-x/) cannot be imported;
            # its files travel as package data of the package above it.
            if all(part.isidentifier() for part in name.split(".")):
                packages.add(name)
    return sorted(packages)


def check_links(package_dir: dict[str, str]) -> None:
    """A symlink whose target is missing (dfms/gateway/openapi.yaml -> api/openapi.yaml in
    a build context without api/) would silently drop that file from the wheel."""
    for path in package_dir.values():
        for link in (HERE / path).rglob("*"):
            if link.is_symlink() and not link.exists():
                raise SystemExit(f"{link.relative_to(HERE)} links to {os.readlink(link)}, "
                                 "which is missing from the source tree being built")


PACKAGE_DIR = tomllib.loads((HERE / "pyproject.toml").read_text())["tool"]["setuptools"][
    "package-dir"]

# MSVC spells its flags differently and optimises fully by default.
COMPILE_ARGS = [] if sys.platform == "win32" else ["-O3"]

check_links(PACKAGE_DIR)

setup(
    packages=discover_packages(PACKAGE_DIR),
    ext_modules=[
        Extension(
            "dfms.chunker._rabin",
            ["chunker/_rabin.c"],
            extra_compile_args=COMPILE_ARGS,
        )
    ],
)
