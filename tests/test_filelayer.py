"""The real file layer's durable append: one pwritev(RWF_DSYNC), or write and fsync."""

from __future__ import annotations

import errno
import os
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from gateway.filelayer import OSFiles


class AppendSyncTests(SynchronousTestCase):
    """:meth:`OSFiles.append_sync` appends, syncs, and copes with what the OS refuses."""

    def setUp(self) -> None:
        self.path = os.path.join(self.mktemp())
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        self.files = OSFiles()
        self.addCleanup(self.files.close_all)
        self.calls: list[tuple[int, int]] = []
        self.real_pwritev = os.pwritev

    def _content(self) -> bytes:
        with open(self.path, "rb") as f:
            return f.read()

    def test_appends(self) -> None:
        """Data lands at the end of the file, after plain appends too."""
        self.files.append_sync(self.path, b"one,")
        self.files.append(self.path, b"two,")
        self.files.append_sync(self.path, b"three" * 10000)
        self.assertEqual(self._content(), b"one,two," + b"three" * 10000)

    def test_partial_writes_continue(self) -> None:
        """A short write goes on with the rest; a write of nothing is a full disk."""

        def short(fd: int, buffers: list[Any], offset: int, flags: int) -> int:
            self.calls.append((len(buffers[0]), flags))
            return self.real_pwritev(fd, [buffers[0][:3]], offset, flags)

        self.patch(os, "pwritev", short)
        self.files.append_sync(self.path, b"abcdefgh")
        self.assertEqual(self._content(), b"abcdefgh")
        self.assertEqual([n for n, _ in self.calls], [8, 5, 2])
        self.patch(os, "pwritev", lambda *a: 0)
        err = self.assertRaises(OSError, self.files.append_sync, self.path, b"more")
        self.assertEqual(err.errno, errno.ENOSPC)

    def test_falls_back_when_the_flag_is_refused(self) -> None:
        """EOPNOTSUPP (an old kernel or a filesystem without RWF_DSYNC): write and fsync
        instead, and do not ask again."""
        synced: list[int] = []
        real_fsync = os.fsync

        def refuse(fd: int, buffers: list[Any], offset: int, flags: int) -> int:
            self.calls.append((len(buffers[0]), flags))
            raise OSError(errno.EOPNOTSUPP, "Operation not supported")

        def fsync(fd: int) -> None:
            synced.append(fd)
            real_fsync(fd)

        self.patch(os, "pwritev", refuse)
        self.patch(os, "fsync", fsync)
        self.files.append_sync(self.path, b"first,")
        self.files.append_sync(self.path, b"second")
        self.assertEqual(self._content(), b"first,second")
        self.assertEqual(len(self.calls), 1)
        self.assertEqual(len(synced), 2)

    def test_other_errors_raise(self) -> None:
        """An I/O error is the caller's to handle (the journal undoes the batch)."""

        def broken(fd: int, buffers: list[Any], offset: int, flags: int) -> int:
            raise OSError(errno.EIO, "Input/output error")

        self.patch(os, "pwritev", broken)
        err = self.assertRaises(OSError, self.files.append_sync, self.path, b"data")
        self.assertEqual(err.errno, errno.EIO)
