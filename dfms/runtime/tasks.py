"""Cancelling a background task without swallowing our own cancellation.

``task.cancel(); with suppress(CancelledError): await task`` also swallows a
cancellation aimed at the *caller* (a shutdown timeout, say): the caller then
carries on past its deadline. ``cancel_and_wait`` re-raises when the caller
itself is being cancelled.
"""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` and wait until it has finished; ``None`` is a no-op."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
