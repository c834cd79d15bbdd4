"""Which paths lie on the kernel's virtual file systems (a state file there is never kept)."""

from __future__ import annotations

import os
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from gateway.virtualfs import memory_fs_at, virtual_fs_of


class VirtualFSTests(SynchronousTestCase):
    """``virtual_fs_of`` and ``memory_fs_at`` against this machine's mounts (Linux: /proc and
    /sys are always there)."""

    def test_proc_and_sys_and_a_link_into_them(self) -> None:
        """A file under /proc or /sys, or a symbolic link to /sys, is on a virtual file system
        (by its device); a test's directory is not."""
        link = Path(self.mktemp()).absolute()
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to("/sys/kernel")
        self.assertEqual(virtual_fs_of(os.stat("/proc/self").st_dev), ("proc", "/proc"))
        self.assertEqual(virtual_fs_of(os.stat("/sys/kernel").st_dev), ("sysfs", "/sys"))
        self.assertEqual(virtual_fs_of(os.stat(link).st_dev), ("sysfs", "/sys"))
        self.assertIsNone(virtual_fs_of(os.stat(link.parent).st_dev))

    def test_unknown_without_a_mount_table(self) -> None:
        """Without a mount table to read (not Linux), nothing is said to be virtual."""
        self.assertIsNone(virtual_fs_of(os.stat("/proc/self").st_dev, mountinfo=self.mktemp()))

    def test_a_file_system_in_memory(self) -> None:
        """A path on a tmpfs (or ramfs) is on a file system in memory, by its device in the mount
        table; the same path on a disk, or a virtual one, is not; nor without a mount table."""
        directory = Path(self.mktemp()).absolute()
        (directory / "links").mkdir(parents=True)
        device = os.stat(directory).st_dev
        for kind, found in (("tmpfs", ("tmpfs", "/run")), ("ramfs", ("ramfs", "/run")), ("ext4", None)):
            table = Path(self.mktemp())
            table.write_text(f"20 1 0:99 / /elsewhere rw - tmpfs tmpfs rw\n"
                             f"30 1 {os.major(device)}:{os.minor(device)} / /run rw,nosuid shared:5 - {kind} x rw\n")
            self.assertEqual(memory_fs_at(directory / "links" / "new" / "x.cik", mountinfo=str(table)), found, kind)
        self.assertIsNone(memory_fs_at(Path("/proc/x.cik")))
        self.assertIsNone(memory_fs_at(directory, mountinfo=self.mktemp()))
