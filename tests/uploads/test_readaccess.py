"""What the uploads say of a file the gateway's user may not read (gateway.uploads.readaccess):
only what access refuses, never a file that is simply no longer there."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from gateway.uploads import readaccess


class UnreadableTests(SynchronousTestCase):
    """:func:`readaccess.unreadable` speaks of access, and of nothing else."""

    def test_a_file_removed_since_the_glob_is_not_called_unreadable(self) -> None:
        """A file the glob found and that went before it was looked at (a log rotated away
        meanwhile) was left out as one "the gateway's user may not read", which sent the
        operator to change modes that were right; it is no refusal of access."""
        directory = self.mktemp()
        os.mkdir(directory)
        self.assertIsNone(readaccess.unreadable(os.path.join(directory, "rotated.log")))

    def test_a_file_it_may_read_is_readable(self) -> None:
        """A file the gateway's user may read is not called unreadable."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("x")
        self.assertIsNone(readaccess.unreadable(path))
