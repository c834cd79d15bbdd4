"""Free TCP ports on 127.0.0.1 for the tests' real servers."""

import socket
from typing import Any


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def closed_port(test: Any) -> int:
    """A TCP port on 127.0.0.1 where connections are refused for as long as ``test`` runs:
    bound and never listened on, so no other process (another test run's server on a port
    that :func:`free_port` handed out) can take it meanwhile and answer."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    test.addCleanup(sock.close)
    return int(sock.getsockname()[1])
