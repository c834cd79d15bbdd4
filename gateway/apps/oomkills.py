"""Whether the kernel's OOM killer took a program: the OOM kill count of its memory cgroup.

Linux says which process its OOM killer took only in the kernel log, which the packaged unit
keeps from the gateway (``ProtectKernelLogs=``). What the gateway can read is how many
processes the OOM killer took in a memory cgroup: ``oom_kill`` in ``memory.oom_control``
(cgroup v1, Linux 4.13 and later) or in ``memory.events`` (cgroup v2). A program that ended
by SIGKILL, no stop asked, while that count of the cgroup it runs in rose, was taken by the
OOM killer, unless another process of that cgroup was taken meanwhile and something else
sent the SIGKILL; where no such count can be read nothing is told.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from gateway.apps.launch import CgroupJoin
from gateway.cgroupmembership import CGROUP_ROOT, CgroupMembership, own_cgroups, unified_path


def count_file(cgroups: Sequence[CgroupMembership], root: Path = CGROUP_ROOT) -> Path | None:
    """The file holding the OOM kill count of the memory cgroup of a process in ``cgroups`` (its
    ``/proc/<pid>/cgroup``, :mod:`gateway.cgroupmembership`), or None where there is none (no
    memory controller; the root cgroup of cgroup v2, which counts nothing).

    :param root: where the cgroup file systems are mounted.
    """
    for cgroup in cgroups:
        if "memory" in cgroup.controllers:  # (v1: its own hierarchy, memory's limits and counts)
            found = root / "memory" / cgroup.path / "memory.oom_control"
            return found if found.is_file() else None
    unified = unified_path(cgroups)
    return None if unified is None else events_file(root / unified)


def events_file(cgroup: Path) -> Path | None:
    """The ``memory.events`` of cgroup v2 directory ``cgroup``, or of the nearest parent that has
    one (the cgroup whose memory a cgroup without the memory controller is charged to); None
    when none has."""
    while (cgroup / "cgroup.procs").is_file():
        if (cgroup / "memory.events").is_file():
            return cgroup / "memory.events"
        if cgroup.parent == cgroup:
            break
        cgroup = cgroup.parent
    return None


def read_count(path: Path) -> int | None:
    """The ``oom_kill`` count in ``path``, or None when it cannot be read or has none."""
    try:
        text = path.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[0] == "oom_kill" and fields[1].isdigit():
            return int(fields[1])
    return None


class OomKillCounts:
    """Reads the OOM kill count of the memory cgroup a program runs in: the gateway's own, or
    the cgroup v2 of its app it joins (per-app byte accounting, :mod:`gateway.telemetry.appbytes`).

    :param cgroups: the gateway's cgroups (None: read its ``/proc/self/cgroup`` now).
    :param root: where the cgroup file systems are mounted.
    """

    def __init__(self, cgroups: Sequence[CgroupMembership] | None = None, root: Path = CGROUP_ROOT) -> None:
        self._own = count_file(own_cgroups() if cgroups is None else cgroups, root)
        # (memory on cgroup v1: joining an app's cgroup v2 changes nothing of its memory)
        self._v1 = self._own is not None and self._own.name == "memory.oom_control"

    def count(self, join: CgroupJoin | None) -> int | None:
        """The count for a program spawned with ``join`` (None, or an empty one: the gateway's
        own cgroup), or None where none can be read."""
        path = self._own
        if join is not None and join.procs and not self._v1:
            path = events_file(Path(join.procs).parent)
        return None if path is None else read_count(path)
