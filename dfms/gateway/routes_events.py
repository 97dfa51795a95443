"""Live notifications: GET /api/v1/events (Server-Sent Events) and the tickets a
browser opens it with.

Authentication. API clients send their bearer token as on every call. A browser's
EventSource cannot set headers, so it first POSTs /api/v1/events/tickets (with the
bearer token) and opens the stream with ``?ticket=``: 32 random bytes kept in Redis
for ``events.stream_ticket_ttl_s`` (30 s), single use, bound to the account. A long-
lived credential never goes into a URL, where logs and history keep it; a used
ticket is worthless. A cookie would add a second way to authenticate every route
(and CSRF to think of) for the sake of one GET.

The stream. ``retry:`` and a ``: connected`` comment first; then the caller's events
as ``id``/``event``/``data`` messages, a ``: hb`` comment every
``events.stream_heartbeat_s`` (carrying the current position as ``id``, so a quiet
stream's Last-Event-ID stays fresh), and the stream ends after
``events.stream_max_age_s`` so that the account is checked again on reconnect; it
ends at once when an admin changes the account's role or active flag (the internal
``user.access_changed`` event reaches every gateway's hub), so a deactivated account
keeps no stream and a demoted admin no cluster events. A
``Last-Event-ID`` header (or ``last_event_id`` query parameter, for a new EventSource)
replays what was missed first. The stream holds no load-shedding slot (it would hold
it for hours): the per-user and per-gateway caps bound them instead.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from urllib.parse import unquote

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import Counter, Histogram
from redis.exceptions import RedisError

from dfms.events.origin import ORIGIN, ORIGIN_HEADER, parse_origin
from dfms.events.outbox import emit
from dfms.events.topics import FILES_TOPIC, UPLOAD_FAILED, UPLOAD_OVER_QUOTA
from dfms.gateway.context import API_PREFIX, CONFIG_KEY, PG_KEY, REDIS_KEY
from dfms.gateway.errors import ApiError, unauthorized
from dfms.gateway.event_hub import EventHub, EventsUnavailable, Subscription, log
from dfms.gateway.notifications import (
    STREAM_RESET,
    Buffered,
    InvalidCursor,
    Position,
    Viewer,
    advance,
    encode_cursor,
    event_data,
    parse_cursor,
    sse_comment,
    sse_message,
)
from dfms.gateway.security import USER_KEY, AuthUser, authenticate, bearer_token
from dfms.gateway.tracing import set_user

HUB_KEY = web.AppKey("event_hub", EventHub)
EVENTS_PATH = f"{API_PREFIX}/events"
TICKETS_PATH = f"{API_PREFIX}/events/tickets"
_TICKET_PREFIX = "dfms:events:ticket:"
RETRY_MS = 3000  # the browser's reconnect delay after a dropped connection

DELIVERED = Counter("dfms_events_stream_delivered_total",
                    "Events written to live streams", ["replayed"])
DELIVERY_DELAY = Histogram("dfms_events_stream_delay_seconds",
                           "From an event's commit to its write on a live stream",
                           buckets=(.05, .1, .25, .5, 1, 2, 5, 10, 30))
REFUSED = Counter("dfms_events_streams_refused_total",
                  "Streams refused at their cap", ["cap"])  # per_user, total
for _cap in ("per_user", "total"):
    REFUSED.labels(_cap)
for _replayed in ("true", "false"):
    DELIVERED.labels(_replayed)

_STREAM_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8",
                   "Cache-Control": "no-store", "X-Accel-Buffering": "no"}


# --- tickets ------------------------------------------------------------------------

def _ticket_key(ticket: str) -> str:
    # Only a hash is stored: whoever reads Redis cannot open anyone's stream.
    return _TICKET_PREFIX + hashlib.sha256(ticket.encode()).hexdigest()


async def create_ticket(request: web.Request) -> web.Response:
    user = await authenticate(request)
    ttl = request.app[CONFIG_KEY].events.stream_ticket_ttl_s
    ticket = secrets.token_urlsafe(32)
    try:
        await request.app[REDIS_KEY].set(_ticket_key(ticket), str(user.id), ex=ttl)
    except RedisError as exc:
        raise EventsUnavailable(f"cannot store the ticket: {exc}") from exc
    return web.json_response({"ticket": ticket, "expires_in": ttl}, status=201,
                             headers={"Cache-Control": "no-store"})


async def _redeem(request: web.Request, ticket: str) -> AuthUser:
    try:
        user_id = await request.app[REDIS_KEY].getdel(_ticket_key(ticket))
    except RedisError as exc:
        raise EventsUnavailable(f"cannot check the ticket: {exc}") from exc
    if user_id is None:
        raise unauthorized("the ticket is unknown, used or expired; get a new one",
                           code="invalid_token")
    uid = uuid.UUID(user_id.decode() if isinstance(user_id, bytes) else str(user_id))
    row = await request.app[PG_KEY].fetchrow(
        "SELECT role, is_active FROM users WHERE id = $1", uid)
    if row is None or not row["is_active"]:
        raise unauthorized("account is not active", code="invalid_token")
    user = AuthUser(uid, row["role"])
    request[USER_KEY] = user
    set_user(uid)
    return user


async def _caller(request: web.Request) -> AuthUser:
    ticket = request.query.get("ticket")
    if ticket and bearer_token(request) is None:
        return await _redeem(request, ticket)
    return await authenticate(request)


def _resume_from(request: web.Request) -> Position | None:
    raw = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
    if not raw:
        return None
    try:
        return parse_cursor(raw.strip())
    except InvalidCursor as exc:
        raise ApiError(400, "invalid_last_event_id", str(exc)) from None


# --- the stream ---------------------------------------------------------------------

async def stream(request: web.Request) -> web.StreamResponse:
    user = await _caller(request)
    resume = _resume_from(request)
    hub = request.app[HUB_KEY]
    if not hub.ready.is_set():
        raise EventsUnavailable("the live-event feed is not connected to Kafka yet")
    refused = hub.admit(str(user.id))
    if refused is not None:
        REFUSED.labels(refused).inc()
        raise _too_many(request, refused)
    sub, live_from = hub.subscribe(Viewer(str(user.id), user.is_admin),
                                   lambda: _disconnected(request))
    response = web.StreamResponse(headers=_STREAM_HEADERS)
    try:
        position = dict(live_from)
        replay = None if resume is None else await hub.missed(resume, live_from, sub.viewer)
        await response.prepare(request)
        writer = _Writer(request, response)
        await writer.send(f"retry: {RETRY_MS}\n: connected\n\n".encode())
        if resume is not None and replay is not None:
            position = await _replay(writer, resume, live_from, replay.events, replay.lost)
        await _live(writer, hub, sub, position)
    except (ConnectionResetError, TimeoutError):
        pass  # the client went away (or stopped reading): it resumes with its last id
    finally:
        hub.unsubscribe(sub)
    return response


def _disconnected(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _too_many(request: web.Request, cap: str) -> ApiError:
    cfg = request.app[CONFIG_KEY].events
    which = (f"{cfg.stream_max_per_user} live event streams are open for this account"
             if cap == "per_user" else "this gateway holds as many live event streams as "
             "it may")
    return ApiError(429, "too_many_streams", f"{which}; close one and retry",
                    {"Retry-After": str(int(cfg.stream_heartbeat_s))})


class _Writer:
    """Writes to the stream; a write the client does not take in
    ``gateway.body_idle_timeout_s`` raises TimeoutError (a client that stopped reading)."""

    def __init__(self, request: web.Request, response: web.StreamResponse) -> None:
        self.response = response
        self.idle_s = request.app[CONFIG_KEY].gateway.body_idle_timeout_s

    async def send(self, data: bytes) -> None:
        async with asyncio.timeout(self.idle_s):
            await self.response.write(data)

    async def event(self, item: Buffered, position: Position, *, replayed: bool) -> None:
        await self.send(sse_message(item.event.type, event_data(item.event),
                                    encode_cursor(position)))
        DELIVERED.labels("true" if replayed else "false").inc()
        if not replayed:
            DELIVERY_DELAY.observe(max(0.0, time.time() - item.event.occurred_at.timestamp()))


async def _replay(writer: _Writer, resume: Position, live_from: Position,
                  events: list[Buffered], lost: bool) -> Position:
    """Write the missed events; the position the live part continues from."""
    # From the client's place (moved on event by event); a partition it has no place
    # in starts live. A client ahead of this gateway keeps its place.
    position = {**live_from, **resume}
    if lost:
        await writer.send(sse_message(STREAM_RESET, {
            "reason": "the events since your last id are no longer kept; reload"}))
    for item in events:
        position[item.tp] = item.offset + 1
        await writer.event(item, position, replayed=True)
    advance(position, live_from)
    return position


async def _live(writer: _Writer, hub: EventHub, sub: Subscription,
                position: Position) -> None:
    cfg = hub.config.events
    deadline = time.monotonic() + cfg.stream_max_age_s
    async for item in _items(sub, cfg.stream_heartbeat_s, deadline):
        if item is None:  # a heartbeat; the position is current once the queue is drained
            advance(position, hub.position)
            await writer.send(sse_comment("hb", encode_cursor(position)))
            continue
        buffered, snapshot = item
        if buffered.offset < position.get(buffered.tp, 0):
            continue  # replayed already, or the client had it from a gateway further on
        advance(position, snapshot)
        await writer.event(buffered, position, replayed=False)


async def _items(sub: Subscription, heartbeat_s: float, deadline: float
                 ) -> AsyncIterator[tuple[Buffered, Position] | None]:
    """The subscription's events, ``None`` for a heartbeat when nothing came for
    ``heartbeat_s`` (only then is the queue empty); ends at the deadline or when the
    hub ends the subscription."""
    while (left := deadline - time.monotonic()) > 0:
        try:
            async with asyncio.timeout(min(heartbeat_s, left)):
                item = await sub.queue.get()
        except TimeoutError:
            if deadline - time.monotonic() > 0:
                yield None
            continue
        if item is None:
            return
        yield item


# --- wiring -------------------------------------------------------------------------

async def _hub_ctx(app: web.Application) -> AsyncIterator[None]:
    hub = EventHub(app[CONFIG_KEY])
    app[HUB_KEY] = hub
    hub.start()
    yield
    await hub.close()


async def _end_streams(app: web.Application) -> None:
    # on_shutdown runs before the server waits for handlers: streams end at once.
    app[HUB_KEY].end_streams()


def setup_routes(app: web.Application) -> None:
    app.cleanup_ctx.append(_hub_ctx)
    app.on_shutdown.append(_end_streams)
    app.router.add_get(EVENTS_PATH, stream)
    app.router.add_post(TICKETS_PATH, create_ticket)


@web.middleware
async def events_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Keep the request's ``X-DFMS-Client-Id`` for the events it emits (``origin``),
    and announce an upload refused for the quota once its transaction rolled back."""
    origin = parse_origin(request.headers.get(ORIGIN_HEADER))
    token = None if origin is None else ORIGIN.set(origin)
    try:
        return await handler(request)
    except ApiError as exc:
        if exc.code == UPLOAD_OVER_QUOTA and request.method in ("POST", "PUT"):
            await _announce_over_quota(request)
        raise
    finally:
        if token is not None:
            ORIGIN.reset(token)


async def _announce_over_quota(request: web.Request) -> None:
    """upload.failed (quota_exceeded) for the caller's live streams. The refused change
    rolled back, so the event is a statement of its own; failing to record it must not
    hide the 507 from the client."""
    user = request.get(USER_KEY)
    if user is None:
        return
    raw_name = request.headers.get("X-File-Name")
    payload = {"owner_id": str(user.id), "reason": UPLOAD_OVER_QUOTA,
               "upload_id": request.match_info.get("upload_id"),
               "name": None if raw_name is None else unquote(raw_name),
               "size": request.content_length, "folder_id": request.headers.get("X-Folder-Id"),
               "origin": ORIGIN.get()}
    try:
        async with request.app[PG_KEY].acquire() as conn:
            await emit(conn, FILES_TOPIC, str(user.id), UPLOAD_FAILED, payload)
    except Exception:
        log.warning("could not record an upload.failed event", exc_info=True)
