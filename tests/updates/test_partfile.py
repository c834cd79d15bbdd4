"""The part file of one download: its descriptor is never kept past the download."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from gateway.updates import partfile
from gateway.updates.partfile import PartFile, PartMeta


class PartFileTests(SynchronousTestCase):
    """A real part file whose metadata the disk refuses once it is full."""

    def setUp(self) -> None:
        self.destination = Path(self.mktemp()) / "a.bin"
        self.part = PartFile(self.destination, PartMeta(url="https://example.com/a.bin"), 4096)
        self.part.open()
        self.part.write_chunks([b"x" * 10000])
        self.fd = self.part._fd
        self.patch(partfile, "write_json_atomically", self.disk_full)

    @staticmethod
    def disk_full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def assertClosed(self, fd: int | None) -> None:
        """``fd`` is no longer open (in this process)."""
        assert fd is not None
        error = self.assertRaises(OSError, os.fstat, fd)
        self.assertEqual(error.errno, errno.EBADF)

    def test_a_close_whose_checkpoint_fails_still_closes(self) -> None:
        """On a full disk the last checkpoint fails, and says so, but the part is closed all
        the same: a descriptor kept open holds the space of a part deleted afterwards (the
        failed operation's artifacts are removed), so a full disk stayed full until the
        gateway's restart."""
        self.assertRaises(OSError, self.part.close)
        self.assertClosed(self.fd)
        self.part.close()  # nothing left to close

    def test_a_discard_on_a_full_disk_closes_and_deletes(self) -> None:
        """A discarded part (a digest that did not match) is closed and deleted, its metadata
        too, however the disk answers: what is thrown away is not checkpointed first."""
        self.part.discard()
        self.assertClosed(self.fd)
        self.assertEqual(sorted(p.name for p in self.destination.parent.iterdir()), [])
