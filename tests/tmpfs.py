"""A small filesystem for the tests of a full disk: a tmpfs mounted for one test."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SkipTest


def mount_tmpfs(test: Any, directory: Path, size: str) -> None:
    """Mount a tmpfs of ``size`` (``2m``) on ``directory`` (made if missing), unmounted when
    ``test`` ends; skip the test where it cannot be mounted (not root, no permission).

    Cleanups run last-in first-out: processes that write there, started after this call,
    are stopped before it is unmounted.
    """
    if os.geteuid() != 0:
        raise SkipTest("mounting a small tmpfs needs root")
    directory.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
                             capture_output=True, text=True, timeout=30)
    if mounted.returncode != 0:
        raise SkipTest(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    test.addCleanup(subprocess.run, ["umount", "-l", str(directory)], capture_output=True, timeout=30)


def remount_read_only(directory: Path) -> None:
    """Make the tmpfs :func:`mount_tmpfs` mounted on ``directory`` read-only (what it holds
    stays); skip the test where that is refused."""
    remounted = subprocess.run(["mount", "-o", "remount,ro", str(directory)], capture_output=True, timeout=30)
    if remounted.returncode != 0:
        raise SkipTest(f"cannot remount a tmpfs read-only: {remounted.stderr!r}")


def fill_up(path: Path) -> None:
    """Write ``path`` until its filesystem has no room left (what a full disk looks like)."""
    filler = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(filler, b"\0" * 65536)
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
    finally:
        os.close(filler)
