"""gateway/pidfile.py: twistd's pid file that a gateway which is gone left, naming a pid
another process has taken since, is removed before twistd refuses to start for it; a running
gateway's, or another twistd server's, stays."""

from __future__ import annotations

import fcntl
import os
import subprocess
import time
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from gateway.pidfile import clear_stale_pidfile
from gateway.statelock import LOCK_FILE


class StalePidFileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.state = Path(self.mktemp())
        self.state.mkdir()
        self.pidfile = str(self.state.parent / "twistd.pid")

    def process(self, *command: str, executable: str | None = None) -> int:
        """A live process running ``command`` (``executable``, when ``command[0]`` is only its
        name), killed at the end."""
        child = subprocess.Popen(list(command), executable=executable)
        self.addCleanup(child.wait)
        self.addCleanup(child.kill)
        cmdline = Path(f"/proc/{child.pid}/cmdline")
        for _ in range(1000):  # (empty for a moment while the exec finishes)
            if cmdline.read_bytes():
                break
            time.sleep(0.001)
        return child.pid

    def names(self, pid: int) -> None:
        Path(self.pidfile).write_text(f"{pid}\n")

    def test_a_pid_taken_by_another_process_or_this_one_is_removed(self) -> None:
        """A pid file naming a live process that is no twistd (a reboot gave the dead gateway's
        pid to it), or this very process (PID 1 in a container, run again), is removed, saying
        why; twistd refused every start ('Another twistd server is running, PID N')."""
        for pid, what in ((self.process("sleep", "60"), "no gateway"), (os.getpid(), "this process")):
            self.names(pid)
            self.assertEqual(clear_stale_pidfile(self.pidfile, self.state),
                             f"gateway: removed the stale pid file {self.pidfile}: pid {pid} is {what} and no"
                             f" process holds {self.state}'s lock\n")
            self.assertFalse(os.path.exists(self.pidfile))

    def test_a_running_gateway_or_another_twistd_keeps_its_pid_file(self) -> None:
        """A pid file stays while a process holds the state directory's lock (a gateway runs),
        or when it names a twistd process (another server on the same pid file: twistd says so),
        or a pid that is gone (twistd removes it itself), or is no pid file at all."""
        self.names(self.process("twistd", "60", executable="/bin/sleep"))
        self.assertIsNone(clear_stale_pidfile(self.pidfile, self.state))
        self.names(self.process("sleep", "60"))
        fd = os.open(self.state / LOCK_FILE, os.O_RDWR | os.O_CREAT)
        self.addCleanup(os.close, fd)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self.assertIsNone(clear_stale_pidfile(self.pidfile, self.state))
        self.names(999999999)
        self.assertIsNone(clear_stale_pidfile(self.pidfile, self.state))
        Path(self.pidfile).write_text("not a pid\n")
        self.assertIsNone(clear_stale_pidfile(self.pidfile, self.state))
        self.assertTrue(os.path.exists(self.pidfile))
        self.assertIsNone(clear_stale_pidfile("", self.state))
