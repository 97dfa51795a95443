"""Constants shared by the chunk service and its clients.

Kept apart from the server module so that a client (the gateway) importing them
does not import the server, its PostgreSQL pool code and its Prometheus metrics.
"""

from __future__ import annotations

GRPC_MESSAGE_LIMIT_BYTES = 16 * 1024 * 1024  # 16 MiB: frames are at most a few MiB
