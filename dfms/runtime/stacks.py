"""Where a process is stuck: every asyncio task's await chain and every thread's stack.

A service writes this to stderr (its log) on SIGUSR2, so an upload that hangs in a
live cluster can be looked at without stopping anything: ``kill -USR2 <pid>``.
``Task.get_stack()`` shows only the outermost frame of a suspended task; the
chain of awaits below it is what tells where it waits.
"""

from __future__ import annotations

import asyncio
import faulthandler
import sys
import traceback
from types import FrameType
from typing import Any, TextIO


def await_chain(task: asyncio.Task[Any]) -> list[FrameType]:
    """The frames of ``task``'s coroutine and of everything it awaits, outermost first."""
    frames: list[FrameType] = []
    awaited: Any = task.get_coro()
    while awaited is not None:
        frame = (getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
                 or getattr(awaited, "ag_frame", None))
        if frame is not None:
            frames.append(frame)
        awaited = (getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
                   or getattr(awaited, "ag_await", None))
    return frames


def dump_stacks(out: TextIO = sys.stderr) -> None:
    """Write every task of the running loop, then every thread, to ``out``."""
    tasks = sorted(asyncio.all_tasks(), key=lambda t: t.get_name())
    out.write(f"=== {len(tasks)} asyncio task(s)\n")
    for task in tasks:
        out.write(f"--- task {task.get_name()!r}\n")
        summary = traceback.StackSummary.extract(
            (frame, frame.f_lineno) for frame in await_chain(task))
        out.writelines(summary.format())
    out.write("=== threads\n")
    out.flush()
    try:
        faulthandler.dump_traceback(file=out, all_threads=True)
    except (AttributeError, ValueError, OSError):  # ``out`` has no file descriptor
        out.write("(thread stacks need a real file)\n")
    out.flush()
