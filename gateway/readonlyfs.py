"""Whether a directory lies on a filesystem that refuses writes as read-only (remounted so by
the kernel after an I/O error, or by a flash card protecting itself)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from gateway.nearestpath import nearest_existing

#: The file :func:`read_only_at` makes and removes at once to learn whether a directory takes writes.
PROBE_PREFIX = ".gateway-write-probe-"


def read_only_at(path: Path) -> Path | None:
    """The nearest directory that exists of ``path`` and the directories above it (what
    making ``path`` would write in), when its filesystem refuses writes as read-only; else
    None (a directory the process may not write in, or one it cannot look at, is not
    read-only: whoever uses it says why it cannot).

    The mount's read-only flag is not enough: ext4 mounted ``errors=remount-ro`` stops
    writing after an error while its mount still says ``rw`` (Linux 6.x), so an empty file
    is made in the directory and removed at once (no fsync: a few microseconds, cheap enough
    for the reactor thread); EROFS says it is read-only.
    """
    found = nearest_existing(path, os.statvfs)
    if found is None:
        return None
    directory, stats = found
    if stats.f_flag & os.ST_RDONLY:
        return directory
    return directory if _refuses_writes(directory) else None


def _refuses_writes(directory: Path) -> bool:
    """Whether making a file in ``directory`` fails with EROFS."""
    probe = directory / f"{PROBE_PREFIX}{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return False  # (another thread's probe, or a leftover: made, so the directory took writes)
    except OSError as exc:
        return exc.errno == errno.EROFS
    os.close(fd)
    try:
        os.unlink(probe)
    except OSError:
        pass  # (the filesystem turned read-only just now: the next look says so)
    return False
