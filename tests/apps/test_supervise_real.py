"""Supervision of real child processes: crash loop, process groups, log rotation."""

from __future__ import annotations

import os
import pwd
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SkipTest, TestCase

from gateway.apps.process import ProgramState
from gateway.apps.settings import ProgramSettings
from tests.apps.realtime import fast_settings, make_service, pid_alive, wait_until

PY = sys.executable


class RealProcessTests(TestCase):
    timeout = 30
    #: The state directory of the service :meth:`start` makes (a new one unless a test set it).
    state: Path | None = None

    def start(self, **programs: ProgramSettings) -> Any:
        if self.state is None:  # (else a test made and filled it first)
            self.state = Path(self.mktemp()).absolute()
            self.state.mkdir()
        self.service = make_service(self.state, fast_settings(programs=programs))
        self.addCleanup(lambda: self.service.stopService() if self.service.running else None)
        return self.service.startService()

    def program(self, name: str) -> Any:
        return self.service.supervisor.get(name)

    @inlineCallbacks
    def test_crash_loop_backs_off_to_fatal(self) -> None:
        """A program that exits at once is retried startretries times, then FATAL. (Its
        ``startsecs`` is long: an exit within it is a failed start, and ``sh`` taking over
        one second to exit on a loaded machine was a start that held, 7 restarts, not 3.)"""
        yield self.start(crash=ProgramSettings(
            command="sh -c 'exit 3'", startsecs=10, startretries=3))
        yield wait_until(lambda: self.program("crash").state is ProgramState.FATAL)
        status = self.program("crash").status()
        self.assertEqual((status.restarts, status.exitstatus), (3, 3))

    @inlineCallbacks
    def test_a_program_starts_with_sigpipe_at_its_default_action(self) -> None:
        """A program's write to a closed pipe ends it, as from a shell: the Python launcher
        left SIGPIPE ignored, which a non-interactive sh cannot even reset."""
        yield self.start(piped=ProgramSettings(command="sh -c 'kill -PIPE $$; exit 3'", startsecs=0,
                                               autorestart="false"))
        yield wait_until(lambda: self.program("piped").state is ProgramState.EXITED)
        self.assertEqual(self.program("piped").exitstatus, -13)

    @inlineCallbacks
    def test_stop_kills_grandchildren(self) -> None:
        """Stopping a program kills its whole process group, grandchildren included."""
        pidfile = Path(self.mktemp()).absolute()
        yield self.start(family=ProgramSettings(
            command=f"sh -c 'sleep 300 & echo $! > {pidfile}; wait'", startsecs=0))
        yield wait_until(lambda: pidfile.exists() and pidfile.read_text().strip() != "")
        grandchild = int(pidfile.read_text())
        leader = self.program("family").pid
        self.assertEqual(os.getpgid(leader), leader)
        self.assertEqual(os.getpgid(grandchild), leader)
        yield self.service.operations.stop("family")
        yield wait_until(lambda: not pid_alive(grandchild), timeout=5)
        self.assertIs(self.program("family").state, ProgramState.STOPPED)

    @inlineCallbacks
    def test_stubborn_program_is_killed(self) -> None:
        """A program that ignores SIGTERM is killed after stopwaitsecs."""
        ready = Path(self.mktemp()).absolute()
        yield self.start(stubborn=ProgramSettings(
            command=f"sh -c 'trap \"\" TERM; touch {ready}; while :; do sleep 0.1; done'",
            startsecs=0, stopwaitsecs=0.5))
        yield wait_until(ready.exists)
        yield self.service.operations.stop("stubborn")
        self.assertEqual(self.program("stubborn").exitstatus, -9)

    @inlineCallbacks
    def test_logs_rotate_by_size(self) -> None:
        """Output is captured and rotated at stdout_logfile_maxbytes, keeping backups."""
        script = "import sys\nfor i in range(3000): print('x' * 99)\nsys.stderr.write('err\\n')\n"
        yield self.start(chatty=ProgramSettings(
            command=f"{PY} -c \"{script}\"", startsecs=0, autorestart="false",
            stdout_logfile_maxbytes=65536, stdout_logfile_backups=2, redirect_stderr=True))
        logs = self.state / "logs" / "apps"

        def everything() -> str:
            # The writer thread may still be writing and rotating when the program has exited:
            # a file listed here can be renamed away before it is read (and before the first
            # write the folder may not exist yet).
            text = []
            for path in sorted(logs.iterdir()) if logs.is_dir() else []:
                try:
                    text.append(path.read_text())
                except FileNotFoundError:
                    pass
            return "".join(text)

        # stdout and stderr are separate pipes: "err" may land anywhere in the log.
        yield wait_until(lambda: self.program("chatty").state is ProgramState.EXITED
                         and "err\n" in everything())
        yield self.service.stopService()
        names = sorted(p.name for p in logs.iterdir())
        self.assertEqual(names, ["chatty.log", "chatty.log.1", "chatty.log.2"])
        for path in logs.iterdir():
            self.assertLessEqual(path.stat().st_size, 65536 + 65536)

    @inlineCallbacks
    def test_tail(self) -> None:
        """tail returns the last lines a program wrote."""
        yield self.start(echo=ProgramSettings(
            command="sh -c 'echo one; echo two; sleep 30'", startsecs=0))
        yield wait_until(lambda: (self.state / "logs/apps/echo.log").exists()
                         and b"two" in (self.state / "logs/apps/echo.log").read_bytes())
        lines = yield self.service.operations.tail("echo", 1)
        self.assertEqual(lines, ["two"])

    @inlineCallbacks
    def test_runs_as_user(self) -> None:
        """user= switches to that user when the gateway runs as root; the program keeps the
        oom_score_adj (500) the launcher gave it before, which the OOM killer reads."""
        if os.getuid() != 0:
            raise SkipTest("needs root")
        yield self.start(who=ProgramSettings(
            command="sh -c 'id -u; echo $USER; cat /proc/self/oom_score_adj; sleep 30'", startsecs=0, user="nobody"))
        log = self.state / "logs" / "apps" / "who.log"
        yield wait_until(lambda: log.exists() and log.read_text().count("\n") >= 3)
        self.assertEqual(log.read_text().split(), [str(pwd.getpwnam("nobody").pw_uid), "nobody", "500"])

    @inlineCallbacks
    def test_a_program_run_as_a_user_may_write_its_state_dir(self) -> None:
        """The app's state directory, made by the gateway (root), is given to the user a
        program runs as, with what it holds, so the program can keep its state there."""
        if os.getuid() != 0:
            raise SkipTest("needs root")
        # Under /tmp, where nobody can reach it: trial's temporary directories, and the copy
        # of the tests the package build runs, are 0700.
        self.state = Path(tempfile.mkdtemp(prefix="gw-user-state-"))
        self.state.chmod(0o755)
        self.addCleanup(shutil.rmtree, self.state, True)
        data = self.state / "apps" / "keeper" / "data"
        data.mkdir(parents=True)
        (data / "seed").write_text("from install.sh\n")
        yield self.start(keeper=ProgramSettings(
            command="sh -c 'cd \"$GATEWAY_APP_STATE_DIR\" && echo kept > mine && echo more >> seed && echo wrote;"
                    " sleep 30'", startsecs=0, user="nobody"))
        log = self.state / "logs" / "apps" / "keeper.log"
        yield wait_until(lambda: log.exists() and b"wrote" in log.read_bytes())
        nobody = pwd.getpwnam("nobody").pw_uid
        self.assertEqual([(data / "mine").read_text(), (data / "seed").read_text()], ["kept\n", "from install.sh\nmore\n"])
        self.assertEqual([data.stat().st_uid, (data / "seed").stat().st_uid, (data / "mine").stat().st_uid],
                         [nobody] * 3)
