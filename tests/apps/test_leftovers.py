"""What a crashed gateway left running is found (never a process that merely reused a pid) and
stopped at the next start; a fake /proc and a fake clock."""

from __future__ import annotations

import errno
import json
import signal
from pathlib import Path
from typing import Any, Callable

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from gateway.apps import leftovers
from gateway.apps.leftovers import GroupRecord, GroupRecords, ProcessTable, leftover_groups
from gateway.apps.service import AppsService
from gateway.apps.settings import AppsSettings, ProgramSettings
from gateway.atomic import write_json_atomically
from tests.apps.fakes import FakeProcessReactor
from tests.steppingclock import SteppingClock

BOOT = "6f1c0e4e-boot"
RUN = "run-one"


def inline(work: Callable[[], Any]) -> Deferred[Any]:
    """Run blocking work at once."""
    return maybeDeferred(work)


class FakeProc:
    """A directory laid out like /proc: ``<pid>/stat``, ``<pid>/environ``, the boot id."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "sys" / "kernel" / "random").mkdir(parents=True)
        (root / "sys" / "kernel" / "random" / "boot_id").write_text(BOOT + "\n")

    def add(self, pid: int, group: int, start: int, env: dict[str, str] | None = None,
            name: str | bytes = "sleep", state: str = "S") -> None:
        directory = self.root / str(pid)
        directory.mkdir()
        # pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime
        # stime cutime cstime priority nice threads itrealvalue starttime ...
        fields = [state, "1", str(group), str(group)] + ["0"] * 15 + [str(start), "1000", "200"]
        comm = name if isinstance(name, bytes) else name.encode()
        directory.joinpath("stat").write_bytes(f"{pid} (".encode() + comm + f") {' '.join(fields)}\n".encode())
        environ = b"".join(f"{k}={v}".encode() + b"\0" for k, v in (env or {}).items())
        directory.joinpath("environ").write_bytes(environ)

    def remove(self, pid: int) -> None:
        for path in (self.root / str(pid)).iterdir():
            path.unlink()
        (self.root / str(pid)).rmdir()


class FindTests(SynchronousTestCase):
    """Which recorded groups still hold a process of the gateway's."""

    def setUp(self) -> None:
        self.proc = FakeProc(Path(self.mktemp()))
        self.table = ProcessTable(self.proc.root)
        self.records = {"worker": GroupRecord(500, 9000, BOOT, RUN)}

    def test_live_leader_with_its_start_time(self) -> None:
        """The group's leader, alive with the recorded start time, is a leftover."""
        self.proc.add(500, 500, 9000, {"GATEWAY_RUN_ID": RUN})
        self.assertEqual(leftover_groups(self.records, self.table), {"worker": 500})

    def test_grandchild_of_a_dead_leader(self) -> None:
        """With the leader gone, a process of the group carrying the run id is a leftover."""
        self.proc.add(612, 500, 9100, {"GATEWAY_RUN_ID": RUN, "PATH": "/bin"}, name="sleep (x) y")
        self.assertEqual(leftover_groups(self.records, self.table), {"worker": 500})

    def test_a_command_name_that_is_not_text_is_a_process_like_any(self) -> None:
        """The kernel keeps a command name's first 15 bytes, cutting a UTF-8 character
        (``app_温度传感器`` is ``app_温度传\\xe6\\x84``; any name under ``LC_ALL=C`` with
        ``PYTHONUTF8=0``): its ``stat`` did not decode, and the process was taken for gone, so
        the leftovers of a program so named were not stopped at the next start (and its group
        was not recorded at its spawn). Both the leader and a grandchild are found."""
        comm = "app_\u6e29\u5ea6\u4f20\u611f\u5668".encode()[:15]
        self.proc.add(500, 500, 9000, {"GATEWAY_RUN_ID": RUN}, name=comm)
        self.assertEqual(self.table.info(500), leftovers.ProcessInfo(500, 500, 9000, False))
        self.assertEqual(leftover_groups(self.records, self.table), {"worker": 500})
        self.proc.remove(500)
        self.proc.add(612, 500, 9100, {"GATEWAY_RUN_ID": RUN}, name=b"caf\xe9 ) (x")
        self.assertEqual(leftover_groups(self.records, self.table), {"worker": 500})

    def test_reused_pid_is_not_touched(self) -> None:
        """A process that got the leader's pid later (another start time, no run id) is not ours,
        nor is a process in a group of that number without the run id, nor one of another run."""
        self.proc.add(500, 500, 9999, {"PATH": "/bin"})
        self.proc.add(501, 500, 9999, {"GATEWAY_RUN_ID": "another-run"})
        self.assertEqual(leftover_groups(self.records, self.table), {})

    def test_leader_that_replaced_its_environment(self) -> None:
        """The leader is known by its start time even when its environment lacks the run id...
        but not when the environment names another run."""
        self.proc.add(500, 500, 9000, {})
        self.assertEqual(leftover_groups(self.records, self.table), {})
        self.proc.remove(500)
        self.proc.add(500, 500, 9000, {"HOME": "/root"})
        self.assertEqual(leftover_groups(self.records, self.table), {})

    def test_after_a_reboot_nothing_is_ours(self) -> None:
        """Records of another boot are ignored: their pids mean nothing now."""
        self.proc.add(500, 500, 9000, {"GATEWAY_RUN_ID": RUN})
        records = {"worker": GroupRecord(500, 9000, "another-boot", RUN)}
        self.assertEqual(leftover_groups(records, self.table), {})

    def test_zombies_are_not_leftovers(self) -> None:
        """A zombie waits to be reaped; it runs nothing."""
        self.proc.add(500, 500, 9000, {"GATEWAY_RUN_ID": RUN}, state="Z")
        self.assertEqual(leftover_groups(self.records, self.table), {})


