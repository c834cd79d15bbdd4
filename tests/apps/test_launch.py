"""The launcher's steps: the oom_score_adj it gives a program, the directory it changes to, the
signals it starts with."""

from __future__ import annotations

import io
import os
import signal
import subprocess
from pathlib import Path
from unittest import mock

from twisted.trial.unittest import SynchronousTestCase

from gateway.apps.launch import OOM_SCORE_ADJ, launch_command, raise_oom_score_adj, read_oom_score_adj


class RaiseOomScoreAdjTests(SynchronousTestCase):
    """A program runs with an oom_score_adj of at least 500, so the OOM killer takes it first."""

    def adjusted(self, before: str) -> str:
        path = Path(self.mktemp())
        path.write_text(before)
        raise_oom_score_adj(str(path))
        return path.read_text()

    def test_a_lower_value_is_raised(self) -> None:
        """The gateway's 0 (or the unit's negative OOMScoreAdjust) becomes 500."""
        self.assertEqual(OOM_SCORE_ADJ, 500)
        self.assertEqual(self.adjusted("0\n"), "500")
        self.assertEqual(self.adjusted("-100\n"), "500")

    def test_a_higher_value_stays(self) -> None:
        """One an operator set higher for the gateway, which the program inherits, is kept."""
        self.assertEqual(self.adjusted("800\n"), "800\n")

    def test_the_one_reader(self) -> None:
        """read_oom_score_adj (also the containers' reader) gives the number, or raises: no file
        (not Linux), or no number in it."""
        path = Path(self.mktemp())
        path.write_text("-100\n")
        self.assertEqual(read_oom_score_adj(str(path)), -100)
        path.write_text("")
        self.assertRaises(ValueError, read_oom_score_adj, str(path))
        self.assertRaises(FileNotFoundError, read_oom_score_adj, str(Path(self.mktemp()) / "missing"))

    def test_no_such_file_does_nothing(self) -> None:
        """Where Linux's file does not exist (not Linux), nothing happens and nothing is said."""
        with mock.patch("sys.stderr", io.StringIO()) as stderr:
            raise_oom_score_adj(str(Path(self.mktemp()) / "missing"))
        self.assertEqual(stderr.getvalue(), "")

    def test_a_failure_is_written_to_the_programs_stderr(self) -> None:
        """A file that cannot be read or written is said on stderr (the program's log); the
        program runs all the same (no exception)."""
        path = Path(self.mktemp())
        path.mkdir()
        with mock.patch("sys.stderr", io.StringIO()) as stderr:
            raise_oom_score_adj(str(path))
        self.assertIn("gateway launcher: cannot raise its oom_score_adj to 500", stderr.getvalue())


class DirectoryTests(SynchronousTestCase):
    """The launcher changes to the program's directory itself (Twisted is given none, so that
    it starts the launcher with posix_spawn rather than a fork() of the gateway)."""

    def launch(self, directory: str, *command: str) -> subprocess.CompletedProcess[str]:
        executable, args = launch_command(list(command), directory=directory)
        self.assertEqual(args[4], str(os.getpid()))
        return subprocess.run(args, executable=executable, capture_output=True, text=True, timeout=30,
                              cwd=os.getcwd(), env={"PATH": os.environ["PATH"]})

    def test_the_command_runs_in_its_directory(self) -> None:
        """The command runs in the directory given, whatever the gateway's is."""
        directory = Path(self.mktemp()).resolve()
        directory.mkdir(parents=True)
        done = self.launch(str(directory), "pwd")
        self.assertEqual((done.returncode, done.stdout.strip()), (0, str(directory)))

    def test_a_directory_it_cannot_change_to_is_said_and_nothing_runs(self) -> None:
        """A directory that went away since the gateway looked: the launcher says so on the
        program's stderr and exits 126, running nothing."""
        missing = str(Path(self.mktemp()).resolve() / "gone")
        done = self.launch(missing, "echo", "ran")
        self.assertEqual((done.returncode, done.stdout), (126, ""))
        self.assertEqual(done.stderr, f"cannot change to the directory {missing}: No such file or directory\n")


class SignalTests(SynchronousTestCase):
    """A program starts with SIGPIPE and SIGXFSZ at their default action, as from a shell: the launcher is
    Python, which ignores SIGPIPE and SIGXFSZ from its start, and an ignored signal would stay
    ignored across its exec (a non-interactive sh cannot even reset it)."""

    def test_sigpipe_and_sigxfsz_end_the_program(self) -> None:
        """A shell that sends itself SIGPIPE (a closed pipe's write) or SIGXFSZ ends by it."""
        for name in ("PIPE", "XFSZ"):
            executable, args = launch_command(["sh", "-c", f"kill -{name} $$; echo ignored"])
            done = subprocess.run(args, executable=executable, capture_output=True, text=True, timeout=30,
                                  env={"PATH": os.environ["PATH"]})
            self.assertEqual((name, done.returncode, done.stdout), (name, -getattr(signal, f"SIG{name}"), ""))

    def test_a_pipeline_ends_when_its_reader_has_read_enough(self) -> None:
        """``sh -c "yes | head -1"`` (apps.md's way to run a pipeline) ends: ``yes`` dies of
        SIGPIPE, with no ``Broken pipe`` error in the program's stderr log."""
        executable, args = launch_command(["sh", "-c", "yes | head -n 1"])
        done = subprocess.run(args, executable=executable, capture_output=True, text=True, timeout=30,
                              env={"PATH": os.environ["PATH"]})
        self.assertEqual((done.returncode, done.stdout, done.stderr), (0, "y\n", ""))
