"""One-off commands (install.sh, health checks): output, exit status, timeout."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Callable

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import TestCase

from gateway.apps.commands import COMMAND_ID_VARIABLE, run_command
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

    def test_its_daemons_are_killed_when_it_ends(self) -> None:
        """What a named command (install.sh, a health check, an update script) started that left
        its group with setsid() (a daemon) ran on after it ended, until the gateway's end: it is
        found by the run's GATEWAY_RUN_ID and the command's own GATEWAY_COMMAND_ID and killed
        with its group, with one warning, before the result is given; another command's, a
        program's and another run's processes are left, and an unnamed command gets no mark."""
        fake = FakeProcessReactor()
        pending: list[Deferred[object]] = []

        def later(work: Callable[[], object]) -> Deferred[object]:
            done: Deferred[object] = Deferred()
            pending.append(done)
            return done.addCallback(lambda _: work())

        records = GroupRecords(Path(self.mktemp()), fake.table, later)  # type: ignore[arg-type]
        launcher = ProcessLauncher(fake, fake.kill_group, records=records)
        done = run_command(fake, launcher, ("sh", "install.sh"), Path("."), {"A": "1"}, 5.0,
                           name="q 1 install.sh")
        command = fake.last
        mark = command.env[COMMAND_ID_VARIABLE]
        self.assertEqual((command.env["A"], command.env["GATEWAY_RUN_ID"]), ("1", records.run_id))
        fake.table.live.update({
            5000: {"GATEWAY_RUN_ID": records.run_id, COMMAND_ID_VARIABLE: mark},
            5001: {"GATEWAY_RUN_ID": records.run_id, COMMAND_ID_VARIABLE: "another"},
            5002: {"GATEWAY_RUN_ID": records.run_id, "GATEWAY_PROGRAM_NAME": "app"},
            5003: {"GATEWAY_RUN_ID": "an earlier run", COMMAND_ID_VARIABLE: mark}})
        command.exit(0)
        self.assertNoResult(done)
        with capturedLogs() as events:
            while pending:
                pending.pop(0).callback(None)
        self.assertTrue(self.successResultOf(done).ok)
        self.assertEqual([pid for pid, signum in fake.signals if signum == signal.SIGKILL],
                         [command.pid, 5000])
        self.assertIn("apps: q 1 install.sh left 1 process group outside its own (setsid(): a daemon); killing it",
                      [formatEvent(e) for e in events])

        unnamed = run_command(fake, launcher, ("true",), Path("."), {"A": "1"}, 5.0)
        self.assertEqual(fake.last.env, {"A": "1"})
        fake.last.exit(0)
        self.assertEqual(pending, [])
        self.assertTrue(self.successResultOf(unnamed).ok)
