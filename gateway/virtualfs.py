"""Whether a path lies on one of the kernel's virtual file systems (``/proc``, ``/sys``...),
which keep no file written there: a state file named there would be lost, or refused, at once;
or on a file system in memory (``tmpfs``: ``/run``, ``/dev/shm``), which keeps it until the next
boot only."""

from __future__ import annotations

import os
from pathlib import Path

from gateway.nearestpath import nearest_existing

#: The file systems the kernel makes up as it is asked (none keeps a file written in it).
VIRTUAL_TYPES = frozenset({
    "proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "debugfs", "tracefs", "securityfs",
    "pstore", "bpf", "configfs", "efivarfs", "fusectl", "mqueue", "binfmt_misc", "selinuxfs", "nsfs",
    "rpc_pipefs", "autofs",
})
#: File systems held in memory: what is written there is gone at the next boot (``/run``,
#: ``/dev/shm``, ``/tmp`` on many systems).
MEMORY_TYPES = frozenset({"tmpfs", "ramfs"})
#: Where the kernel lists the mounts the process sees, with their devices and types.
MOUNTINFO = "/proc/self/mountinfo"


def filesystem_at(path: Path, mountinfo: str | None = None) -> tuple[str, str] | None:
    """The file system that ``path`` (or the nearest directory above it that exists: what
    making it would write in) lies on, as ``(type, mount point)``; ``None`` when that cannot be
    told (no ``mountinfo``: not Linux).

    Matched by device number, not by name: a symbolic link or a bind mount into ``/proc`` is
    found too.

    :param path: the file to be written.
    :param mountinfo: the mount table to read (default: :data:`MOUNTINFO`, read when called).
    """
    found = nearest_existing(path, os.stat)
    return None if found is None else filesystem_of(found[1].st_dev, mountinfo)


def filesystem_of(device: int, mountinfo: str | None = None) -> tuple[str, str] | None:
    """The file system whose device number is ``device`` (a stat's ``st_dev``), as ``(type,
    mount point)``; ``None`` when the mount table does not list it, or cannot be read.

    :param device: the device number of a file on it.
    :param mountinfo: the mount table to read (default: :data:`MOUNTINFO`, read when called).
    """
    wanted = f"{os.major(device)}:{os.minor(device)}"
    try:
        with open(mountinfo or MOUNTINFO, encoding="utf-8", errors="replace") as lines:
            for line in lines:
                # <id> <parent> <major:minor> <root> <mount point> <options> [<optional>...] - <type> ...
                fields = line.split()
                if len(fields) < 5 or fields[2] != wanted:
                    continue
                try:
                    kind = fields[fields.index("-", 5) + 1]
                except (ValueError, IndexError):
                    continue  # (a line cut short)
                return kind, fields[4].replace("\\040", " ")
    except OSError:
        return None
    return None


def virtual_fs_of(device: int, mountinfo: str | None = None) -> tuple[str, str] | None:
    """The virtual file system (:data:`VIRTUAL_TYPES`) whose device number is ``device`` (a
    stat's ``st_dev``), as :func:`filesystem_of` tells it; ``None`` when it is another, or when
    that cannot be told.

    :param device: the device number of a file on it.
    :param mountinfo: the mount table to read (default: :data:`MOUNTINFO`, read when called).
    """
    found = filesystem_of(device, mountinfo)
    return found if found is not None and found[0] in VIRTUAL_TYPES else None


def memory_fs_at(path: Path, mountinfo: str | None = None) -> tuple[str, str] | None:
    """The file system in memory (:data:`MEMORY_TYPES`) that ``path`` lies on, as
    :func:`filesystem_at` tells it; ``None`` when it lies on another, or when that cannot be told."""
    found = filesystem_at(path, mountinfo)
    return found if found is not None and found[0] in MEMORY_TYPES else None
