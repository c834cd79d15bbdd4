"""What the uploads say of a file the gateway's user may not read (gateway.uploads.readaccess):
only what access refuses, never a file that is simply no longer there."""

from __future__ import annotations

import os
import subprocess
import sys
from unittest import SkipTest

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


class EffectiveUserTests(SynchronousTestCase):
    """The check is made as the user the gateway opens files as: its effective one, with its
    capabilities, the user its messages name."""

    def test_a_file_the_effective_user_may_read_is_readable(self) -> None:
        """A process whose real user is ``nobody`` and effective user root (a stand-in for a
        unit given ``CAP_DAC_READ_SEARCH`` to read logs: ``access(2)`` checks neither) opens a
        file of mode 0600 of root's; ``os.access`` went by the real user and left the file out,
        saying "the gateway's user root may not read it"."""
        if os.geteuid() != 0:
            raise SkipTest("needs root, to run a process whose real user is another")
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write("x")
        os.chmod(path, 0o600)
        code = ("import os, sys; os.setresuid(65534, 0, 0); from gateway.uploads import readaccess;"
                " f = open(sys.argv[1]); f.close(); print(readaccess.unreadable(sys.argv[1]))")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        said = subprocess.run([sys.executable, "-c", code, path], env=env, capture_output=True, text=True,
                              timeout=30, check=True).stdout
        self.assertEqual(said, "None\n")
