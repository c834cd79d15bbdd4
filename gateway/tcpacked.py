"""How many bytes the peer's TCP has acknowledged on the socket under a connection (Linux
``TCP_INFO``'s ``tcpi_bytes_acked``), through the layers a link's transport may have (TLS,
the WebSocket adapter).

A peer whose TCP acknowledges bytes is reachable and reading, even when an answer it owes
waits behind bytes still crawling to it over a slow link: the link's keepalive asks this
before it calls the server dead (:mod:`gateway.links.protocol`).
"""

from __future__ import annotations

import socket
import struct
import sys
from typing import Callable

from twisted.internet import tcp

#: Offset and format of ``tcpi_bytes_acked`` in ``struct tcp_info`` (Linux 4.1 and later).
_BYTES_ACKED = struct.Struct("=Q")
_BYTES_ACKED_OFFSET = 120
#: Layers walked down from a transport (TLS over the WebSocket adapter over TCP is three).
_MOST_LAYERS = 4


def tcp_socket(transport: object) -> socket.socket | None:
    """The TCP socket under ``transport``: its own for a Twisted TCP connection; for a
    wrapper (a TLS connection, the WebSocket adapter) the one under the transport it runs on;
    None when there is none (a test's transport, a Unix socket)."""
    for _ in range(_MOST_LAYERS):
        if isinstance(transport, tcp.Connection):
            handle = transport.getHandle()
            if isinstance(handle, socket.socket) and handle.family in (socket.AF_INET, socket.AF_INET6):
                return handle
            return None
        transport = getattr(transport, "transport", None)
        if transport is None:
            return None
    return None


def bytes_acked(sock: socket.socket) -> int | None:
    """The bytes sent on ``sock`` that its peer has acknowledged (data bytes: the SYN the
    kernel counts too is left out); None where the kernel does not say (not Linux, a kernel before 4.1, a closed socket)."""
    option = getattr(socket, "TCP_INFO", None)
    if option is None or not sys.platform.startswith("linux"):  # (another system's struct differs)
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, option, 256)
    except OSError:
        return None
    if len(info) < _BYTES_ACKED_OFFSET + _BYTES_ACKED.size:
        return None
    value: int = _BYTES_ACKED.unpack_from(info, _BYTES_ACKED_OFFSET)[0]
    return max(0, value - 1)  # (the kernel counts the SYN as a byte)


def acked_counter(transport: object) -> Callable[[], int | None]:
    """A function that tells :func:`bytes_acked` of the TCP socket under ``transport`` each
    time it is called (None, always, when there is no such socket)."""
    sock = tcp_socket(transport)
    if sock is None:
        return lambda: None
    return lambda: bytes_acked(sock)
