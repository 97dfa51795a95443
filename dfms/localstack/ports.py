"""Free loopback ports, preferring the ones a previous run used."""

from __future__ import annotations

import socket

LOOPBACK = "127.0.0.1"


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


# Go servers (weed) listen on each given port and on port + 10000 for gRPC.
GRPC_OFFSET = 10000


class PortAllocator:
    """Hands out distinct free ports; a port given once is never given again.

    Every port comes with its gRPC twin (port + ``GRPC_OFFSET``) reserved too, so
    no port handed out is another one's twin: weed derives those itself.
    """

    def __init__(self, previous: dict[str, int] | None = None) -> None:
        self._previous = previous or {}
        self._taken: set[int] = set()
        self.assigned: dict[str, int] = {}

    def _usable(self, port: int) -> bool:
        twin = port + GRPC_OFFSET
        return (twin <= 65535 and port not in self._taken and twin not in self._taken
                and port_is_free(port) and port_is_free(twin))

    def _fresh(self) -> int:
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((LOOPBACK, 0))
                port = int(sock.getsockname()[1])
            if self._usable(port):
                return port

    def get(self, name: str, wanted: int | None = None) -> int:
        """A port for ``name``: ``wanted`` if given (0 = any), else the previous one if free."""
        if wanted:
            port = wanted
        else:
            prev = self._previous.get(name)
            port = prev if prev is not None and self._usable(prev) else self._fresh()
        self._taken.update((port, port + GRPC_OFFSET))
        self.assigned[name] = port
        return port
