"""A listening socket per worker for ``aigw serve --workers N`` (SO_REUSEPORT).

uvicorn's supervisor binds one socket and hands it to every worker; all of
them accept from it, and the one that wakes first takes a whole burst of new
connections (a client pool opening 64 connections at once landed 49 and 15 on
two workers, and kept them). Here each worker binds a socket of its own with
SO_REUSEPORT, and the kernel spreads new connections over the workers by a
hash of their addresses.

``aigw serve`` checks the address is free before anything starts, without
SO_REUSEPORT, so a second gateway on the same port still refuses to start.
"""

from __future__ import annotations

import socket
from typing import Any


def bind_reuseport(host: str, port: int) -> socket.socket:
    """A socket bound to *host*:*port* with SO_REUSEPORT, as uvicorn binds its own
    (IPv6 when the host has a colon; SO_REUSEADDR; inheritable)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


class PerWorkerSocket:
    """Stands in for the shared socket in uvicorn's worker arguments: pickled into
    each worker process it comes out as a socket that worker bound itself
    (:func:`bind_reuseport`); a worker restarted by the supervisor binds anew."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port

    def __reduce__(self) -> tuple[Any, tuple[str, int]]:
        return (bind_reuseport, (self.host, self.port))