class StopTests(SynchronousTestCase):
    """stop_leftovers: SIGTERM, SIGKILL after the grace period, record cleared."""

    def setUp(self) -> None:
        self.proc = FakeProc(Path(self.mktemp()))
        self.state = Path(self.mktemp())
        self.path = self.state / "apps" / "processes.json"
        self.path.parent.mkdir(parents=True)
        self.path.write_text(json.dumps({"worker": {"group": 500, "start": 9000, "boot": BOOT, "run": RUN}}))
        self.clock = Clock()
        self.signals: list[tuple[int, int]] = []
        self.records = GroupRecords(self.path, ProcessTable(self.proc.root), inline)

    def kill_group(self, group: int, signum: int) -> None:
        self.signals.append((group, signum))

    def test_leftover_that_stops_on_sigterm(self) -> None:
        """A leftover group gets SIGTERM; once it is gone the start goes on, and the record is
        cleared."""
        self.proc.add(500, 500, 9000, {"GATEWAY_RUN_ID": RUN})
        self.proc.add(501, 500, 9001, {"GATEWAY_RUN_ID": RUN})
        done = self.records.stop_leftovers(self.clock, self.kill_group)
        self.assertEqual(self.signals, [(500, signal.SIGTERM)])
        self.assertNoResult(done)
        self.proc.remove(500)
        self.proc.remove(501)
        self.clock.advance(0.1)
        self.assertEqual(self.successResultOf(done), ["worker"])
        self.assertEqual(self.signals, [(500, signal.SIGTERM)])
        self.assertEqual(json.loads(self.path.read_text()), {})

    def test_leftover_that_ignores_sigterm_is_killed(self) -> None:
        """A leftover still there after the grace period gets SIGKILL."""
        self.proc.add(612, 500, 9100, {"GATEWAY_RUN_ID": RUN})
        done = self.records.stop_leftovers(self.clock, self.kill_group, grace=3.0)
        self.clock.pump([0.1] * 29)
        self.assertEqual(self.signals, [(500, signal.SIGTERM)])
        self.clock.pump([0.1, 0.1])
        self.assertEqual(self.signals, [(500, signal.SIGTERM), (500, signal.SIGKILL)])
        self.proc.remove(612)
        self.clock.advance(0.1)
        self.successResultOf(done)

    def test_the_grace_period_across_a_step_of_the_wall_clock(self) -> None:
        """NTP steps the clock by a year while a leftover has its grace period: it still has
        the whole period before SIGKILL (docs/architecture.md "Clock steps")."""
        clock = SteppingClock()
        self.proc.add(612, 500, 9100, {"GATEWAY_RUN_ID": RUN})
        done = self.records.stop_leftovers(clock, self.kill_group, grace=3.0)
        clock.step(365 * 86400.0)
        clock.pump([0.1] * 29)
        self.assertEqual(self.signals, [(500, signal.SIGTERM)])
        self.proc.remove(612)
        clock.advance(0.1)
        self.successResultOf(done)
        self.assertEqual(self.signals, [(500, signal.SIGTERM)])

    def test_an_unusable_record_is_set_aside_and_told(self) -> None:
        """A record that is no JSON, JSON of another kind (an array, a number, null) or a
        directory in its place: one warning naming it, moved aside (so this run's record can
        be written), no signal sent."""
        for damage in (b"{", b"[1, 2]", b"42", b"null", None):
            if damage is None:
                self.path.mkdir()
            else:
                self.path.write_bytes(damage)
            with capturedLogs() as events:
                self.assertEqual(self.successResultOf(self.records.stop_leftovers(self.clock, self.kill_group)), [])
            [warning] = [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]
            self.assertIn(f"apps: cannot read {self.path} (", warning)
            self.assertIn(f"moved to {self.path}.damaged; not looking for leftovers", warning)
            aside = self.path.with_name(self.path.name + ".damaged")
            self.assertTrue(aside.exists(), damage)
            (aside.rmdir if aside.is_dir() else aside.unlink)()
            self.assertFalse(self.path.is_dir())
        self.assertEqual(self.signals, [])

    def test_nothing_left(self) -> None:
        """No leftovers: no signal, no wait."""
        self.proc.add(500, 500, 1234, {})
        self.assertEqual(self.successResultOf(self.records.stop_leftovers(self.clock, self.kill_group)), [])
        self.assertEqual(self.signals, [])


