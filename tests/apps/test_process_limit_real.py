"""The kernel holds a program to the process limit the launcher gives it (docs/apps.md: a
program that forks without end): its forks fail with EAGAIN there, the gateway's do not."""

from __future__ import annotations

import os
import pwd

import psutil
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import SkipTest, TestCase

from gateway.apps.process import ProcessLauncher, ProgramSpec
from gateway.apps.settings import ProgramSettings
from tests.apps.realtime import wait_until

#: A user that runs nothing else here (Linux counts RLIMIT_NPROC per user).
USER = "uucp"
#: An interpreter any user may run.
PYTHON = "/usr/bin/python3"
#: Forks children that wait until a fork fails (64 at most); prints how many it made and the
#: fork's errno (0: none failed).
BOMB = """
import os, time
made, error = 0, 0
while made < 64:  # (bounded all the same: without the limit this test is no fork bomb)
    try:
        pid = os.fork()
    except OSError as exc:
        error = exc.errno
        break
    if pid == 0:  # (a child waits without the pipes, so that the end is seen at once)
        os.close(0)
        os.close(1)
        os.close(2)
        time.sleep(20)
        os._exit(0)
    made += 1
print(made, error)
"""


def processes_of(uid: int) -> int:
    """How many processes (zombies too: Linux counts them until they are reaped) ``uid`` has."""
    return sum(1 for process in psutil.process_iter(["uids"]) if process.info["uids"].real == uid)


class _Collect(ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.ended: Deferred[None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: object) -> None:
        self.ended.callback(None)


class ForkBombTests(TestCase):
    timeout = 20

    @inlineCallbacks
    def test_a_fork_bomb_stops_at_its_limit(self) -> None:
        """A program run as another user with a limit of 8 makes fewer than 8 children, its next
        fork failing with EAGAIN; the gateway (this process) still forks. Its whole group is
        killed when it ends, as always."""
        if os.getuid() != 0:
            raise SkipTest("switching a program's user needs root")
        try:
            uid = pwd.getpwnam(USER).pw_uid
        except KeyError:
            raise SkipTest(f"no user {USER} to run the program as")
        if not os.path.exists(PYTHON):
            raise SkipTest(f"no {PYTHON} for another user (this interpreter may be root's alone)")
        yield wait_until(lambda: processes_of(uid) == 0, 5)  # (an earlier run's, being reaped)
        launcher = ProcessLauncher(reactor, max_processes=8)
        spec = ProgramSpec("bomb", "bomb", "1", ProgramSettings(command="python3", user=USER),
                           (PYTHON, "-I", "-S", "-c", BOMB), Path("/"), {}, None, None)
        collect = _Collect()
        plan = yield launcher.prepare(spec)
        group = launcher.spawn(collect, spec, plan).pid
        self.addCleanup(launcher.signal_group, group, 9)
        yield collect.ended
        self.assertRegex(collect.output, rb"^[0-9]+ [0-9]+\n$")
        made, error = collect.output.split()
        self.assertLess(int(made), 8)
        self.assertGreater(int(made), 0)
        self.assertEqual(int(error), 11)  # EAGAIN
        child = os.fork()
        if child == 0:
            os._exit(0)
        os.waitpid(child, 0)
