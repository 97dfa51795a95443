"""Load shedding: a bound on the requests the gateway serves at once.

Past its capacity a server that accepts everything only queues: every request gets
slower, memory grows with the queue, and clients time out on work that is still
done. Instead each request takes a slot of its class before any work is done; when
its class is at ``gateway.max_in_flight_*``, it answers 503 ``overloaded`` with
``Retry-After`` at once, so the requests it does serve keep their latency and the
gateway recovers the moment the surge ends (nothing is left queued behind it).

Two classes, each with its own limit:
- ``transfers``: uploads, multipart parts and downloads (share links too), which
  stream for as long as their bytes take;
- ``requests``: every other call (auth, listings, metadata, admin, the web app).
A burst of cheap calls cannot take the slots uploads need, and slow uploads (a big
file over a slow link) cannot starve logins and listings. A transfer whose body
stalls is cut by ``gateway.body_idle_timeout_s``, which bounds how long a stuck
client holds a slot.

Ops endpoints (/health, /ready, /metrics) and the static, machine-polled documents
(JWKS, the OpenAPI spec), the paths the rate limiter also leaves alone, are never
shed: an orchestrator must see an overloaded gateway as alive, and Prometheus must
keep scraping it, most of all then.

A short wait queue: when a class is full, up to ``gateway.shed_queue_size`` requests
wait, first come first served, at most ``gateway.shed_max_wait_s`` for a slot. At
the edge of capacity slots free up every few milliseconds, and a request refused
then would come back only after ``Retry-After`` (at least a second): waiting a
fraction of a second serves it sooner and spares the client a round trip. The
queue is bounded in length and in time, so it adds at most that wait to a
request's latency and never grows with the load; past it, refusal is immediate.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import Counter, Gauge

from dfms.config import GatewayConfig
from dfms.gateway.context import API_PREFIX, CONFIG_KEY
from dfms.gateway.errors import Overloaded
from dfms.gateway.ratelimit import DOWNLOAD, UNLIMITED_PATHS, UPLOAD, classify

# Classes of request (the metric label ``class``) and why one was shed (``reason``).
REQUESTS, TRANSFERS = "requests", "transfers"
QUEUE_FULL, WAIT_TIMEOUT = "queue_full", "wait_timeout"
CLASSES = (REQUESTS, TRANSFERS)
REASONS = (QUEUE_FULL, WAIT_TIMEOUT)

SHED = Counter("dfms_http_requests_shed_total",
               "Requests refused with 503 overloaded before any work was done",
               ["class", "reason"])
IN_FLIGHT = Gauge("dfms_http_requests_in_flight",
                  "Requests being served, per load-shedding class", ["class"])
# Every series exists from the start (at 0), so dashboards and alerts see the
# gateway's shedding as "none" rather than "no data".
for _cls in CLASSES:
    IN_FLIGHT.labels(_cls)
    for _reason in REASONS:
        SHED.labels(_cls, _reason)


# The live event stream stays open for hours: a slot held that long would be a slot
# lost. Its own caps (events.stream_max_per_user, stream_max_total) bound it instead.
STREAM_PATHS = frozenset({f"{API_PREFIX}/events"})


def route_class(method: str, path: str) -> str | None:
    """The shedding class of a request, or ``None`` when it is never shed."""
    if path in UNLIMITED_PATHS or (method == "GET" and path in STREAM_PATHS):
        return None
    return TRANSFERS if classify(method, path) in (UPLOAD, DOWNLOAD) else REQUESTS


class Gate:
    """At most ``limit`` holders at once; up to ``queue_size`` more wait for a slot
    (first come, first served) for at most ``max_wait_s``."""

    def __init__(self, limit: int, queue_size: int, max_wait_s: float) -> None:
        self.limit = limit
        self.queue_size = queue_size
        self.max_wait_s = max_wait_s
        self.in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def enter(self) -> str | None:
        """``None`` once a slot is held (give it back with ``leave``), else the reason
        the request is refused. Never waits when the queue is full."""
        if self.in_flight < self.limit and not self._waiters:
            self.in_flight += 1
            return None
        if len(self._waiters) >= self.queue_size or self.max_wait_s <= 0:
            return QUEUE_FULL
        return await self._wait()

    async def _wait(self) -> str | None:
        slot: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(slot)
        try:
            async with asyncio.timeout(self.max_wait_s):
                await slot
            return None
        except TimeoutError:
            # The timer may fire just as ``leave`` hands this request a slot: keep it.
            return None if _handed(slot) else WAIT_TIMEOUT
        except asyncio.CancelledError:
            if _handed(slot):  # cancelled after the hand-over: pass the slot on
                self.leave()
            raise
        finally:
            with contextlib.suppress(ValueError):  # already taken off by ``leave``
                self._waiters.remove(slot)

    def leave(self) -> None:
        """Give a slot back: to the first request still waiting, else to the pool."""
        while self._waiters:
            slot = self._waiters.popleft()
            if not slot.done():
                slot.set_result(None)  # the slot passes on; in_flight is unchanged
                return
        self.in_flight -= 1


def _handed(slot: asyncio.Future[None]) -> bool:
    return slot.done() and not slot.cancelled()


@dataclass(frozen=True, slots=True)
class Shedding:
    """The gates of one gateway; a class without a gate (limit 0) is never shed."""

    gates: dict[str, Gate]
    retry_after_s: int

    @classmethod
    def from_config(cls, cfg: GatewayConfig) -> Shedding:
        limits = {REQUESTS: cfg.max_in_flight_requests, TRANSFERS: cfg.max_in_flight_transfers}
        return cls({name: Gate(limit, cfg.shed_queue_size, cfg.shed_max_wait_s)
                    for name, limit in limits.items() if limit > 0}, cfg.shed_retry_after_s)


SHEDDING_KEY = web.AppKey("shedding", Shedding)


@web.middleware
async def shedding_middleware(request: web.Request,
                              handler: Handler) -> web.StreamResponse:
    shedding = request.config_dict.get(SHEDDING_KEY)
    cls = route_class(request.method, request.path)
    if shedding is None or cls is None or cls not in shedding.gates:
        return await handler(request)
    gate = shedding.gates[cls]
    refused = await gate.enter()
    if refused is not None:
        SHED.labels(cls, refused).inc()
        raise Overloaded(cls, shedding.retry_after_s)
    in_flight = IN_FLIGHT.labels(cls)
    in_flight.inc()
    try:
        return await handler(request)
    finally:  # also when the handler raised or the request was cancelled
        in_flight.dec()
        gate.leave()


def setup(app: web.Application) -> None:
    """The gates, from the app's config. Place ``shedding_middleware`` inside the error
    middleware (the 503 gets the JSON envelope, the request id, and is counted in
    ``dfms_http_requests_total``) and before the rate limiter, so a refused request
    costs no Redis round trip and no token check."""
    app[SHEDDING_KEY] = Shedding.from_config(app[CONFIG_KEY].gateway)
