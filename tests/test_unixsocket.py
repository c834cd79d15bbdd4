"""gateway/unixsocket.py: a socket lock left by a gateway that is gone is removed, a live one's
never; a listen refused by a stale lock is tried once more."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import tempfile
import time
from pathlib import Path

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import CannotListenError
from twisted.trial.unittest import SynchronousTestCase

from gateway.portholder import listen_refusal
from gateway.unixsocket import clear_stale_lock, listen_past_stale_lock, listened_on


class StaleLockTests(SynchronousTestCase):
    def setUp(self) -> None:
        directory = Path(tempfile.mkdtemp(prefix="gwsock-"))  # short: the tests bind sockets themselves
        self.addCleanup(shutil.rmtree, directory, True)
        self.path, self.lock = directory / "s.sock", directory / "s.sock.lock"

    def age(self, seconds: float) -> None:
        made = time.time() - seconds
        os.utime(self.lock, (made, made), follow_symlinks=False)

    def test_a_live_listener_or_a_lock_made_just_now_stays(self) -> None:
        """A lock naming a live process (pid 1) stays while a process listens on the socket (at
        any age), and while nothing listens yet if it was made just now; once nothing listens
        on an old one, it and the socket are removed."""
        os.symlink("1", self.lock)
        self.assertFalse(clear_stale_lock(self.path))  # nothing listens, but made just now
        self.age(3600)
        with socket.socket(socket.AF_UNIX) as listener:
            listener.bind(str(self.path))
            listener.listen()
            self.assertTrue(listened_on(self.path))
            self.assertFalse(clear_stale_lock(self.path))
            self.assertEqual((os.readlink(self.lock), stat.S_ISSOCK(os.stat(self.path).st_mode)), ("1", True))
        self.assertFalse(listened_on(self.path))
        self.assertTrue(clear_stale_lock(self.path))
        self.assertEqual((self.lock.is_symlink(), self.path.exists()), (False, False))

    def test_a_lock_this_process_holds_stays(self) -> None:
        """A lock naming this process that it holds stays, listened on or not; one it does not
        hold (a gateway that ran with this pid, PID 1 in a container) goes, made just now too."""
        os.symlink(str(os.getpid()), self.lock)
        self.assertFalse(clear_stale_lock(self.path, {str(self.lock)}))
        self.assertTrue(clear_stale_lock(self.path))

    def test_a_listen_refused_by_a_stale_lock_is_tried_again(self) -> None:
        """A listen refused by a lock that was stale is tried once more, and its port is the
        result; one refused by a live process's lock fails, naming the pid."""
        os.symlink("1", self.lock)
        self.age(3600)
        refusal = CannotListenError(None, os.fsencode(self.path), "Cannot acquire lock")
        answers = [fail(refusal), succeed("port")]
        self.assertEqual(self.successResultOf(listen_past_stale_lock(lambda: answers.pop(0))), "port")
        os.symlink("1", self.lock)  # made just now: another gateway's, binding
        failure = self.failureResultOf(listen_past_stale_lock(lambda: fail(refusal)), CannotListenError)
        self.assertEqual(listen_refusal(failure),
                         f"Couldn't listen on any:{os.fsencode(self.path)!r}: Cannot acquire lock: {self.lock} names"
                         " pid 1, a live process (another gateway on this socket?): give each gateway its own socket.")

    def test_other_failures_are_not_tried_again(self) -> None:
        """A listen that failed otherwise (an address in use) is not tried again."""
        calls: list[int] = []

        def listen() -> Deferred[str]:
            calls.append(1)
            return fail(CannotListenError("127.0.0.1", 1883, OSError(98, "Address already in use")))
        self.failureResultOf(listen_past_stale_lock(listen), CannotListenError)
        self.assertEqual(len(calls), 1)
