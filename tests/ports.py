"""Free TCP ports on 127.0.0.1 for the tests' real servers."""

import random
import socket
from typing import Any

import psutil

#: Where :func:`free_port` looks: below Linux's ephemeral range (32768-60999 by default), so
#: that no outgoing connection of any process takes a port between the moment it is handed
#: out and the moment a server listens there, or listens there again after a restart (a
#: gateway restarted on its port found it in use: "Couldn't listen on 127.0.0.1:53467").
TEST_PORTS = range(20000, 32768)


def bindable(port: int) -> bool:
    """Whether a TCP socket could bind ``port`` on 127.0.0.1 a moment ago (nothing holds it)."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (from :data:`TEST_PORTS`)."""
    for _ in range(200):
        port = random.choice(TEST_PORTS)
        if bindable(port):
            return port
    with socket.socket() as sock:  # (all taken, or nearly: whatever the system gives)
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


def listened_by(pid: int, port: int) -> bool:
    """Whether process ``pid`` (or a child of it) listens on TCP ``port``: a peer is up once
    *it* listens there; a connection that succeeds may reach another run's server on a port
    :func:`free_port` handed out to both, while the peer fails to bind it."""
    try:
        parent = psutil.Process(pid)
        processes = [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return False
    for process in processes:
        try:
            connections = process.net_connections("tcp")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in connections):
            return True
    return False
