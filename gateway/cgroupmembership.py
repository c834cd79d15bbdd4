"""Which cgroups a process is in: its ``/proc/<pid>/cgroup`` read and parsed, the one parser
the gateway has for it (cgroup v1, v2 and the hybrid layout of the two).

Each line is ``hierarchy-ID:controller-list:cgroup-path``. cgroup v1 has a line per hierarchy
that names its controllers (``4:memory:/system.slice/gateway.service``, or a named one:
``1:name=systemd:/...``); cgroup v2 has the one line ``0::/path``; the hybrid layout has both
(the v2 hierarchy mounted beside v1's, at ``/sys/fs/cgroup/unified``). A line that is not so
made is skipped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

#: Where the cgroup file systems are mounted (cgroup v1's hierarchies under it; cgroup v2 at it,
#: or at its ``unified`` in the hybrid layout).
CGROUP_ROOT = Path("/sys/fs/cgroup")
#: This process's cgroups, as Linux lists them.
OWN_CGROUPS = Path("/proc/self/cgroup")


@dataclass(frozen=True)
class CgroupMembership:
    """One line of ``/proc/<pid>/cgroup``: the process's cgroup in one hierarchy.

    :param hierarchy: the hierarchy's ID (``0`` for cgroup v2).
    :param controllers: the controllers bound to it (cgroup v1: ``memory``, ``pids``, a
        ``name=systemd``; none for cgroup v2).
    :param path: the cgroup's path in the hierarchy, without its leading slash ("" for the
        hierarchy's root).
    """

    hierarchy: str
    controllers: tuple[str, ...]
    path: str

    @property
    def unified(self) -> bool:
        """Whether this is the cgroup v2 (unified) hierarchy's line, ``0::/path``."""
        return self.hierarchy == "0" and not self.controllers


def parse_cgroups(text: str) -> list[CgroupMembership]:
    """The cgroups in ``/proc/<pid>/cgroup`` text, in its order (lines not so made skipped)."""
    cgroups = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        controllers = tuple(parts[1].split(",")) if parts[1] else ()
        cgroups.append(CgroupMembership(parts[0], controllers, parts[2].strip().lstrip("/")))
    return cgroups


def unified_path(cgroups: Sequence[CgroupMembership]) -> str | None:
    """The path of the cgroup v2 cgroup among ``cgroups`` ("" for the root), or None when they
    have none (cgroup v1 alone)."""
    for cgroup in cgroups:
        if cgroup.unified:
            return cgroup.path
    return None


def read_cgroups(path: Path = OWN_CGROUPS) -> list[CgroupMembership]:
    """The cgroups listed in ``path`` (blocks: a read of procfs), its bytes decoded as file
    names are, so that a cgroup named in any bytes is found again on disk.

    :raises OSError: when it cannot be read (no procfs: not Linux).
    """
    return parse_cgroups(os.fsdecode(path.read_bytes()))


def own_cgroups() -> list[CgroupMembership]:
    """This process's cgroups, or none where ``/proc/self/cgroup`` cannot be read (blocks)."""
    try:
        return read_cgroups(OWN_CGROUPS)
    except OSError:
        return []
