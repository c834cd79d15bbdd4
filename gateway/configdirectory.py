"""The check every directory key of the configuration goes through (``gateway.state_dir``,
``journal.directory``): a directory the gateway makes at start, or uses as it is; and its words,
which the check of a file's directory (an exosite link's ``cik_file``) uses too."""

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
        return dangling_link(path)  # (None: made at start)
    except OSError as exc:
        return cannot_be_used(path, exc)
    if not stat.S_ISDIR(mode):
        return not_a_directory(path)
    return None


def cannot_be_used(path: Path, error: OSError) -> str:
    """How a path the gateway cannot look at is told: ``'<path>' cannot be used: <why>`` (a loop
    of symbolic links, a file on the way, a name too long).

    :param path: the path looked at.
    :param error: what looking at it raised.
    """
    return f"{str(path)!r} cannot be used: {error.strerror or error}"


def dangling_link(path: Path) -> str | None:
    """How a symbolic link to nothing at ``path`` is told (``mkdir`` does not follow it); None
    when ``path`` is no such link."""
    why = link_to_nothing(path)
    return None if why is None else f"{str(path)!r} cannot be used: {why}"


def link_to_nothing(path: Path) -> str | None:
    """Why ``path``, found absent, is not simply absent: ``it is a symbolic link to '<target>',
    which does not exist``; None when it is no symbolic link (nothing there: a first start).

    :param path: a path whose open or stat raised ``FileNotFoundError``.
    """
    if os.path.islink(path):
        return f"it is a symbolic link to {os.readlink(path)!r}, which does not exist"
    return None


def not_a_directory(path: Path) -> str:
    """How a path that is there but is no directory is told: ``'<path>' exists and is not a directory``."""
    return f"{str(path)!r} exists and is not a directory"
