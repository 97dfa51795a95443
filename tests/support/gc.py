"""One garbage-collector pass from a test."""

from __future__ import annotations

import asyncio

from dfms.config import Config
from dfms.gc.worker import SKIPPED, GcWorker


async def gc_pass(cfg: Config, *, dry_run: bool = False) -> dict[str, int]:
    """One pass, error-free; waits out a pass of the cluster's own gc-worker if it holds
    the lock. Returns the pass's counters."""
    worker = GcWorker(cfg, dry_run=dry_run)
    try:
        for _ in range(100):
            stats = await worker.run_once()
            if SKIPPED not in stats.counters:
                assert stats.errors == 0, stats
                return stats.counters
            await asyncio.sleep(0.2)
    finally:
        await worker.close()
    raise AssertionError("the GC lock stayed taken")
