"""Whether a process listens on a unix socket path, asked without disturbing it (a connection
opened and closed at once), before a gateway replaces a socket file it finds in its place."""

from __future__ import annotations

import os
import socket
from pathlib import Path

#: The longest unix socket path connect() and bind() take (sun_path is 108 bytes with its NUL).
MAX_SOCKET_PATH = 107


def listened_on(path: Path) -> bool:
    """Whether a process listens on the unix socket ``path``: only a refused connection or no
    socket file there says no (a socket this process may not connect to, or whose listen queue
    is full, is someone's). A path longer than :data:`MAX_SOCKET_PATH` is reached through its
    directory.

    :param path: the socket's path.
    """
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)  # (a full listen queue answers EAGAIN at once: someone listens)
    directory = None
    try:
        target = str(path)
        if len(os.fsencode(target)) > MAX_SOCKET_PATH:
            directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
            target = f"/proc/self/fd/{directory}/{path.name}"
        probe.connect(target)
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError:
        return True
    finally:
        probe.close()
        if directory is not None:
            os.close(directory)
    return True
