"""The journal's I/O thread: jobs in order, off the reactor thread, errors passed back, clean stop."""

from __future__ import annotations

import subprocess
import sys
import threading
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.trial.unittest import TestCase

from gateway.journal.iothread import IOThread


class IOThreadTests(TestCase):
    """Run jobs on the real reactor."""

    timeout = 10

    @inlineCallbacks
    def test_jobs_in_order_on_their_thread(self) -> Any:
        """Jobs run one after another, in order, on the named thread; results come back."""
        io = IOThread(reactor, "test-io")
        io.start()
        seen: list[int] = []

        def job(i: int) -> str:
            seen.append(i)
            return threading.current_thread().name

        names = yield gatherResults([io.run(job, i) for i in range(100)])
        self.assertEqual((seen, set(names)), (list(range(100)), {"test-io"}))
        yield io.stop()

    @inlineCallbacks
    def test_errors_and_stop(self) -> Any:
        """A job's exception fails its Deferred only; stop waits for the jobs queued before it."""
        io = IOThread(reactor, "test-io")
        io.start()
        failed = io.run(lambda: 1 / 0)
        later = io.run(lambda: "after")
        stopped = io.stop()
        yield self.assertFailure(failed, ZeroDivisionError)
        self.assertEqual((yield later), "after")
        yield stopped
        self.assertNotIn("test-io", [t.name for t in threading.enumerate()])

    def test_daemon_thread(self) -> None:
        """The thread is a daemon: a process whose journal was never stopped (an exception in
        another service's stopService) still exits."""
        io = IOThread(reactor, "test-io")
        io.start()
        self.addCleanup(io.stop)
        [thread] = [t for t in threading.enumerate() if t.name == "test-io"]
        self.assertTrue(thread.daemon)
        script = ("from twisted.internet import reactor\n"
                  "from gateway.journal.iothread import IOThread\n"
                  "IOThread(reactor, 'left-running').start()\n"
                  "raise SystemExit(3)\n")
        done = subprocess.run([sys.executable, "-c", script], timeout=60, capture_output=True)
        self.assertEqual(done.returncode, 3, done.stderr)
