"""One-off commands (install.sh, health checks): output, exit status, timeout."""

from __future__ import annotations

import json
import os
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks, maybeDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from gateway.apps.commands import run_command
from gateway.apps.leftovers import GroupRecords, ProcessTable
from gateway.apps.process import ProcessLauncher
from tests.apps.fakes import FakeProcessReactor
from tests.apps.realtime import pid_alive, wait_until


class _TimerOn:
    """The real reactor's processes with ``clock``'s timers."""

    def __init__(self, clock: Clock) -> None:
        self.callLater = clock.callLater
        self.spawnProcess = reactor.spawnProcess


class RunCommandTests(TestCase):
    timeout = 15

    def command(self, script: str, timeout: float = 5.0):  # type: ignore[no-untyped-def]
        return run_command(reactor, ProcessLauncher(reactor), ("sh", "-c", script),
                           Path("."), dict(os.environ), timeout)

    @inlineCallbacks
    def test_output_and_status(self) -> None:
        """stdout and stderr are captured; the exit code is reported."""
        result = yield self.command("echo out; echo err >&2; exit 5")
        self.assertEqual(result.exitstatus, 5)
        self.assertFalse(result.ok)
        self.assertEqual(sorted(result.output.split()), [b"err", b"out"])

    @inlineCallbacks
    def test_timeout_kills_the_group(self) -> None:
        """Past its timeout the command and its children are killed; status is None."""
        pidfile = Path(self.mktemp()).absolute()
        # The timeout runs on a fake clock, moved on once the child is known: on a loaded
        # machine the launcher, sh and its fork may take longer than a real 0.5 s timer,
        # which would then kill the command before it has written the pid file.
        clock = Clock()
        timed = _TimerOn(clock)
        done = run_command(timed, ProcessLauncher(reactor),
                           ("sh", "-c", f"sleep 30 & echo $! > {pidfile}; wait"),
                           Path("."), dict(os.environ), 0.5)
        self.addCleanup(clock.advance, 0.5)  # (kills the group if the test fails before)
        yield wait_until(lambda: pidfile.exists() and pidfile.read_text().strip() != "")
        self.assertFalse(done.called)
        clock.advance(0.5)
        result = yield done
        self.assertIsNone(result.exitstatus)
        # SIGKILL is queued, not done, when killpg returns: on a loaded machine the child may
        # take a moment to be scheduled and die.
        child = int(pidfile.read_text())
        yield wait_until(lambda: not pid_alive(child), 5.0)

    @inlineCallbacks
    def test_missing_program(self) -> None:
        """A command that cannot be executed fails with a non-zero status."""
        result = yield run_command(reactor, ProcessLauncher(reactor), ("/nonexistent",),
                                   Path("."), dict(os.environ), 5.0)
        self.assertNotEqual(result.exitstatus, 0)


    def test_an_environment_linux_would_refuse_is_not_spawned(self) -> None:
        """A command whose environment holds a variable larger than execve() takes ends at
        once with status 127 and a line saying which (not Twisted's traceback from the forked
        child, the whole argv in it, and status 1)."""
        fake = FakeProcessReactor()
        big = "A" * (32 * os.sysconf("SC_PAGE_SIZE"))
        result = self.successResultOf(run_command(fake, ProcessLauncher(fake, fake.kill_group), ("sh", "install.sh"),
                                                  Path("."), {"BIG": big}, 5.0))
        self.assertEqual(fake.processes, [])
        self.assertEqual(result.exitstatus, 127)
        self.assertTrue(result.output.startswith(b"cannot run sh: [Errno 7] its environment variable BIG is "),
                        result.output)

class RecordedCommandTests(TestCase):
    """A named command's group is recorded while it runs, as a program's, so that the next start
    stops what a killed gateway left of it (docs/apps.md, When the gateway dies)."""

    timeout = 15

    @inlineCallbacks
    def test_named_command_is_recorded_while_it_runs(self) -> None:
        """It gets the run's GATEWAY_RUN_ID; its group is in processes.json until it ends."""
        path = Path(self.mktemp())
        records = GroupRecords(path, ProcessTable(), maybeDeferred)
        marker = Path(self.mktemp()).absolute()
        done = run_command(reactor, ProcessLauncher(reactor, records=records),
                           ("sh", "-c", f'echo "$GATEWAY_RUN_ID" > {marker}; read line'),
                           Path("."), dict(os.environ), 5.0, name="q 1 install.sh")
        recorded = json.loads(path.read_text())
        self.assertEqual(list(recorded), ["q 1 install.sh"])
        self.assertEqual(recorded["q 1 install.sh"]["run"], records.run_id)
        yield done
        self.assertEqual(marker.read_text().strip(), records.run_id)
        self.assertEqual(json.loads(path.read_text()), {})
