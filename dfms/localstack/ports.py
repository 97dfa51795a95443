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


class PortAllocator:
    """Hands out distinct free ports; a port given once is never given again."""

    def __init__(self, previous: dict[str, int] | None = None) -> None:
        self._previous = previous or {}
        self._taken: set[int] = set()
        self.assigned: dict[str, int] = {}

    def _fresh(self) -> int:
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((LOOPBACK, 0))
                port = int(sock.getsockname()[1])
            # Go servers (weed) derive gRPC ports as http+10000; keep room for that.
            if port not in self._taken and port < 55000:
                return port

    def get(self, name: str, wanted: int | None = None) -> int:
        """A port for ``name``: ``wanted`` if given (0 = any), else the previous one if free."""
        if wanted:
            port = wanted
        else:
            prev = self._previous.get(name)
            fresh = prev is not None and prev not in self._taken and port_is_free(prev)
            port = prev if fresh and prev is not None else self._fresh()
        self._taken.add(port)
        self.assigned[name] = port
        return port
