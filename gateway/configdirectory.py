"""The check every directory key of the configuration goes through (``gateway.state_dir``,
``journal.directory``): a directory the gateway makes at start, or uses as it is."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def directory_problem(path: Path) -> str | None:
    """Why ``path`` cannot be the directory a key names (``None`` when it can: a directory, or
    nothing yet, made at start).

    ``Path.exists`` calls a loop of symbolic links (ELOOP) and a path under a file (ENOTDIR)
    absent: the configuration passed, and the start then failed to make the directory with a
    line that named neither the key nor the cause (``[Errno 17] File exists``). A name over the
    file system's 255 bytes (ENAMETOOLONG) is told the same way, as is a symbolic link to
    nothing (``mkdir`` does not follow it: ``File exists`` again).

    :return: the problem in words, quoting the path (the key is the caller's).
    """
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        if os.path.islink(path):
            return f"{str(path)!r} cannot be used: it is a symbolic link to {os.readlink(path)!r}, which does not exist"
        return None  # (made at start)
    except OSError as exc:
        return f"{str(path)!r} cannot be used: {exc.strerror or exc}"
    if not stat.S_ISDIR(mode):
        return f"{str(path)!r} exists and is not a directory"
    return None
