"""Whether the gateway's user may use what the state directory holds, and the one line that
tells the operator how to give it back: a file it may not read is not damaged (never set
aside as such), and a ``sudo twistd gateway`` run leaves files and directories owned by root.
These calls block (a few system calls; :func:`check_state_tree` one per entry)."""

from __future__ import annotations

import errno
import os
import pwd
import stat
from pathlib import Path
from typing import Callable, TypeGuard

from gateway.errors import GatewayError
from gateway.statelock import LOCK_FILE

#: The errnos of a permission problem: the file is fine, its owner or mode is not.
PERMISSION_ERRNOS = frozenset({errno.EACCES, errno.EPERM})


class StateAccessError(GatewayError):
    """A file or directory of the state the gateway's user may not use: its start stops, saying
    what to do (nothing is set aside or started without)."""


def is_permission_error(error: BaseException) -> TypeGuard[OSError]:
    """Whether ``error`` is a permission problem (``EACCES``, ``EPERM``), not damage.

    :param error: what reading, listing or renaming a state file raised.
    """
    return isinstance(error, OSError) and error.errno in PERMISSION_ERRNOS


def refusal(path: Path, state_dir: Path | None = None, then: str | None = "start again") -> StateAccessError:
    """The error that stops the start over ``path``: it names the file (or the first directory
    above it that can be looked at: the one that keeps the user out), its owner and mode, and
    the fix: ``chown -R <user>: <state_dir>`` when another user owns it, ``chmod`` when the
    gateway's user does.

    :param path: what the gateway's user may not use.
    :param state_dir: the state directory (default: the nearest directory above ``path``
        holding the lock file; none there: ``path`` is not in one, and only it is chowned).
    :param then: what to do once it is set right (None: nothing said, the line ends with the
        command: a running service that tries again by itself).
    """
    user = user_name(os.geteuid())
    where = path
    while True:
        try:
            info = os.lstat(where)
            break
        except OSError as error:
            if isinstance(error, PermissionError) and where != where.parent:
                where = where.parent  # (a directory above it may not be entered: the first one seen is it)
                continue
            # (gone, or never there: nothing to tell of it but its name)
            return StateAccessError(f"{path} may not be used by the gateway's user {user}:"
                                    f" give it to that user{_and(then)}")
    if state_dir is None:
        state_dir = next((above for above in where.parents if _exists(above / LOCK_FILE)), None)
    owner = user_name(info.st_uid)
    if info.st_uid != os.geteuid():
        # (a file elsewhere, a key or a certificate a setting names: that one file alone)
        fix = f"chown {user}: {where}" if state_dir is None else f"chown -R {user}: {state_dir}"
    else:
        fix = f"chmod u+{'rwx' if stat.S_ISDIR(info.st_mode) else 'rw'} {where}"
    return StateAccessError(f"{where} (owner {owner}, mode {stat.S_IMODE(info.st_mode):04o}) may not be used"
                            f" by the gateway's user {user}: {fix}{_and(then)}")


def check_state_tree(top: Path, appended: Callable[[Path], bool] = lambda path: False,
                     installed: Callable[[Path], bool] = lambda directory: False) -> None:
    """Refuse a tree of the gateway's (the state directory, a journal directory elsewhere)
    holding a file the gateway's user may not read (nor write, for a file it appends to), or a
    directory it may not list, enter and write, that another user owns (root, after a ``sudo
    twistd gateway``): what a ``chown`` sets right, told before any service reads or writes a
    thing. Symbolic links are not followed; root may use anything, and is not checked.

    An installed tree the gateway only runs and deletes (an app's version: ``node_modules``
    may hold 50,000 files) is not looked at file by file: its own files (the manifest the
    gateway reads) are, and below them only its directories, which its deletion writes in
    (a file is deleted with a write in its directory, not in it).

    :param top: the tree (already known to be usable itself), which the refusal's ``chown -R``
        names.
    :param appended: whether a file is one the gateway appends to (a log, a journal segment).
    :param installed: whether a directory is an installed tree.
    :raises StateAccessError: at the first such entry.
    """
    uid = os.geteuid()
    if uid == 0:
        return
    pending = [(top, _WHOLE)]
    while pending:
        directory, scope = pending.pop()
        try:
            with os.scandir(directory) as listing:
                entries = list(listing)
        except OSError as error:  # (its own, mode 0: a chmod sets it right)
            if is_permission_error(error):
                raise refusal(directory, top) from error
            continue  # (gone since it was listed)
        for entry in entries:
            try:
                if scope == _DIRECTORIES and not entry.is_dir(follow_symlinks=False):
                    continue  # (the type the listing gave: no system call per file)
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            path = Path(entry.path)
            is_dir = stat.S_ISDIR(info.st_mode)
            if is_dir:
                wanted = os.R_OK | os.W_OK | os.X_OK
            else:
                wanted = os.R_OK | os.W_OK if appended(path) else os.R_OK
            if info.st_uid != uid and not stat.S_ISLNK(info.st_mode) and not os.access(path, wanted):
                raise refusal(path, top)
            if is_dir:
                inner = _DIRECTORIES if scope != _WHOLE else _INSTALLED if installed(path) else _WHOLE
                pending.append((path, inner))


#: How much of a directory :func:`check_state_tree` looks at: everything; its files and, below
#: them, directories only (an installed tree); its directories only (inside one).
_WHOLE, _INSTALLED, _DIRECTORIES = range(3)


def _and(then: str | None) -> str:
    """The end of a refusal: `` and <then>``, or nothing."""
    return "" if then is None else f" and {then}"


def user_name(uid: int) -> str:
    """The name of user ``uid``, or the number when it has none."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:
        return False
