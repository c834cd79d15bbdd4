"""twistd's pid file left by a gateway that is gone, naming a pid another process has taken
since (a power cut and a reboot, pids wrapped around, the gateway as PID 1 in a container run
again): twistd would take it for a running server and refuse every start ('Another twistd
server is running, PID N'), so it is removed before twistd looks at it."""

from __future__ import annotations

import os
from pathlib import Path

from gateway.statelock import lock_held


def clear_stale_pidfile(pidfile: str, state_dir: Path) -> str | None:
    """Remove ``pidfile`` when the pid it names is alive but is no gateway's: this very
    process's, a zombie's, or a process that is no ``twistd``; and only while no process holds
    the lock of ``state_dir`` (a gateway that runs holds it, and its pid file stays, as does
    another twistd server's: twistd refuses those as before). Blocking (reads ``/proc``).

    :param pidfile: twistd's ``--pidfile`` (empty: none).
    :param state_dir: the gateway's state directory.
    :return: the line that says it was removed, or ``None`` when it was left.
    """
    if not pidfile:
        return None
    try:
        with open(pidfile, encoding="ascii", errors="replace") as handle:
            pid = int(handle.read(32))
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes() if pid != os.getpid() else b""
    except (OSError, ValueError):
        return None  # (none, not a number, or no such process: twistd says or removes it itself)
    if lock_held(str(state_dir)):
        return None
    twistd = any(os.path.basename(arg).startswith(b"twistd") for arg in cmdline.split(b"\0"))
    if twistd:
        return None
    try:
        os.unlink(pidfile)
    except OSError:
        return None
    return (f"gateway: removed the stale pid file {pidfile}: pid {pid} is {'this process' if pid == os.getpid() else 'no gateway'}"
            f" and no process holds {state_dir}'s lock\n")
