"""Which client made a change: the ``origin`` field of the events people see live.

A browser tab (or any client) may name itself with the ``X-DFMS-Client-Id`` header on
its API calls; the gateway keeps the value in ``ORIGIN`` for the request, and the
events the request emits carry it. A tab then tells its own changes from those of
another session or device without the server tracking sessions.
"""

from __future__ import annotations

import re
from contextvars import ContextVar

ORIGIN_HEADER = "X-DFMS-Client-Id"
_VALID = re.compile(r"[A-Za-z0-9._\-]{1,64}")

ORIGIN: ContextVar[str | None] = ContextVar("dfms_event_origin", default=None)


def parse_origin(value: str | None) -> str | None:
    """The header's value when it is a valid client id; anything else is ignored."""
    return value if value is not None and _VALID.fullmatch(value) else None


def current_origin() -> str | None:
    return ORIGIN.get()
