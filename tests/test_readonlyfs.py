"""gateway.readonlyfs: whether a directory's filesystem refuses writes as read-only."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from gateway import readonlyfs
from gateway.readonlyfs import read_only_at


class ReadOnlyAtTests(SynchronousTestCase):
    """The mount's flag, and a file made and removed where the flag says nothing."""

    def setUp(self) -> None:
        self.directory = Path(self.mktemp()).absolute()
        self.directory.mkdir()

    def refuse_files(self, code: int) -> None:
        """Make every file made with O_CREAT fail with ``code`` (the mount still says rw)."""
        real_open = os.open

        def refusing(path: Any, flags: int, *args: Any) -> int:
            if flags & os.O_CREAT:
                raise OSError(code, os.strerror(code), str(path))
            return real_open(path, flags, *args)

        self.patch(readonlyfs.os, "open", refusing)

    def test_a_writable_directory(self) -> None:
        """A directory that takes writes is not read-only, and the probe is gone."""
        self.assertIsNone(read_only_at(self.directory))
        self.assertEqual(os.listdir(self.directory), [])

    def test_ext4_after_an_error(self) -> None:
        """ext4 mounted errors=remount-ro refuses writes after an error (EROFS) while its
        mount still says rw (Linux 6.x): the directory is read-only. statvfs's flag alone
        said it was writable, and a configuration change restarted the services on it."""
        self.refuse_files(errno.EROFS)
        self.assertEqual(read_only_at(self.directory), self.directory)

    def test_a_directory_the_user_may_not_write_is_not_read_only(self) -> None:
        """EACCES (or a full disk's ENOSPC) is no read-only filesystem: whoever uses the
        directory says why it cannot."""
        for code in (errno.EACCES, errno.ENOSPC):
            self.refuse_files(code)
            self.assertIsNone(read_only_at(self.directory))

    def test_a_directory_not_made_yet(self) -> None:
        """A path not made yet is judged by the nearest directory above it that exists."""
        self.refuse_files(errno.EROFS)
        self.assertEqual(read_only_at(self.directory / "a" / "b"), self.directory)
