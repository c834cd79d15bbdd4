"""The supervisor's state machine, driven by a fake process reactor and a fake clock."""

from __future__ import annotations

import errno
import os
import signal
import sys
from pathlib import Path
from typing import Callable

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.error import ProcessDone
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gateway.apps.leftovers import GroupRecords
from gateway.apps.logs import AppLogWriter
from gateway.apps.launch import LAUNCH
from gateway.apps.process import (ProcessLauncher, ProgramProcess, ProgramSpec, ProgramState, SpawnPlan,
                                   describe_exit)
from gateway.apps.settings import ProgramSettings
from tests.apps.fakes import FakeProcessReactor
from tests.logevents import capture_log_events
from tests.steppingclock import SteppingClock

S = ProgramState


def make(settings: ProgramSettings | None = None, **kw: object) -> tuple[
        ProgramProcess, FakeProcessReactor, list[ProgramState]]:
    """A program on a fake reactor, and the list of states it goes through."""
    reactor = FakeProcessReactor()
    settings = settings or ProgramSettings(command="app", **kw)  # type: ignore[arg-type]
    spec = ProgramSpec("app", "app", "1", settings, ("app",), Path("/tmp"), {"A": "1"},
                       None, None)
    states: list[ProgramState] = []
    process = ProgramProcess(spec, ProcessLauncher(reactor, reactor.kill_group), reactor,
                             AppLogWriter(10**6), 1.0, 8.0,
                             lambda p: states.append(p.state))
    return process, reactor, states


