"""Unix socket files the gateway listens on: whether a process listens on one, and the lock
(``<socket>.lock``, Twisted's ``FilesystemLock`` naming its holder's pid) that a gateway which
is gone left beside one, removed when Twisted would take it for a live one."""

from __future__ import annotations

import os
import socket
import stat
import time
from collections.abc import Callable, Container
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python.failure import Failure

#: The longest unix socket path connect() and bind() take (sun_path is 108 bytes with its NUL).
MAX_SOCKET_PATH = 107
#: Seconds after its making during which a socket lock naming a live process is that
#: process's, though nothing listens on the socket yet: a gateway binds it right after.
FRESH_LOCK = 5.0
#: What Twisted's ``CannotListenError`` says when a socket's lock names a live process.
LOCK_REFUSED = "Cannot acquire lock"

_log = Logger()


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


def clear_stale_lock(path: Path, held: Container[str] = ()) -> bool:
    """Remove the lock file (``<path>.lock``) and the socket ``path`` that a gateway which is
    gone left, and that Twisted's lock would take for a live one because the pid it names is
    alive: this very pid (a gateway that ran as PID 1 in a container before this one); a
    zombie's (killed, not reaped yet); or another process's, which took the dead gateway's pid
    since (a reboot with the socket on disk, pids wrapped around). Never while a process
    listens on the socket, nor for a lock in ``held``, nor for another live process's lock made
    just now (:data:`FRESH_LOCK`: a gateway that has just made it binds the socket next).
    (Twisted removes a stale socket only when it found the lock stale itself.) Blocking.

    :param path: the socket's path.
    :param held: the socket locks this process holds.
    :return: whether they were removed.
    """
    lock = f"{path}.lock"
    try:
        pid = int(os.readlink(lock))
        made = os.lstat(lock).st_mtime
    except (OSError, ValueError):
        return False
    if lock in held or listened_on(path):
        return False
    # (abs: a wall clock stepped back since the lock was made, at a boot without a real-time clock)
    if pid != os.getpid() and not _zombie(pid) and abs(time.time() - made) < FRESH_LOCK:
        return False
    for name, is_ours in ((lock, lambda mode: True), (str(path), stat.S_ISSOCK)):
        try:
            if is_ours(os.lstat(name).st_mode):
                os.unlink(name)
        except FileNotFoundError:
            pass
    return True


def lock_holder(path: Path) -> str:
    """The pid the lock file of the socket ``path`` (``<path>.lock``) names, as text
    (``unknown`` when it cannot be read)."""
    try:
        return os.readlink(f"{path}.lock")
    except OSError:
        return "unknown"


def lock_refused_path(error: BaseException) -> Path | None:
    """The socket a listen failed on because its lock names a live process; ``None`` for
    any other failure."""
    if isinstance(error, CannotListenError) and error.socketError == LOCK_REFUSED and error.port:
        return Path(os.fsdecode(error.port))
    return None


def listen_past_stale_lock(listen: Callable[[], Deferred[Any]]) -> Deferred[Any]:
    """``listen()``, and once more when it failed on a unix socket's lock that a gateway which
    is gone left (:func:`clear_stale_lock` removed it; a listener's start is the one time the
    gateway looks, so the blocking look is done there). Fires with the port, or the failure.

    :param listen: listens (an endpoint's ``listen`` with its factory).
    """
    def refused(failure: Failure) -> Any:
        path = lock_refused_path(failure.value)
        if path is None or not clear_stale_lock(path):
            return failure
        _log.info("removed the stale lock {lock} (and socket) of a gateway that is gone", lock=f"{path}.lock")
        return listen()

    return listen().addErrback(refused)


def _zombie(pid: int) -> bool:
    """Whether ``pid`` has exited and waits to be reaped."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_bytes()  # (its command name is any bytes)
    except OSError:
        return False
    return fields.rsplit(b")", 1)[-1].split()[:1] == [b"Z"]
