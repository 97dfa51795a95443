"""Authentication metrics."""

from __future__ import annotations

from prometheus_client import Counter

AUTH_EVENTS = Counter("dfms_auth_events_total", "Authentication events by outcome", ["event"])

EVENTS = ("register_ok", "register_failed", "login_ok", "login_failed", "login_disabled",
          "refresh_ok", "refresh_failed", "refresh_reused", "logout")
for _event in EVENTS:  # export zeros so rate() and alerts work before the first event
    AUTH_EVENTS.labels(_event)


def record(event: str) -> None:
    AUTH_EVENTS.labels(event).inc()
