"""The state directory's lock file, and whether a live process holds its lock, seen from
outside (standard library only: ``gatewayctl`` asks it, with no Twisted on its path)."""

from __future__ import annotations

import os

#: The file in the state directory whose lock (``flock``) the running gateway holds; it
#: names that gateway's pid. The kernel drops the lock when the process ends, however.
LOCK_FILE = "gateway.lock"
#: Where Linux lists the locks held (``flock`` and POSIX), readable by every user.
PROC_LOCKS = "/proc/locks"


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
