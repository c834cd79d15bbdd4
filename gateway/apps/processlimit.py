"""The process limit hosted programs run with: the gateway's own ceiling less a reserve.

Linux counts ``RLIMIT_NPROC`` per real user: every process and thread of the user, the
gateway's own threads included, against the limit of the process that forks. A program that
forks without end (a fork bomb) running as the gateway's user would otherwise take all that
the gateway may have too, its ``RLIMIT_NPROC`` (``ulimit -u``) or its pids cgroup's
``pids.max`` (systemd's ``TasksMax``), and the gateway's own threads and spawns would fail.
The launcher (:mod:`gateway.apps.launch`) gives each program, ``install.sh``, health check and
update script the limit :func:`program_process_limit` works out, soft and hard, before it
switches user and execs: their forks fail (``EAGAIN``) once the user has that many processes
and threads, which leaves ``reserve`` of them to the gateway. It cannot bound one program
against another (they share the count), nor a program running as root, whom Linux does not
hold to ``RLIMIT_NPROC``.
"""

from __future__ import annotations

import resource
from pathlib import Path
from typing import Sequence

from gateway.cgroupmembership import CGROUP_ROOT, CgroupMembership, own_cgroups


def _pids_max(cgroup: Path, top: Path) -> int | None:
    """The lowest ``pids.max`` of ``cgroup`` and its parents up to ``top`` (None: no limit)."""
    lowest = None
    while True:
        try:
            text = (cgroup / "pids.max").read_text().strip()
        except OSError:
            text = "max"
        if text.isdigit():
            lowest = int(text) if lowest is None else min(lowest, int(text))
        if cgroup == top or top not in cgroup.parents:
            return lowest
        cgroup = cgroup.parent


def cgroup_pids_max(cgroups: Sequence[CgroupMembership], root: Path = CGROUP_ROOT) -> int | None:
    """The most processes and threads the pids cgroup of a process in ``cgroups`` (its
    ``/proc/<pid>/cgroup``, :mod:`gateway.cgroupmembership`) allows (its own ``pids.max`` or a
    parent's, whichever is lower), or None where none is set or can be read.

    :param root: where the cgroup file systems are mounted (cgroup v1's ``pids`` under it; cgroup
        v2 at it, or at its ``unified``).
    """
    for cgroup in cgroups:
        if "pids" in cgroup.controllers:
            return _pids_max(root / "pids" / cgroup.path, root / "pids")
        if cgroup.unified:
            top = root if (root / "cgroup.controllers").is_file() else root / "unified"
            limit = _pids_max(top / cgroup.path, top)
            if limit is not None:
                return limit
    return None


def program_process_limit(reserve: int, nproc: int | None = None, pids_max: int | None = None) -> int | None:
    """The ``RLIMIT_NPROC`` programs get: the gateway's ceiling (the lower of its own soft
    ``RLIMIT_NPROC`` and its pids cgroup's ``pids.max``) less ``reserve``, and at least half the
    ceiling; None when the gateway has no ceiling (programs keep its unlimited one).

    :param nproc: the gateway's soft ``RLIMIT_NPROC`` (None: read it; ``RLIM_INFINITY``: none).
    :param pids_max: its pids cgroup's limit (None: none).
    """
    if nproc is None:
        nproc = resource.getrlimit(resource.RLIMIT_NPROC)[0]
    ceilings = [limit for limit in (nproc, pids_max) if limit is not None and limit != resource.RLIM_INFINITY]
    if not ceilings:
        return None
    ceiling = min(ceilings)
    return max(ceiling - reserve, ceiling // 2)


def own_program_process_limit(reserve: int) -> int | None:
    """:func:`program_process_limit` for this process (reads ``/proc/self/cgroup`` and its pids
    cgroup: once, when the apps service is made)."""
    return program_process_limit(reserve, pids_max=cgroup_pids_max(own_cgroups()))
