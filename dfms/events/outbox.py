"""The transactional outbox: events are rows written in the caller's transaction.

``emit`` inserts into ``outbox`` on the connection the caller is already
using, so the event exists if and only if the change it describes commits, and
a writer never waits on Kafka. The relay (``dfms.events.relay.OutboxRelay``)
publishes the rows; an insert trigger NOTIFYs ``dfms_outbox`` at commit so it
wakes at once.

Per-key order is id order. Two transactions that emit for the same key must be
serialized by the change itself (e.g. both lock the file row before emitting),
which every DFMS writer does; then id order is commit order for that key.
"""

from __future__ import annotations

import uuid

from dfms.events.envelope import current_trace_context, dump_json
from dfms.metadata.db import Connection

NOTIFY_CHANNEL = "dfms_outbox"

_INSERT = """
INSERT INTO outbox (event_id, topic, key, type, payload, schema_version, trace_context)
VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7::jsonb)
"""


async def emit(conn: Connection, topic: str, key: str, type: str, payload: dict,
               *, schema_version: int = 1) -> uuid.UUID:
    """Record one event in the caller's transaction; returns its event id.

    ``payload`` must be JSON (UUIDs and datetimes are turned into strings).
    Called outside a transaction the row commits on its own, like any statement.
    """
    if not topic or not type:
        raise ValueError("an event needs a topic and a type")
    event_id = uuid.uuid4()
    trace = current_trace_context()
    await conn.execute(_INSERT, event_id, topic, key, type, dump_json(payload), schema_version,
                       None if trace is None else dump_json(trace))
    return event_id
