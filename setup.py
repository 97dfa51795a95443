"""Declares the C extension only; all metadata lives in pyproject.toml."""

import sys

from setuptools import Extension, setup

# MSVC spells its flags differently and optimises fully by default.
COMPILE_ARGS = [] if sys.platform == "win32" else ["-O3"]

setup(
    ext_modules=[
        Extension(
            "dfms.chunker._rabin",
            ["chunker/_rabin.c"],
            extra_compile_args=COMPILE_ARGS,
        )
    ]
)