class StartTests(SynchronousTestCase):
    def test_start_spawns_in_own_session(self) -> None:
        """start() runs the argv behind the launcher (setsid, death with the gateway), with the
        spec's env and directory: the launcher changes to the directory, and Twisted is given
        none, so that it starts the launcher with posix_spawn, not a fork() of the gateway
        (Twisted forks for a child with a directory of its own: 15 ms a program in a gateway of
        90 MiB, on the event loop's thread)."""
        process, reactor, states = make()
        process.start()
        self.assertEqual(reactor.last.args,
                         [sys.executable, "-I", "-S", LAUNCH, str(os.getpid()), "", "", "", "", "", "/tmp", "app"])
        self.assertEqual(reactor.last.env, {"A": "1"})
        self.assertIsNone(reactor.last.path)
        self.assertTrue(reactor.last.stdin_closed)
        self.assertEqual(states, [S.STARTING])
        self.assertEqual(process.pid, reactor.last.pid)

    def test_the_process_limit_goes_to_the_launcher(self) -> None:
        """A launcher made with max_processes hands that RLIMIT_NPROC to the launcher script
        (docs/apps.md: a fork bomb fails its forks before the gateway's)."""
        reactor = FakeProcessReactor()
        spec = ProgramSpec("app", "app", "1", ProgramSettings(command="app"), ("app",), Path("/tmp"), {},
                           None, None)
        ProcessLauncher(reactor, reactor.kill_group, max_processes=3840).spawn(ProcessProtocol(), spec, SpawnPlan(None, None))
        self.assertEqual(reactor.last.args[4:7], [str(os.getpid()), "", "3840"])
        self.assertEqual(reactor.last.args[-1], "app")

    def test_running_after_startsecs(self) -> None:
        """A process up for startsecs is RUNNING; uptime counts from the spawn."""
        process, reactor, states = make(startsecs=2)
        process.start()
        reactor.advance(1.9)
        self.assertIs(process.state, S.STARTING)
        reactor.advance(0.1)
        self.assertIs(process.state, S.RUNNING)
        reactor.advance(5)
        self.assertEqual(process.status().uptime, 7)

    def test_uptime_is_whole_seconds(self) -> None:
        """A program's uptime is the whole seconds it has run, as ``GET /apps``' ``uptime_s`` and
        the engine_report's ``uptime`` say it (docs/containers.md, docs/admin.md): it was
        fractional (``1.95``) in the snapshot and the admin API, and rounded only in the report."""
        process, reactor, states = make(startsecs=1)
        process.start()
        reactor.advance(7.4)
        uptime = process.status().uptime
        self.assertEqual((uptime, type(uptime)), (7, int))
        reactor.advance(0.2)
        self.assertEqual(process.status().uptime, 8)  # (to the nearest, as the engine_report rounded it)

    def test_startsecs_zero_is_running_at_once(self) -> None:
        """startsecs=0 counts a start as RUNNING immediately."""
        process, reactor, states = make(startsecs=0)
        process.start()
        self.assertEqual(states, [S.STARTING, S.RUNNING])

    def test_quick_exit_backs_off_then_fatal(self) -> None:
        """Exits before startsecs wait 1, 2, 4 s in BACKOFF; after startretries: FATAL."""
        process, reactor, states = make(startretries=3)
        process.start()
        spawn_times = [reactor.seconds()]
        for delay in (1.0, 2.0, 4.0):
            reactor.last.exit(1)
            self.assertIs(process.state, S.BACKOFF)
            reactor.advance(delay - 0.01)
            self.assertIs(process.state, S.BACKOFF)
            reactor.advance(0.01)
            self.assertIs(process.state, S.STARTING)
            spawn_times.append(reactor.seconds())
        reactor.last.exit(1)
        self.assertIs(process.state, S.FATAL)
        self.assertEqual(spawn_times, [0, 1, 3, 7])
        self.assertEqual(len(reactor.processes), 4)
        self.assertEqual(process.restarts, 3)
        self.assertEqual(process.exitstatus, 1)

    def test_fatal_after_one_failed_start_says_one_time(self) -> None:
        """With startretries 0 the first failed start is FATAL, logged as ``failed to start 1
        time`` (it said ``1 times``); more failures are counted in the plural."""
        for retries, logged in ((0, "apps: app failed to start 1 time: FATAL"),
                                (1, "apps: app failed to start 2 times: FATAL")):
            process, reactor, _ = make(startretries=retries)
            process.start()
            with capturedLogs() as events:
                for _ in range(retries):
                    reactor.last.exit(1)
                    reactor.advance(1)
                reactor.last.exit(1)
            self.assertIs(process.state, S.FATAL)
            self.assertIn(logged, [formatEvent(e) for e in events])

    def test_backoff_is_capped(self) -> None:
        """The doubling delay stops at backoff_max."""
        process, reactor, _ = make(startretries=10)
        process.start()
        times = []
        for _ in range(6):
            reactor.last.exit(1)
            before = reactor.seconds()
            while process.state is not S.STARTING:
                reactor.advance(0.5)
            times.append(reactor.seconds() - before)
        self.assertEqual(times, [1, 2, 4, 8, 8, 8])

    def test_exit_reaped_inside_spawn(self) -> None:
        """A child reaped before spawnProcess returns backs off; no stale start timer."""
        process, reactor, _ = make(startretries=1)
        reactor.exit_during_spawn = 1
        process.start()
        self.assertIs(process.state, S.BACKOFF)
        self.assertEqual([c.getTime() for c in reactor.getDelayedCalls()], [1.0])
        self.assertIn((reactor.last.pid, signal.SIGKILL), reactor.signals)
        reactor.advance(1)
        self.assertIs(process.state, S.FATAL)
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_start_resets_fatal(self) -> None:
        """An operator's start after FATAL tries again with fresh counters."""
        process, reactor, _ = make(startretries=0)
        process.start()
        reactor.last.exit(1)
        self.assertIs(process.state, S.FATAL)
        process.start()
        self.assertIs(process.state, S.STARTING)

    def test_spawn_failure_counts_as_failed_start(self) -> None:
        """A spawn that raises (missing directory) backs off like a quick exit."""
        process, reactor, _ = make(startretries=1)
        reactor.spawn_error = OSError(2, "no such directory")
        process.start()
        self.assertIs(process.state, S.BACKOFF)
        reactor.advance(1)
        self.assertIs(process.state, S.FATAL)

    def test_gateway_out_of_descriptors_never_makes_it_fatal(self) -> None:
        """A spawn that fails for the gateway's own shortage (EMFILE: it is out of file
        descriptors; ENFILE, EAGAIN, ENOMEM) is no failed start of the program: it backs off
        (doubling up to ``backoff_max``) for as long as the shortage lasts, never FATAL, with
        one log line for the first failure and then at most one a minute, and starts by itself
        once the spawn works again, those spawns not counted against ``startretries``."""
        events = capture_log_events(self)
        process, reactor, states = make(startretries=1, startsecs=1)
        reactor.spawn_error = OSError(errno.EMFILE, "Too many open files")
        process.start()
        self.assertEqual((process.state, process.status().error),
                         (S.BACKOFF, "cannot spawn: [Errno 24] Too many open files (the gateway's own shortage:"
                                     " tried again until it passes)"))
        delays = []
        for _ in range(90):  # ten minutes and more out of descriptors
            before, tries = reactor.seconds(), states.count(S.STARTING)
            while states.count(S.STARTING) == tries:
                reactor.advance(0.5)
            delays.append(reactor.seconds() - before)
            self.assertIs(process.state, S.BACKOFF)
        self.assertEqual(delays[:5], [1.0, 2.0, 4.0, 8.0, 8.0])
        lines = [formatEvent(e) for e in events if "cannot spawn" in formatEvent(e)]
        self.assertLessEqual(len(lines), 1 + reactor.seconds() // 60 + 1, lines)
        self.assertEqual(lines[0], "apps: cannot spawn app: [Errno 24] Too many open files (the gateway's own shortage:"
                                   " tried again until it passes, every 8 s at most; logged at most once a minute)")
        self.assertIn("failed spawns since the last such line; logged at most once a minute)", lines[1])
        self.assertNotIn(S.FATAL, states)
        reactor.spawn_error = None
        reactor.advance(8)
        self.assertEqual((process.state, process.status().error), (S.STARTING, "cannot spawn: [Errno 24] Too many"
                                                                               " open files (the gateway's own shortage:"
                                                                               " tried again until it passes)"))
        reactor.last.exit(1)  # its own failed start after that: the first of startretries=1
        self.assertIs(process.state, S.BACKOFF)
        reactor.advance(1)
        reactor.advance(1)
        self.assertEqual((process.state, process.status().error), (S.RUNNING, ""))


class ErrorTests(SynchronousTestCase):
    """A program's ``error``: why its last start failed, as a container's says (docs/apps.md).
    A FATAL program said nothing of why; only the gateway's log did."""

    def test_quick_exits_say_how_and_before_what(self) -> None:
        """Backing off and FATAL after exits before startsecs: the exit and the startsecs."""
        process, reactor, _ = make(startretries=1, startsecs=1.5)
        process.start()
        self.assertEqual(process.status().error, "")
        reactor.last.exit(127)
        self.assertEqual((process.state, process.status().error), (S.BACKOFF, "exited with 127 before 1.5s"))
        reactor.advance(1)
        self.assertEqual((process.state, process.status().error), (S.STARTING, "exited with 127 before 1.5s"))
        reactor.last.exit(None, signal.SIGKILL)
        self.assertEqual((process.state, process.status().error), (S.FATAL, "killed by signal 9 before 1.5s"))

    def test_spawn_failures_say_why(self) -> None:
        """A directory that does not exist, or a user the system does not have."""
        process, reactor, _ = make(startretries=0)
        reactor.spawn_error = NotADirectoryError("its directory /nope does not exist")
        process.start()
        self.assertEqual((process.state, process.status().error),
                         (S.FATAL, "cannot spawn: its directory /nope does not exist"))
        reactor.spawn_error = KeyError("getpwnam(): name not found: 'sensor'")
        process.start()
        self.assertEqual(process.status().error, "cannot spawn: getpwnam(): name not found: 'sensor'")

    def test_an_environment_or_command_line_linux_would_refuse_is_never_spawned(self) -> None:
        """A program whose environment variable, argument, or whole command line and
        environment is larger than execve() takes (E2BIG) is not spawned: each start fails
        with an error naming the part too large (not its megabytes), until FATAL. The spawn
        succeeded instead and the forked child failed: Twisted's traceback, the whole argv in
        it, went into the program's stderr log at each retry, and the error said only
        'exited with 1'."""
        from gateway.apps.execsize import exec_limit

        page = os.sysconf("SC_PAGE_SIZE")
        for argv, env, why in [
                (("app",), {"BIG": "A" * (32 * page)}, "cannot spawn: [Errno 7] its environment variable BIG is"
                 f" {32 * page + 4} bytes, more than the {32 * page - 1} Linux takes in one"),
                (("app", "A" * (32 * page)), {}, "cannot spawn: [Errno 7] an argument of its command is"
                 f" {32 * page} bytes, more than the {32 * page - 1} Linux takes in one"),
                (("app",) + ("x" * 1000,) * (exec_limit() // 1000), {},
                 "cannot spawn: [Errno 7] its command line and environment are ")]:
            reactor = FakeProcessReactor()
            spec = ProgramSpec("app", "app", "1", ProgramSettings(command="app", startretries=1), argv,
                               Path("/tmp"), env, None, None)
            process = ProgramProcess(spec, ProcessLauncher(reactor, reactor.kill_group), reactor,
                                     AppLogWriter(10**6), 1.0, 8.0)
            with capturedLogs() as events:
                process.start()
                reactor.advance(1)
            self.assertEqual(reactor.processes, [])
            self.assertIs(process.state, S.FATAL)
            self.assertTrue(process.status().error.startswith(why), process.status().error)
            self.assertLess(len(process.status().error), 300)
            self.assertIn("apps: cannot spawn app: " + why[len("cannot spawn: "):], formatEvent(events[0]))

    def test_the_largest_environment_linux_takes_is_spawned(self) -> None:
        """The check refuses only what Linux refuses: a variable of 32 pages less its NUL and
        ``=`` is spawned."""
        page = os.sysconf("SC_PAGE_SIZE")
        reactor = FakeProcessReactor()
        spec = ProgramSpec("app", "app", "1", ProgramSettings(command="app"), ("app",), Path("/tmp"),
                           {"BIG": "A" * (32 * page - 5)}, None, None)
        process = ProgramProcess(spec, ProcessLauncher(reactor, reactor.kill_group), reactor,
                                 AppLogWriter(10**6), 1.0, 8.0)
        process.start()
        self.assertEqual((process.state, len(reactor.processes)), (S.STARTING, 1))

    def test_cleared_once_running_or_stopped(self) -> None:
        """A start that reaches RUNNING, or an operator's stop, ends the failure."""
        process, reactor, _ = make(startretries=3, startsecs=1)
        process.start()
        reactor.last.exit(2)
        reactor.advance(1)
        self.assertEqual(process.status().error, "exited with 2 before 1s")
        reactor.advance(1)
        self.assertEqual((process.state, process.status().error), (S.RUNNING, ""))
        reactor.last.exit(3)  # a RUNNING program that exits is no failed start
        self.assertEqual((process.state, process.status().error), (S.EXITED, ""))
        while process.state is not S.STARTING:
            reactor.advance(0.5)
        reactor.last.exit(2)
        self.assertEqual(process.state, S.BACKOFF)
        process.stop()
        self.assertEqual((process.state, process.status().error), (S.STOPPED, ""))


class ExitTests(SynchronousTestCase):
    def running(self, **kw: object) -> tuple[ProgramProcess, FakeProcessReactor, list[S]]:
        process, reactor, states = make(startsecs=1, **kw)
        process.start()
        reactor.advance(1)
        return process, reactor, states

    def test_unexpected_exit_restarts(self) -> None:
        """autorestart=unexpected restarts after an exit code not in exitcodes."""
        process, reactor, states = self.running(exitcodes=(0, 2))
        reactor.advance(100)
        reactor.last.exit(3)
        self.assertIs(process.state, S.EXITED)
        reactor.advance(0)
        self.assertIs(process.state, S.STARTING)
        self.assertEqual(process.restarts, 1)

    def test_expected_exit_stays_exited(self) -> None:
        """autorestart=unexpected leaves an expected exit code EXITED."""
        process, reactor, _ = self.running(exitcodes=(0, 2))
        reactor.last.exit(2)
        reactor.advance(100)
        self.assertIs(process.state, S.EXITED)
        self.assertEqual(len(reactor.processes), 1)

    def test_killed_by_signal_is_unexpected(self) -> None:
        """Death by a signal is unexpected and is reported as minus the signal."""
        process, reactor, _ = self.running()
        reactor.last.exit(None, signal.SIGSEGV)
        self.assertEqual(process.exitstatus, -signal.SIGSEGV)
        reactor.advance(1)
        self.assertEqual(len(reactor.processes), 2)

    def test_what_the_log_says_of_an_exit(self) -> None:
        """A program that ends on its own is a warning naming it, how it ended and where to
        look; one the gateway stopped is an info line. Before, both were the same info line
        with a raw status ("apps: app exited with -15 after 14.1s", seen on a real gateway
        for an upgrade's stop, and the same words for a crash)."""
        events = capture_log_events(self)
        process, reactor, _ = self.running()
        reactor.advance(2)
        reactor.last.exit(None, signal.SIGSEGV)
        reactor.advance(1)
        reactor.advance(1)  # (started again, running)
        done = process.stop()
        reactor.last.exit(None, signal.SIGTERM)
        self.successResultOf(done)
        lines = [(e["log_level"], formatEvent(e)) for e in events if "apps: app " in formatEvent(e)
                 and "spawned" not in formatEvent(e)]
        self.assertEqual(lines, [
            (LogLevel.warn, "apps: app killed by signal 11 (SIGSEGV) after 3.0s, on its own: see why in its log "
                            "(gatewayctl apps logs app)"),
            (LogLevel.info, "apps: app stopped after 1.0s: killed by signal 15 (SIGTERM)")])
        self.assertEqual(describe_exit(1), "exited with status 1")

    def test_a_crash_loop_is_logged_once_per_interval(self) -> None:
        """A program that keeps ending on its own soon after its start (a crash loop,
        autorestart) wrote a warning and a 'spawned' line at each restart, every backoff_max
        (60 s) for ever; now its first end, then one line every 10 minutes with how many
        ends it stands for, its restarts' lines held back with them. An end after a run of
        backoff_max or more is no crash loop: logged at once, as the line after an
        operator's start is."""
        events = capture_log_events(self)
        process, reactor, _ = self.running(autorestart="true")
        for _ in range(30):  # about 31 minutes
            reactor.advance(2)
            reactor.last.exit(3)
            reactor.advance(60)  # the restart's delay, at its cap
            reactor.advance(1)  # startsecs: running again
        ends = [formatEvent(e) for e in events if "on its own" in formatEvent(e)]
        spawned = [e for e in events if "spawned" in formatEvent(e)]
        self.assertEqual(len(ends), 3, ends)  # at about 0, 10 and 20 minutes
        self.assertEqual(ends[0], "apps: app exited with status 3 after 3.0s, on its own: see why in its log"
                                  " (gatewayctl apps logs app)")
        self.assertEqual(ends[1], "apps: app exited with status 3 after 3.0s, on its own: see why in its log"
                                  " (gatewayctl apps logs app) (10 times since the last such line: a crash loop,"
                                  " logged at most once every 10 minutes while it goes on)")
        self.assertEqual(len(spawned), 1 + 3)  # the first start, and the restart after each line
        del events[:]
        reactor.advance(120)  # a run long enough: its end is news
        reactor.last.exit(3)
        self.assertEqual(len([e for e in events if "on its own" in formatEvent(e)]), 1)

    def test_autorestart_false(self) -> None:
        """autorestart=false never restarts."""
        process, reactor, _ = self.running(autorestart="false")
        reactor.last.exit(1)
        reactor.advance(100)
        self.assertIs(process.state, S.EXITED)

    def test_autorestart_true_restarts_clean_exit(self) -> None:
        """autorestart=true restarts even after exit 0."""
        process, reactor, _ = self.running(autorestart="true")
        reactor.advance(60)
        reactor.last.exit(0)
        reactor.advance(0)
        self.assertIs(process.state, S.STARTING)

    def test_crash_loop_after_running_backs_off(self) -> None:
        """A program that keeps dying soon after RUNNING waits 1, 2, 4 s between starts."""
        process, reactor, _ = self.running(autorestart="true")
        gaps = []
        for _ in range(4):
            reactor.last.exit(1)
            before = reactor.seconds()
            count = len(reactor.processes)
            while len(reactor.processes) == count:
                reactor.advance(0.25)
            gaps.append(reactor.seconds() - before)
            reactor.advance(1)
        self.assertEqual(gaps, [1, 2, 4, 8])

    def test_a_crash_loop_of_days_is_still_restarted(self) -> None:
        """The restart delay doubled without bound before it was capped: after 1025 quick
        exits in a row (17 hours of a crash loop at a 60 s cap), 2 ** 1024 no longer made a
        float, the exit's handling raised OverflowError and the program was never restarted
        again. It is restarted every ``backoff_max`` seconds for as long as the loop lasts."""
        process, reactor, _ = self.running(autorestart="true")
        for _ in range(1100):
            reactor.last.exit(1)
            self.assertIs(process.state, S.EXITED)
            reactor.advance(8)  # the delay, at its cap
            reactor.advance(1)
            self.assertIs(process.state, S.RUNNING)

    def test_steps_of_the_wall_clock_move_neither_uptime_nor_backoff(self) -> None:
        """NTP steps the clock of a gateway booted at 1970 forward by 56 years while a program
        runs: its uptime is the time it ran (it was 56 years), and a crash 3 s after the start
        is still a crash loop, restarted after the backoff (it counted as a long run and
        restarted at once); stepped back an hour, the uptime does not go negative."""

        class SteppingProcessReactor(FakeProcessReactor, SteppingClock):
            pass

        reactor = SteppingProcessReactor()
        spec = ProgramSpec("app", "app", "1", ProgramSettings(command="app", startsecs=1, autorestart="true"),
                           ("app",), Path("/tmp"), {}, None, None)
        process = ProgramProcess(spec, ProcessLauncher(reactor, reactor.kill_group), reactor,
                                 AppLogWriter(10**6), 1.0, 8.0, lambda p: None)
        process.start()
        reactor.advance(2)
        reactor.step(56 * 365 * 86400.0)
        reactor.advance(1)
        self.assertEqual(process.status().uptime, 3)
        count = len(reactor.processes)
        reactor.last.exit(1)
        reactor.advance(0.5)
        self.assertEqual(len(reactor.processes), count)  # waiting out the backoff
        reactor.advance(0.5)
        self.assertEqual(len(reactor.processes), count + 1)
        reactor.advance(2)
        reactor.step(-3600.0)
        self.assertEqual(process.status().uptime, 2)

    def test_exit_kills_leftover_group(self) -> None:
        """When the main process ends, its process group is killed."""
        process, reactor, _ = self.running()
        pid = reactor.last.pid
        reactor.last.exit(1)
        self.assertIn((pid, signal.SIGKILL), reactor.signals)


class StopTests(SynchronousTestCase):
    def test_stop_sends_stopsignal_to_group(self) -> None:
        """stop() signals the group and fires only after the process exits."""
        process, reactor, states = make(stopsignal="INT")
        process.start()
        reactor.advance(1)
        done = process.stop()
        self.assertEqual(reactor.signals, [(reactor.last.pid, signal.SIGINT)])
        self.assertIs(process.state, S.STOPPING)
        self.assertNoResult(done)
        reactor.last.exit(None, signal.SIGINT)
        self.successResultOf(done)
        self.assertIs(process.state, S.STOPPED)
        reactor.advance(100)
        self.assertEqual(len(reactor.processes), 1)

    def test_stop_escalates_to_kill(self) -> None:
        """A process that ignores stopsignal gets SIGKILL after stopwaitsecs."""
        process, reactor, _ = make(stopwaitsecs=5)
        process.start()
        done = process.stop()
        pid = reactor.last.pid
        reactor.advance(4.9)
        self.assertEqual(reactor.signals, [(pid, signal.SIGTERM)])
        reactor.advance(0.1)
        self.assertEqual(reactor.signals, [(pid, signal.SIGTERM), (pid, signal.SIGKILL)])
        self.assertNoResult(done)
        reactor.last.exit(None, signal.SIGKILL)
        self.successResultOf(done)

    def test_kill_while_stopping_does_not_wait_for_stopwaitsecs(self) -> None:
        """kill() (the gateway's stop outlasted gateway.shutdown_timeout) sends SIGKILL to the
        group of a program still stopping at once, not after stopwaitsecs; its stop fires once
        it has exited, and nothing restarts it."""
        process, reactor, _ = make(stopwaitsecs=10, autorestart="true")
        process.start()
        reactor.advance(1)
        done = process.stop()
        pid = reactor.last.pid
        process.kill()
        self.assertEqual(reactor.signals, [(pid, signal.SIGTERM), (pid, signal.SIGKILL)])
        self.assertEqual(reactor.getDelayedCalls(), [], "no second SIGKILL is scheduled")
        reactor.last.exit(None, signal.SIGKILL)
        self.successResultOf(done)
        self.assertIs(process.state, S.STOPPED)
        reactor.advance(100)
        self.assertEqual(len(reactor.processes), 1)

    def test_kill_of_a_running_program_stops_it(self) -> None:
        """kill() of a program not yet stopping stops it the same way: no restart follows."""
        process, reactor, _ = make(autorestart="true")
        process.start()
        reactor.advance(1)
        pid = reactor.last.pid
        process.kill()
        self.assertEqual(reactor.signals, [(pid, signal.SIGTERM), (pid, signal.SIGKILL)])
        self.assertIs(process.state, S.STOPPING)
        reactor.last.exit(None, signal.SIGKILL)
        self.assertIs(process.state, S.STOPPED)
        reactor.advance(100)
        self.assertEqual(len(reactor.processes), 1)

    def test_kill_when_stopped_signals_nothing(self) -> None:
        """kill() of a program with no process signals nothing."""
        process, reactor, _ = make()
        process.kill()
        self.assertEqual(reactor.signals, [])

    def test_stop_in_backoff_cancels_retry(self) -> None:
        """Stopping during BACKOFF cancels the retry and goes STOPPED."""
        process, reactor, _ = make()
        process.start()
        reactor.last.exit(1)
        self.successResultOf(process.stop())
        self.assertIs(process.state, S.STOPPED)
        reactor.advance(100)
        self.assertEqual(len(reactor.processes), 1)

    def test_a_stop_by_an_observer_of_its_end_drops_the_restart(self) -> None:
        """A stop from an observer of the change its end on its own makes (the install's health
        gate fails on EXITED or BACKOFF and its rollback stops the program there and then) leaves
        no restart behind: the restart was scheduled after the observers ran, and spawned the
        stopped (removed) version's program again a second later."""
        ends = {"exited after running": ({"autorestart": "true", "startsecs": 0}, None),
                "exited before startsecs": ({"startsecs": 5}, None),
                "no descriptors to spawn it": ({"startsecs": 5}, OSError(errno.EMFILE, "Too many open files"))}
        for why, (knobs, spawn_error) in ends.items():
            reactor = FakeProcessReactor()
            spec = ProgramSpec("app", "app", "1", ProgramSettings(command="app", **knobs),  # type: ignore[arg-type]
                               ("app",), Path("/tmp"), {}, None, None)
            stops: list[Deferred[None]] = []

            def stop_at_its_end(process: ProgramProcess) -> None:
                if process.state in (S.EXITED, S.BACKOFF) and not stops:
                    stops.append(process.stop())

            process = ProgramProcess(spec, ProcessLauncher(reactor, reactor.kill_group), reactor,
                                     AppLogWriter(10**6), 1.0, 8.0, stop_at_its_end)
            if spawn_error is not None:
                reactor.spawn_error = spawn_error
            process.start()
            if spawn_error is None:
                reactor.advance(3)
                reactor.last.exit(1)
            self.successResultOf(stops[0])
            reactor.advance(100)
            self.assertEqual((process.state, len(reactor.processes)), (S.STOPPED, 0 if spawn_error else 1), why)

    def test_stop_when_stopped(self) -> None:
        """Stopping a stopped program succeeds at once and signals nothing."""
        process, reactor, _ = make()
        self.successResultOf(process.stop())
        self.assertEqual(reactor.signals, [])

    def test_start_while_stopping_is_ignored(self) -> None:
        """start() during STOPPING does not spawn a second process."""
        process, reactor, _ = make()
        process.start()
        process.stop()
        process.start()
        self.assertEqual(len(reactor.processes), 1)


class EscapedDaemonTests(SynchronousTestCase):
    """What a program started that left its process group with setsid() (a daemon) is killed
    when the program is stopped: a stop, restart, uninstall or update left it running, its
    group was all the gateway signalled (seen with a real gateway: ``sleep`` started after
    ``setsid()`` outlived ``gatewayctl apps uninstall``)."""

    def make(self, tmp: str, blocking: Callable[..., Deferred[object]] = maybeDeferred,
             **settings: object) -> tuple[ProgramProcess, FakeProcessReactor, GroupRecords]:
        reactor = FakeProcessReactor()
        records = GroupRecords(Path(tmp), reactor.table, blocking)  # type: ignore[arg-type]
        knobs = ProgramSettings(command="app", **{"startsecs": 0, **settings})  # type: ignore[arg-type]
        spec = ProgramSpec("app", "app", "1", knobs, ("app",),
                           Path("/tmp"), {"GATEWAY_PROGRAM_NAME": "app"}, None, None)
        process = ProgramProcess(spec, ProcessLauncher(reactor, reactor.kill_group, records=records),
                                 reactor, AppLogWriter(10**6), 1.0, 8.0)
        return process, reactor, records

    def test_a_stop_kills_the_daemons_it_started(self) -> None:
        """Processes whose environment holds this run's GATEWAY_RUN_ID and the program's
        GATEWAY_PROGRAM_NAME get SIGKILL to their group once the program has exited, before
        the stop fires; another program's, or another run's, are left alone."""
        process, reactor, records = self.make(self.mktemp())
        process.start()
        main = reactor.last
        ours = {"GATEWAY_RUN_ID": records.run_id, "GATEWAY_PROGRAM_NAME": "app"}
        reactor.table.live.update({
            5000: ours, 5001: {**ours, "GATEWAY_PROGRAM_NAME": "other"},
            5002: {**ours, "GATEWAY_RUN_ID": "an earlier run"}, 5003: {}})
        stopped = process.stop()
        self.assertEqual(reactor.signals, [(main.pid, signal.SIGTERM)])
        with capturedLogs() as events:
            main.exit(None, signal.SIGTERM)
        self.assertEqual(reactor.signals[1:], [(main.pid, signal.SIGKILL), (5000, signal.SIGKILL)])
        self.successResultOf(stopped)
        self.assertIs(process.state, S.STOPPED)
        self.assertIn("apps: app left 1 process group outside its own (setsid(): a daemon); killing it",
                      [formatEvent(e) for e in events])

    def test_a_crash_loop_leaving_daemons_is_said_with_its_ends_lines(self) -> None:
        """A program that starts a daemon and ends on its own soon after, for ever (a crash
        loop), has each daemon killed, but the warning that says so only with the end's own
        line (the first, then at most one every 10 minutes): it was a warning at every
        restart, every backoff_max, for ever."""
        process, reactor, records = self.make(self.mktemp(), autorestart="true")
        process.start()
        with capturedLogs() as events:
            for n in range(70):  # about 12 minutes at a backoff_max of 8 s
                reactor.table.live[6000 + n] = {"GATEWAY_RUN_ID": records.run_id, "GATEWAY_PROGRAM_NAME": "app"}
                reactor.advance(2)
                reactor.last.exit(1)
                reactor.table.live.pop(6000 + n)
                reactor.advance(8)
        self.assertEqual(len([n for n in range(70) if (6000 + n, signal.SIGKILL) in reactor.signals]), 70)
        lines = [formatEvent(e) for e in events]
        ends = [line for line in lines if "on its own" in line]
        left = [line for line in lines if "outside its own" in line]
        self.assertEqual(len(ends), 2, ends)
        self.assertEqual(left, ["apps: app left 1 process group outside its own (setsid(): a daemon); killing it"] * 2)

    def test_a_stop_after_it_ended_on_its_own_kills_them_too(self) -> None:
        """A program whose main process ended by itself (EXITED, FATAL) is looked through again
        when it is stopped (an uninstall does): a daemon the look at its end missed is killed
        then; nothing starts it meanwhile."""
        process, reactor, records = self.make(self.mktemp())
        process.start()
        reactor.last.exit(0)
        self.assertIs(process.state, S.EXITED)
        reactor.table.live[5000] = {"GATEWAY_RUN_ID": records.run_id, "GATEWAY_PROGRAM_NAME": "app"}
        self.successResultOf(process.stop())
        self.assertIn((5000, signal.SIGKILL), reactor.signals)
        self.assertIs(process.state, S.STOPPED)

    def test_an_end_on_its_own_kills_them_before_the_restart(self) -> None:
        """A program that crashes (or exits) on its own has what it started outside its group
        killed at once, with one warning, not only at its stop: with autorestart each crash
        left one more copy of its daemon running beside the next run's. The restart's delay is
        unchanged; a quick exit before startsecs (BACKOFF) is looked through alike."""
        process, reactor, records = self.make(self.mktemp(), autorestart="true")
        process.start()
        reactor.table.live[5000] = {"GATEWAY_RUN_ID": records.run_id, "GATEWAY_PROGRAM_NAME": "app"}
        reactor.advance(3)
        with capturedLogs() as events:
            reactor.last.exit(1)
        self.assertIn((5000, signal.SIGKILL), reactor.signals)
        self.assertIn("apps: app left 1 process group outside its own (setsid(): a daemon); killing it",
                      [formatEvent(e) for e in events])
        self.assertIs(process.state, S.EXITED)
        reactor.advance(0.99)
        self.assertEqual(len(reactor.processes), 1)
        reactor.advance(0.01)  # (1 s: a run shorter than backoff_max, as without the look)
        self.assertEqual((process.state, len(reactor.processes)), (S.RUNNING, 2))

        backoff, reactor, records = self.make(self.mktemp(), startsecs=5)
        backoff.start()
        reactor.table.live[5000] = {"GATEWAY_RUN_ID": records.run_id, "GATEWAY_PROGRAM_NAME": "app"}
        reactor.last.exit(1)
        self.assertIs(backoff.state, S.BACKOFF)
        self.assertIn((5000, signal.SIGKILL), reactor.signals)

    def test_the_restart_waits_for_the_look(self) -> None:
        """The restart after an end on its own (and an operator's start meanwhile) waits for the
        look off the reactor thread: started before it, the next run would be found by it (the
        same run id and name, another group) and killed. A stop meanwhile drops the restart."""
        pending: list[Deferred[object]] = []

        def later(work: Callable[[], object]) -> Deferred[object]:
            done: Deferred[object] = Deferred()
            pending.append(done)
            return done.addCallback(lambda _: work())

        def finish_looks() -> None:
            while pending:
                pending.pop(0).callback(None)

        process, reactor, records = self.make(self.mktemp(), later, autorestart="true")
        process.start()
        finish_looks()  # (the record of its group)
        reactor.advance(3)
        reactor.last.exit(1)
        reactor.advance(10)
        self.assertEqual((process.state, len(reactor.processes)), (S.EXITED, 1))
        process.start()
        self.assertEqual(len(reactor.processes), 1)
        finish_looks()
        self.assertEqual((process.state, len(reactor.processes)), (S.RUNNING, 2))
        self.assertEqual([pid for pid, signum in reactor.signals if signum == signal.SIGKILL],
                         [reactor.processes[0].pid])

        reactor.advance(3)
        reactor.last.exit(1)
        stopped = process.stop()
        self.assertNoResult(stopped)
        finish_looks()
        self.successResultOf(stopped)
        reactor.advance(60)
        self.assertEqual((process.state, len(reactor.processes)), (S.STOPPED, 2))

    def test_the_stop_waits_for_the_look(self) -> None:
        """The stop fires, and the program is STOPPED (a start waits), only once the look
        through the processes, off the reactor thread, is done."""
        reactor = FakeProcessReactor()
        pending: list[Deferred[object]] = []

        def later(work: Callable[[], object]) -> Deferred[object]:
            done: Deferred[object] = Deferred()
            pending.append(done)
            return done.addCallback(lambda _: work())

        records = GroupRecords(Path(self.mktemp()), reactor.table, later)  # type: ignore[arg-type]
        spec = ProgramSpec("app", "app", "1", ProgramSettings(command="app", startsecs=0), ("app",),
                           Path("/tmp"), {}, None, None)
        process = ProgramProcess(spec, ProcessLauncher(reactor, reactor.kill_group, records=records),
                                 reactor, AppLogWriter(10**6), 1.0, 8.0)
        process.start()
        while pending:  # (the record of its group)
            pending.pop(0).callback(None)
        stopped = process.stop()
        reactor.last.exit(None, signal.SIGTERM)
        self.assertNoResult(stopped)
        process.start()
        self.assertEqual((process.state, len(reactor.processes)), (S.STOPPING, 1))
        while pending:
            pending.pop(0).callback(None)
        self.successResultOf(stopped)
        self.assertIs(process.state, S.STOPPED)


class LauncherTests(SynchronousTestCase):
    def test_signal_before_setsid_reaches_the_process(self) -> None:
        """A child that has no group yet (pre-setsid) gets the signal directly."""
        import errno

        sent: list[tuple[int, int]] = []

        def no_group(pid: int, signum: int) -> None:
            raise OSError(errno.ESRCH, "no such group")

        launcher = ProcessLauncher(FakeProcessReactor(), no_group,
                                   lambda pid, sig: sent.append((pid, sig)))
        launcher.signal_group(42, signal.SIGTERM)
        self.assertEqual(sent, [(42, signal.SIGTERM)])


class DrainTests(SynchronousTestCase):
    def test_drained_waits_for_pipes(self) -> None:
        """drained() fires when the pipes close, not when the process is reaped."""
        process, reactor, _ = make()
        process.start()
        reactor.last.protocol.processExited(Failure(ProcessDone(0)))
        waiting = process.drained()
        self.assertNoResult(waiting)
        reactor.last.protocol.processEnded(Failure(ProcessDone(0)))
        self.successResultOf(waiting)

    def test_drained_gives_up(self) -> None:
        """drained() stops waiting for pipes an escaped daemon holds open."""
        process, reactor, _ = make()
        process.start()
        waiting = process.drained(timeout=2)
        reactor.advance(2)
        self.successResultOf(waiting)
