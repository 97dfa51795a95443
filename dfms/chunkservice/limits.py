"""Constants shared by the chunk service and its clients.

Kept apart from the server module so that a client (the gateway) importing them
does not import the server, its PostgreSQL pool code and its Prometheus metrics.
"""

from __future__ import annotations

# Frames are at most a few MiB; a PutChunk carries a whole chunk, up to the chunker's
# largest max_size_bytes (16 MiB), plus its SHA-256 and the message's framing.
GRPC_MESSAGE_LIMIT_BYTES = 17 * 1024 * 1024
