"""Bounded retries with exponential backoff, honouring the server's ``Retry-After``.

Only failures that say "try again" are retried: 429 and 503 (whose ``Retry-After`` is
the least wait) and transport errors (no answer). The clock is injectable so the policy
is tested without waiting.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from dfms.client.errors import DfmsError, RateLimited, TransportError, Unavailable

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]

RETRYABLE: tuple[type[DfmsError], ...] = (RateLimited, Unavailable, TransportError)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 5  # tries in all, the first included
    base_delay_s: float = 0.2
    max_delay_s: float = 30.0
    # Up to this fraction is added at random, so many clients do not retry in lockstep.
    jitter: float = 0.1
    rng: Callable[[], float] = field(default=random.random, compare=False)

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait after failed try number ``attempt`` (1-based)."""
        backoff: float = min(self.base_delay_s * 2.0 ** (attempt - 1), self.max_delay_s)
        backoff *= 1 + self.jitter * self.rng()
        # Retry-After is the server's least wait; a bogus huge one is still capped.
        if retry_after is not None:
            backoff = max(backoff, min(retry_after, self.max_delay_s))
        return backoff

    def should_retry(self, error: DfmsError, attempt: int) -> bool:
        return attempt < self.attempts and isinstance(error, RETRYABLE)


NO_RETRY = RetryPolicy(attempts=1)


async def with_retries(call: Callable[[], Awaitable[T]], policy: RetryPolicy,
                       sleep: Sleep = asyncio.sleep) -> T:
    """``await call()``, again after a backoff while it fails in a retryable way."""
    attempt = 1
    while True:
        try:
            return await call()
        except DfmsError as error:
            if not policy.should_retry(error, attempt):
                raise
            await sleep(policy.delay(attempt, error.retry_after))
            attempt += 1