class ServiceTests(SynchronousTestCase):
    """AppsService records each program's group and stops a crashed run's leftovers before it
    starts anything."""

    def boot(self, reactor: FakeProcessReactor, state: Path) -> tuple[AppsService, Deferred[Any]]:
        settings = AppsSettings(programs={"web": ProgramSettings(command="web", startsecs=0)})
        service = AppsService(settings, state, reactor, "tcp:127.0.0.1:1883", kill_group=reactor.kill_group,
                              blocking=inline, threaded_logs=False, process_table=reactor.table)
        return service, maybeDeferred(service.startService)

    def test_crashed_run_is_stopped_before_the_new_one_starts(self) -> None:
        """The first run records web's group; it "crashes" (its process stays). The next start
        sends that group SIGTERM, waits until it is gone, and only then starts one web."""
        state = Path(self.mktemp())
        first = FakeProcessReactor()
        service, started = self.boot(first, state)
        self.successResultOf(started)
        old = first.last
        self.assertEqual(old.env["GATEWAY_RUN_ID"], service.groups.run_id)
        recorded = json.loads((state / "apps" / "processes.json").read_text())
        self.assertEqual(recorded["web"]["group"], old.pid)
        # The gateway dies; web (old) still runs. A new gateway starts on the same machine.
        second = FakeProcessReactor()
        second.table = first.table
        second._next_pid = 5000
        _, started = self.boot(second, state)
        self.assertEqual(second.signals, [(old.pid, signal.SIGTERM)])
        self.assertEqual(second.processes, [])
        self.assertNoResult(started)
        del first.table.live[old.pid]
        second.advance(0.1)
        self.successResultOf(started)
        self.assertEqual([p.command for p in second.processes], [["web"]])

    def test_clean_exit_is_forgotten(self) -> None:
        """A program whose main process exited is no longer recorded."""
        state = Path(self.mktemp())
        reactor = FakeProcessReactor()
        service, started = self.boot(reactor, state)
        self.successResultOf(started)
        stopped = service.stopService()
        reactor.last.exit(None, signal.SIGTERM)
        self.successResultOf(stopped)
        self.assertEqual(json.loads((state / "apps" / "processes.json").read_text()), {})


