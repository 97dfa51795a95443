"""Parsing the project's Python sources in tests, safely beside background threads."""

from __future__ import annotations

import ast
import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def parse_source(text: str, filename: str) -> ast.Module:
    """``ast.parse`` that cannot be interleaved with another thread's.

    CPython 3.11 keeps the AST builder's recursion counter per interpreter, not per
    thread (gh-106905). If a collection runs a finalizer in the middle of building the
    tree, the GIL can pass to a thread that parses too (3.11's traceback module parses
    the source line of every frame it prints) and the build fails with "SystemError:
    AST constructor recursion depth mismatch". With automatic collection off, building
    the tree runs no Python code, so this thread keeps the GIL until it is done.
    """
    with _no_gc():
        return ast.parse(text, filename)
