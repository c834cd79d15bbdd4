"""The state directory's lock file, and whether a live process holds its lock, seen from
outside (standard library only: ``gatewayctl`` asks it, with no Twisted on its path)."""

from __future__ import annotations

import os

#: The file in the state directory whose lock (``flock``) the running gateway holds; it
#: names that gateway's pid. The kernel drops the lock when the process ends, however.
LOCK_FILE = "gateway.lock"
#: Where Linux lists the locks held (``flock`` and POSIX), readable by every user.
PROC_LOCKS = "/proc/locks"
#: What follows the pid in :data:`LOCK_FILE` once its gateway has begun to stop (``4711 stopping``).
STOPPING = "stopping"


def lock_text(pid: int, stopping: bool = False) -> str:
    """What :data:`LOCK_FILE` holds for the gateway of pid ``pid``: its pid, and
    :data:`STOPPING` once it has begun to stop."""
    return f"{pid} {STOPPING}\n" if stopping else f"{pid}\n"


def read_holder(text: str) -> tuple[str, bool]:
    """The pid :data:`LOCK_FILE`'s ``text`` names (``""`` for none), and whether it says that
    gateway is stopping."""
    pid, _, rest = text.strip().partition(" ")
    return pid, rest.strip() == STOPPING


def stopping_holder(state_dir: str) -> str | None:
    """The pid of the gateway using ``state_dir`` when its lock file says it is stopping
    (ask :func:`lock_held` whether it still holds the lock); ``None`` otherwise, or when the
    file cannot be read.

    :param state_dir: the gateway's state directory.
    """
    try:
        with open(os.path.join(state_dir, LOCK_FILE), encoding="ascii", errors="replace") as handle:
            pid, stopping = read_holder(handle.read(64))
    except OSError:
        return None
    return pid if stopping else None


def lock_held(state_dir: str, proc_locks: str = PROC_LOCKS) -> bool | None:
    """Whether a live process (a gateway) holds the lock on ``state_dir``'s :data:`LOCK_FILE`.

    It is read from ``/proc/locks`` (the ``FLOCK`` entries, by device and inode), without
    opening the lock file: taking the lock, even shared for a moment, could make a gateway
    that starts just then fail to take it. A process in another PID namespace (another
    container) is not listed there: its lock reads as not held.

    :param state_dir: the gateway's state directory.
    :param proc_locks: the list of locks (another file in tests).
    :return: ``True`` held, ``False`` not held; ``None`` when that cannot be told: no lock file
        (no gateway ever used the directory), or it or the list cannot be read.
    """
    try:
        info = os.stat(os.path.join(state_dir, LOCK_FILE))
        with open(proc_locks, encoding="ascii", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    # "1: FLOCK  ADVISORY  WRITE 4711 fe:00:2761231 0 EOF" (major and minor in hex); a process
    # waiting for a lock has a line of its own with "->" after the number: not a holder.
    wanted = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    return any(len(fields) > 5 and fields[1] == "FLOCK" and fields[5] == wanted
               for fields in (line.split() for line in lines))