class RecordFailureTests(SynchronousTestCase):
    """A record the disk refuses (full, read-only) is said once, not at every start and exit."""

    def test_a_refused_record_is_one_line_until_it_works_again(self) -> None:
        """Each refused write was a critical log with a traceback: a crash-looping program on a
        full disk wrote two at every cycle (seen on a real gateway on a full tmpfs). Now the first
        failure is one error line naming the file, the next ones say nothing, and the first
        write that works again says so and records every program running then."""
        proc = FakeProc(Path(self.mktemp()))
        proc.add(500, 500, 9000, {})
        path = Path(self.mktemp()) / "apps" / "processes.json"
        records = GroupRecords(path, ProcessTable(proc.root), inline)

        def full(path: Path, value: Any) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        self.patch(leftovers, "write_json_atomically", full)
        with capturedLogs() as events:
            for _ in range(5):
                records.spawned("web", 500)
                records.ended("web", 500)
            records.spawned("web", 500)
        lines = [(e["log_level"], formatEvent(e)) for e in events]
        self.assertEqual(len(lines), 1, lines)
        self.assertEqual(lines[0][0], LogLevel.error)
        self.assertTrue(lines[0][1].startswith(f"apps: cannot record running programs in {path}: [Errno 28] No space"
                                               " left on device; "), lines[0][1])
        self.assertFalse(any("log_failure" in e for e in events))
        self.patch(leftovers, "write_json_atomically", write_json_atomically)  # the disk takes it again
        with capturedLogs() as events:
            records.ended("web", 500)
            records.spawned("web", 500)
        self.assertEqual([formatEvent(e) for e in events],
                         [f"apps: the running programs are recorded in {path} again, after 11 failed writes"])
        self.assertEqual(list(json.loads(path.read_text())), ["web"])


class EscapedTests(SynchronousTestCase):
    """What programs left outside their process groups, looked for in /proc."""

    def test_programs_that_stop_together_are_looked_for_in_one_pass(self) -> None:
        """The questions asked while a look at the processes is under way are answered together
        by the next look, each process's environment read once for all of them: a look for each
        program read every process's environment (twice) for each, so 100 programs stopping
        together (a stop, a configuration change) read 100 times every process on the machine.
        Each question still gets its own answer: the groups, other than its own, of the
        processes with its marks."""
        proc = FakeProc(Path(self.mktemp()))
        for index in range(20):
            proc.add(600 + index, 600 + index, 9000, {"GATEWAY_RUN_ID": RUN, "GATEWAY_PROGRAM_NAME": f"p{index}"})
        proc.add(700, 700, 9000, {"GATEWAY_RUN_ID": RUN, "GATEWAY_PROGRAM_NAME": "p3"})  # p3's daemon
        looks: list[Deferred[Any]] = []

        def later(work: Callable[[], Any]) -> Deferred[Any]:
            looks.append(Deferred())
            return looks[-1].addCallback(lambda _: work())

        read: list[Path] = []
        read_bytes = Path.read_bytes
        self.patch(Path, "read_bytes", lambda path: (read.append(path) if path.name == "environ" else None)
                   or read_bytes(path))
        records = GroupRecords(Path(self.mktemp()), ProcessTable(proc.root), later)
        answers = [records.escaped(600 + index, [f"GATEWAY_RUN_ID={RUN}".encode(),
                                                 f"GATEWAY_PROGRAM_NAME=p{index}".encode()])
                   for index in range(20)]
        self.assertEqual(len(looks), 1)  # the first question's look began at once
        looks[0].callback(None)
        self.assertEqual(self.successResultOf(answers[0]), set())
        self.assertEqual(len(looks), 2)  # the other 19 in one more look
        looks[1].callback(None)
        self.assertEqual([self.successResultOf(answer) for answer in answers[1:]],
                         [{700} if index == 3 else set() for index in range(1, 20)])
        self.assertEqual(len(looks), 2)
        self.assertEqual(len(read), 20 + 21)  # each process once a look (the first: all but the asker's own)
