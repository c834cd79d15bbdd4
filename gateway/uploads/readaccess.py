"""What a trigger's globs match that the gateway's user may not read, and the directory of a
glob it may not look into: said in the log and in a trigger's refusal, never missed silently.
Asked as the gateway opens files: as its effective user, with its capabilities (:func:`_may`).

The packaged gateway runs as user ``gateway``: a file root keeps to itself (mode 0600), or one
in a directory closed to others, is there for ``ls`` as root but not for the gateway. These
calls block (a few system calls each).
"""

from __future__ import annotations

import os
import stat

from gateway.stateaccess import user_name

#: The characters that make a glob's part a pattern (as :mod:`glob` reads them).
_MAGIC = frozenset("*?[")


def unreadable(path: str) -> str | None:
    """Why the gateway's user may not read the file ``path``, or None when it may, or when
    ``path`` is no longer there (removed since the glob found it: no matter of access; what
    reads it next says it is gone).

    :return: ``the gateway's user gwtest may not read it (owner root, mode 0600)``.
    """
    if _may(path, os.R_OK) or _gone(path):
        return None
    return f"the gateway's user {user_name(os.geteuid())} may not read it{_owner_and_mode(path)}"


def closed_directory(pattern: str) -> str | None:
    """The first directory on the way to what ``pattern`` names that the gateway's user may not
    look into, said with its owner and mode, or None.

    The directories before the glob's first pattern part must let the user enter them (``x``),
    and the last of them list it (``r`` too); a directory below that the glob would walk
    (``**``) is not looked at. One that does not exist is no refusal: nothing matches there.

    :return: ``the gateway's user gwtest may not look into /srv/closed (owner root, mode 0700)``.
    """
    parts = os.path.abspath(pattern).split(os.sep)
    first = next((i for i, part in enumerate(parts) if _MAGIC & set(part)), None)
    literal = len(parts) - 1 if first is None else first
    for depth in range(1, literal + 1):
        directory = os.sep.join(parts[:depth]) or os.sep
        if not os.path.isdir(directory):
            return None
        wanted = os.R_OK | os.X_OK if depth == literal and first is not None else os.X_OK
        if not _may(directory, wanted):
            return (f"the gateway's user {user_name(os.geteuid())} may not look into {directory}"
                    f"{_owner_and_mode(directory)}")
    return None


def _may(path: str, mode: int) -> bool:
    """Whether the gateway may use ``path`` so (``os.R_OK``...) as it opens files: as its
    effective user, with its capabilities (``faccessat2``: Linux 5.8, glibc 2.33); ``access(2)`` by
    itself asks for the real user's, without them (a unit given ``CAP_DAC_READ_SEARCH`` to read
    logs was told it may not)."""
    return os.access(path, mode, effective_ids=True)


def _gone(path: str) -> bool:
    """Whether ``path`` is not there (``os.access`` says no to that as well)."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return False


def _owner_and_mode(path: str) -> str:
    """`` (owner root, mode 0600)``, or nothing when ``path`` cannot be looked at."""
    try:
        info = os.stat(path)
    except OSError:
        return ""
    return f" (owner {user_name(info.st_uid)}, mode {stat.S_IMODE(info.st_mode):04o})"
