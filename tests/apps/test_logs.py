"""Log rotation by size, the global cap, dropped output, and tailing."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway.admin.logstream import read_from
from gateway.apps.logs import AppLogWriter, RotatingLog, tail_bytes, tail_file, tail_to_end


#: Modification times: a day in 2026 (the clock set) and one at 1970 (not set yet).
SET, UNSET = 1780000000.0, 86400.0


class RotationTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp())

    def test_rotates_at_maxbytes_and_keeps_backups(self) -> None:
        """Reaching maxbytes rotates to .1, .2 ...; only `backups` files are kept."""
        writer = AppLogWriter(10**9)
        target = writer.open(self.dir / "a.log", 1024, 2)
        for index in range(5):
            writer.write(target, bytes([65 + index]) * 1024)
        writer.release(target)
        self.assertFalse((self.dir / "a.log").exists())
        self.assertEqual((self.dir / "a.log.1").read_bytes(), b"E" * 1024)
        self.assertEqual((self.dir / "a.log.2").read_bytes(), b"D" * 1024)
        self.assertFalse((self.dir / "a.log.3").exists())

    def test_zero_backups_truncates(self) -> None:
        """With no backups the file is truncated when full."""
        target = RotatingLog(self.dir / "b.log", 1024, 0)
        target.write(b"x" * 1500)
        target.write(b"y")
        target.close()
        self.assertEqual((self.dir / "b.log").read_bytes(), b"y")

    def test_zero_maxbytes_never_rotates(self) -> None:
        """``stdout_logfile_maxbytes = 0`` means no size limit, as under supervisord (a GWE
        supervisor.conf runs unchanged); every write used to rotate the file. (Only the cap on
        all logs rotates it: see the next test.)"""
        writer = AppLogWriter(10**6)
        target = writer.open(self.dir / "c.log", 0, 2)
        for line in (b"one\n", b"two\n", b"three\n"):
            writer.write(target, line)
        writer.release(target)
        self.assertEqual((self.dir / "c.log").read_bytes(), b"one\ntwo\nthree\n")
        self.assertEqual(sorted(self.dir.iterdir()), [self.dir / "c.log"])

    def test_global_cap_deletes_oldest_backups(self) -> None:
        """Over the global cap, the oldest rotated files of any app go first."""
        writer = AppLogWriter(5000)
        first = writer.open(self.dir / "one.log", 1024, 5)
        second = writer.open(self.dir / "two.log", 1024, 5)
        for _ in range(4):
            writer.write(first, b"1" * 1024)
        for _ in range(4):
            writer.write(second, b"2" * 1024)
        total = sum(p.stat().st_size for p in self.dir.iterdir())
        self.assertLessEqual(total, 5000)
        self.assertFalse((self.dir / "one.log.4").exists())
        self.assertTrue((self.dir / "two.log.1").exists())

    def test_a_log_without_a_limit_of_its_own_is_held_by_the_cap(self) -> None:
        """A program whose ``stdout_logfile_maxbytes`` is 0 (no limit of its own, supervisord's
        meaning) that writes without end keeps its logs under ``apps.logs_max_total_bytes`` (and
        one write): its file is rotated when it reaches the cap, and the cap deletes the
        rotated file; so is one whose own limit is over the cap. The file grew without end (or
        to its own limit): one flooding app filled the disk the journal needs."""
        for maxbytes, backups in [(0, 2), (0, 0), (10**6, 1)]:
            directory = self.dir / f"{maxbytes}-{backups}"
            writer = AppLogWriter(5000)
            flood = writer.open(directory / "flood.log", maxbytes, backups)
            for _ in range(20):
                writer.write(flood, b"x" * 1000)
            total = sum(p.stat().st_size for p in directory.iterdir())
            self.assertLessEqual(total, 5000 + 1000, (maxbytes, backups))

    def test_a_log_path_that_is_no_regular_file_is_written_never_moved_nor_deleted(self) -> None:
        """A ``stdout_logfile`` that names something other than a regular file of its own (a
        link to ``/dev/null``, as ``/dev/stdout`` is one; a device; a named pipe) is written as
        it is, never rotated, and an uninstall does not delete it. It was renamed to ``.1`` at
        the first rotation and a regular file made in its place, then deleted with the app's
        logs (seen on a real gateway with a device node: a ``stdout_logfile = /dev/null`` run
        as root would have moved and deleted the system's /dev/null)."""
        from gateway.apps.logs import remove_logs

        self.dir.mkdir(parents=True)
        link = self.dir / "null.log"
        link.symlink_to(os.devnull)
        writer = AppLogWriter(10**6)
        target = writer.open(link, 1024, 2)
        for _ in range(5):
            writer.write(target, b"x" * 1000)
        writer.release(target)
        self.assertEqual(sorted(p.name for p in self.dir.iterdir()), ["null.log"])
        self.assertEqual(os.readlink(link), os.devnull)
        remove_logs([link])
        self.assertTrue(link.is_symlink())

    def test_only_numbered_backups_are_deleted_with_the_logs(self) -> None:
        """An uninstall deletes a log and its backups ``.1``, ``.2`` ..., numbered in ASCII
        digits as the gateway numbers them; a file named like one in another script's digits
        or a superscript (``app.log.٣``, ``app.log.²``: digits to ``str.isdigit``), or with a
        leading zero (``app.log.07``, a copy kept by hand), is not the gateway's and stays (it
        was deleted with the logs)."""
        from gateway.apps.logs import remove_logs

        self.dir.mkdir(parents=True)
        log = self.dir / "app.log"
        for name in ("app.log", "app.log.1", "app.log.12", "app.log.\u0663", "app.log.\u00b2", "app.log.old",
                     "app.log.07"):
            (self.dir / name).write_text("x")
        remove_logs([log])
        self.assertEqual(sorted(p.name for p in self.dir.iterdir()),
                         ["app.log.07", "app.log.old", "app.log.\u00b2", "app.log.\u0663"])

    def test_backups_past_the_number_kept_go_at_the_first_rotation(self) -> None:
        """A log whose ``stdout_logfile_backups`` was lowered (to 0: truncated at its size)
        deletes, at its first rotation, the rotated files numbered past it, regular files only:
        its last lines were read on from its old ``.1``, output from before the change shown
        as its latest, and the files past the number were kept for good, outside the cap."""
        self.dir.mkdir(parents=True)
        path = self.dir / "app.log"
        for name in ("app.log.1", "app.log.2", "app.log.7"):
            (self.dir / name).write_bytes(b"stale\n")
        os.symlink("/dev/null", self.dir / "app.log.3")
        (self.dir / "app.log.02").write_bytes(b"a copy kept by hand: no name the gateway gives\n")
        target = RotatingLog(path, maxbytes=10, backups=0)
        target.write(b"before\n")
        self.assertEqual(tail_bytes(path, 3), b"stale\nbefore\n")  # (.1: what it got before)
        target.write(b"reached\n")  # (its size: truncated)
        target.write(b"after\n")
        target.close()
        self.assertEqual(tail_bytes(path, 3), b"after\n")
        self.assertEqual(sorted(p.name for p in self.dir.iterdir()), ["app.log", "app.log.02", "app.log.3"])
        for name in ("app.log.02", "app.log.3"):
            (self.dir / name).unlink()
        for name in ("app.log.2", "app.log.3"):
            (self.dir / name).write_bytes(b"stale\n")
        target = RotatingLog(path, maxbytes=10, backups=1)
        target.write(b"full at last\n")
        target.close()
        self.assertEqual(sorted(p.name for p in self.dir.iterdir()), ["app.log.1"])

    def test_a_named_pipe_as_a_log_never_holds_the_writer(self) -> None:
        """A named pipe at a log's path that nobody reads is not waited on (opening it for
        writing waited for a reader, for ever, on the writer's only thread: every app's log
        stopped): the output is dropped and counted; one being read gets the output, without
        rotation; neither is deleted with the logs."""
        from gateway.apps.logs import remove_logs

        self.dir.mkdir(parents=True)
        fifo = self.dir / "pipe.log"
        os.mkfifo(fifo)
        writer = AppLogWriter(10**6)
        target = writer.open(fifo, 1024, 2)
        writer.write(target, b"lost\n")
        self.assertEqual(target.dropped, 5)
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        self.addCleanup(os.close, reader)
        for _ in range(3):
            writer.write(target, b"y" * 1000)
        writer.release(target)
        self.assertEqual(os.read(reader, 10000), b"\n[gateway: 5 bytes of output dropped]\n" + b"y" * 3000)
        remove_logs([fifo])
        self.assertEqual(sorted(p.name for p in self.dir.iterdir()), ["pipe.log"])

    def test_the_cap_goes_by_rotation_not_by_the_files_times(self) -> None:
        """The gateway's previous run (its clock set) left one.log.1; this run began at 1970
        (no real-time clock, NTP not there yet), and two.log then three.log rotate. Over the
        cap, one.log.1 goes first (rotated before this run), then two.log.1 (rotated first in
        it). By modification time two.log.1 (1970) went first, and one.log.1 stayed."""
        self.dir.mkdir(parents=True)
        self.forged("one.log.1", b"1" * 100, SET)
        writer = AppLogWriter(250)
        one, two, three = (writer.open(self.dir / f"{name}.log", 100, 2) for name in ("one", "two", "three"))
        writer.write(two, b"2" * 100)
        os.utime(self.dir / "two.log.1", (UNSET, UNSET))
        writer.write(three, b"3" * 100)
        self.assertEqual(self.backups(), ["three.log.1", "two.log.1"])
        writer.write(one, b"x" * 100)
        self.assertEqual(self.backups(), ["one.log.1", "three.log.1"])

    def test_files_from_before_go_greatest_number_first_whatever_their_times(self) -> None:
        """Of the rotated files a previous run left, a log's ``.2`` is older than its ``.1``
        even when its time says otherwise (the clock stepped back between them): over the
        cap, ``.2`` goes. By modification time ``.1`` went, the newer."""
        self.dir.mkdir(parents=True)
        self.forged("one.log.1", b"1" * 100, UNSET)
        self.forged("one.log.2", b"2" * 100, SET)
        writer = AppLogWriter(250)
        two = writer.open(self.dir / "two.log", 100, 2)
        writer.open(self.dir / "one.log", 100, 2)
        writer.write(two, b"x" * 100)
        self.assertEqual(self.backups(), ["one.log.1", "two.log.1"])

    def test_a_rotation_under_the_cap_looks_at_no_other_logs_files(self) -> None:
        """Under the cap, a rotation looks at the files of no log (the writer counts what it
        writes and rotates): each rotation looked at every file of every log to add them up,
        so with many programs rotating the writer's thread did work growing with the square of
        the logs (200 logs with one backup: 400 stat calls a rotation)."""
        writer = AppLogWriter(10**9)
        logs = [writer.open(self.dir / f"p{index}.log", 1024, 1) for index in range(200)]
        for target in logs:
            writer.write(target, b"x" * 100)
        looked: list[Path] = []
        lstat = Path.lstat
        self.patch(Path, "lstat", lambda path: looked.append(path) or lstat(path))
        for _ in range(2):  # the first rotation looks once at every log's files
            for target in logs:
                writer.write(target, b"y" * 1024)
        self.assertLessEqual(len(looked), 400)  # (before: 160,000)
        self.assertEqual(sorted(p.name for p in self.dir.iterdir()), sorted(f"p{index}.log.1" for index in range(200)))

    def test_the_writers_counts_follow_the_files(self) -> None:
        """Through rotations, the cap's deletions (a log's ``.1`` gone, its ``.2`` kept) and
        rotated files from before, each log's count is what its files hold: the cap that goes
        by the counts holds the logs under it."""
        import random

        self.dir.mkdir(parents=True)
        self.forged("l0.log.2", b"0" * 700, SET)
        draw = random.Random(7)
        writer = AppLogWriter(9000)
        logs = [writer.open(self.dir / f"l{index}.log", 1024, 3) for index in range(4)]
        for _ in range(300):
            writer.write(draw.choice(logs), b"z" * draw.randrange(1, 900))
            for target in logs:
                files = [target.path, *(target.backup_path(index) for index in range(1, 4))]
                held = sum(path.stat().st_size for path in files if path.exists())
                self.assertIn(target.counted_bytes(), (None, held))
            self.assertLessEqual(sum(p.stat().st_size for p in self.dir.iterdir()), 9000 + 4 * 1024)

    def test_the_cap_counts_files_deleted_behind_the_writers_back(self) -> None:
        """A rotated file deleted by someone else is counted no more once the cap is reached:
        the writer's own counts say over, it looks at the files, and deletes only what the cap
        needs (here nothing: the deleted file made room)."""
        writer = AppLogWriter(4500)
        one, two = (writer.open(self.dir / f"{name}.log", 1024, 2) for name in ("one", "two"))
        for _ in range(2):
            writer.write(one, b"1" * 1024)
        (self.dir / "one.log.1").unlink()
        (self.dir / "one.log.2").unlink()
        for _ in range(3):
            writer.write(two, b"2" * 1024)
        self.assertEqual(self.backups(), ["two.log.1", "two.log.2"])

    def forged(self, name: str, data: bytes, mtime: float) -> None:
        """A rotated file a previous run left, modified at ``mtime``."""
        (self.dir / name).write_bytes(data)
        os.utime(self.dir / name, (mtime, mtime))

    def backups(self) -> list[str]:
        """The rotated files there are, by name."""
        return sorted(p.name for p in self.dir.iterdir() if not p.name.endswith(".log"))

    def test_dropped_output_is_marked(self) -> None:
        """Output dropped under back-pressure is counted into the log."""
        target = RotatingLog(self.dir / "c.log", 10**6, 1)
        target.dropped = 42
        target.write(b"after\n")
        target.close()
        self.assertIn(b"42 bytes of output dropped", (self.dir / "c.log").read_bytes())

    def test_tail(self) -> None:
        """tail_file returns the last lines; a missing file has none."""
        path = self.dir / "t.log"
        self.dir.mkdir()
        path.write_text("".join(f"line {i}\n" for i in range(1000)))
        self.assertEqual(tail_file(path, 2), ["line 998", "line 999"])
        self.assertEqual(tail_file(self.dir / "none", 5), [])

    def test_tail_bytes_are_the_lines_as_written(self) -> None:
        """tail_bytes (a log's tail for the admin API) keeps the last lines' bytes as they are,
        counting lines at newlines alone; tail_file (for messages and JSON replies) gives them as
        text."""
        path = self.dir / "cr.log"
        self.dir.mkdir()
        path.write_bytes(b"one\ntwo 1%\rtwo 99% \xff\nthree")
        self.assertEqual(tail_bytes(path, 2), b"two 1%\rtwo 99% \xff\nthree")
        self.assertEqual(tail_bytes(path, 0), b"")
        self.assertEqual(tail_bytes(self.dir / "none", 5), b"")
        self.assertEqual(tail_file(path, 2), ["two 99% \ufffd", "three"])

    def test_tail_of_long_lines(self) -> None:
        """tail_file returns the last lines whole however long they are (docs/admin.md and
        docs/commands.md: the last ``lines`` lines), not what fits a guess of their length."""
        path = self.dir / "long.log"
        self.dir.mkdir()
        path.write_text("".join(f"{i:04} {'x' * 995}\n" for i in range(200)))
        tail = tail_file(path, 150)  # 150 KB: read back over several chunks
        self.assertEqual(len(tail), 150)
        self.assertEqual(tail[0], f"0050 {'x' * 995}")
        self.assertEqual(tail[-1], f"0199 {'x' * 995}")
        self.assertEqual(len(tail_file(path, 1000)), 200)  # fewer lines than asked: all of them

    def test_the_tail_of_a_log_just_rotated_reaches_into_its_newest_backup(self) -> None:
        """A log rotated by the program's last output (it reached its size then) is empty, or
        holds fewer lines than asked: its last lines are read on from ``.1`` (apps.md:
        reading a log's last lines holds the program's output). ``gatewayctl apps logs``,
        ``logs?follow`` and a rollback's log tail showed nothing of a program's last words."""
        self.dir.mkdir()
        target = RotatingLog(self.dir / "r.log", maxbytes=1024, backups=2)
        target.write(b"".join(b"line %03d %s\n" % (i, b"x" * 90) for i in range(11)))  # 1089 bytes
        target.close()
        self.assertFalse((self.dir / "r.log").exists())  # (rotated: nothing written since)
        self.assertEqual([line[:8] for line in tail_file(self.dir / "r.log", 2)], ["line 009", "line 010"])
        text, offset, _ = tail_to_end(self.dir / "r.log", 2)
        self.assertEqual((text.splitlines()[-1][:8], len(text.splitlines()), offset), (b"line 010", 2, 0))
        (self.dir / "r.log").write_bytes(b"line 011 first\nline 012 ")  # one line and a half
        self.assertEqual(tail_file(self.dir / "r.log", 3), [f"line 010 {'x' * 90}", "line 011 first", "line 012 "])
        self.assertEqual(tail_to_end(self.dir / "r.log", 2)[:2], (b"line 011 first\nline 012 ", 24))
        self.assertEqual(tail_file(self.dir / "r.log", 1), ["line 012 "])  # (enough: .1 not read)
        # A line cut by the rotation (a pipe read ends mid-line) reads as one.
        (self.dir / "r.log.1").write_bytes(b"line 020 begun ")
        (self.dir / "r.log").write_bytes(b"and ended\n")
        self.assertEqual(tail_file(self.dir / "r.log", 5), ["line 020 begun and ended"])
        # Bytes as they are across the two files: a carriage return ends no line.
        (self.dir / "r.log.1").write_bytes(b"a 1%\ra 99%\nb\n")
        (self.dir / "r.log").write_bytes(b"c\r\n")
        self.assertEqual(tail_bytes(self.dir / "r.log", 2), b"b\nc\r\n")
        self.assertEqual(tail_bytes(self.dir / "r.log", 3), b"a 1%\ra 99%\nb\nc\r\n")
        self.assertEqual(tail_to_end(self.dir / "r.log", 3)[:2], (b"a 1%\ra 99%\nb\nc\r\n", 3))

    def test_a_log_that_holds_the_lines_asked_is_read_alone(self) -> None:
        """A log whose last line has no newline yet (a program mid-line) and that holds the lines
        asked with it is read alone: its ``.1`` was read too, its line counted short by one."""
        from gateway.apps import logs

        self.dir.mkdir()
        path = self.dir / "r.log"
        (self.dir / "r.log.1").write_bytes(b"older\n")
        path.write_bytes(b"one\ntwo")
        opened: list[Path] = []
        open_log = logs.open_log
        self.patch(logs, "open_log", lambda where: opened.append(where) or open_log(where))
        self.assertEqual(tail_bytes(path, 2), b"one\ntwo")
        self.assertEqual(opened, [path])
        self.assertEqual(tail_bytes(path, 3), b"older\none\ntwo")  # (short: .1 is read on)

    def test_a_log_rotated_while_its_tail_is_read_shows_no_line_twice(self) -> None:
        """A log rotated between the read of its last lines and that of its ``.1`` (the writer's
        thread rotates while a pool thread reads: a chatty program) is read again: its lines
        were in both, shown twice, and ``logs?follow`` went on from an offset in a file no
        longer there."""
        from gateway.apps import logs

        self.dir.mkdir()
        path = self.dir / "r.log"
        path.write_bytes(b"one\ntwo\n")
        opened = logs.open_log
        for follow in (False, True):
            rotations = [path]

            def rotating(where: Path) -> Any:
                handle = opened(where)
                if rotations and where == rotations.pop():  # (once: the writer rotates it now)
                    os.replace(path, self.dir / "r.log.1")
                    path.write_bytes(b"")
                return handle
            self.patch(logs, "open_log", rotating)
            read = tail_to_end(path, 5)[:2] if follow else tail_file(path, 5)
            self.assertEqual(read, (b"one\ntwo\n", 0) if follow else ["one", "two"], follow)
            path.write_bytes(b"one\ntwo\n")
            (self.dir / "r.log.1").unlink()

    def test_tail_looks_back_at_most_tail_max_bytes(self) -> None:
        """A log without line ends is not read whole: its last TAIL_MAX_BYTES are the line."""
        from gateway.apps import logs

        self.patch(logs, "TAIL_MAX_BYTES", 100)
        path = self.dir / "noeol.log"
        self.dir.mkdir()
        path.write_text("a" * 200 + "b" * 100)
        self.assertEqual(tail_file(path, 5), ["b" * 100])


    def test_a_named_pipe_in_a_logs_place_is_no_log(self) -> None:
        """An app puts a named pipe where its log goes: reading the log (apps logs, a
        failed start's last lines, logs?follow) finds none, at once; opening the pipe
        waited for a writer for ever, holding a thread of the reactor's pool (and the
        gateway's exit with it)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / "fifo.log"
        os.mkfifo(path)
        self.assertEqual(tail_file(path, 5), [])
        self.assertEqual(tail_to_end(path, 5), (b"", 0, None))
        self.assertEqual(read_from(path, 0), (b"", 0, None))


class FollowTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        self.path = self.dir / "f.log"

    def rotate(self, backups: int) -> None:
        """Rotate the log as RotatingLog does: the oldest backup first, the log last."""
        for index in range(backups - 1, 0, -1):
            older = self.dir / f"f.log.{index}"
            if older.exists():
                os.replace(older, self.dir / f"f.log.{index + 1}")
        os.replace(self.path, self.dir / "f.log.1")

    def test_a_read_during_a_rotation_finds_the_file_past_the_gap(self) -> None:
        """A read that comes while a rotation is under way (``.1`` renamed to ``.2``, the log
        not yet to ``.1``) finds its file in ``.2`` and reads its rest; the next read goes on
        into the files rotated after it. The gap ended the search, and the new file was read
        from its start, the rest of the old one lost."""
        self.path.write_bytes(b"a 1\n")
        read, offset, identity = read_from(self.path, 0)
        self.assertEqual(read, b"a 1\n")
        with self.path.open("ab") as f:
            f.write(b"a 2\n")
        self.rotate(2)
        self.path.write_bytes(b"b 1\n")
        os.replace(self.dir / "f.log.1", self.dir / "f.log.2")  # (the next rotation, half done)
        read, offset, identity = read_from(self.path, offset, identity)
        self.assertEqual(read, b"a 2\n")
        os.replace(self.path, self.dir / "f.log.1")
        self.path.write_bytes(b"c 1\n")
        self.assertEqual(read_from(self.path, offset, identity)[0], b"b 1\nc 1\n")

    def test_a_follower_behind_by_more_rotations_than_backups_goes_on_in_the_log(self) -> None:
        """When its file is no longer among the backups (rotated out, or deleted), a follower
        goes on in the file at the log's path from its start (docs/admin.md: unless the log
        rotated more times than it keeps backups)."""
        self.path.write_bytes(b"a 1\n")
        _, offset, identity = read_from(self.path, 0)
        for name in "bc":
            new = self.dir / "new"  # (made before the rotation deletes a file: not its inode again)
            new.write_bytes(b"%s 1\n" % name.encode())
            self.rotate(1)
            os.replace(new, self.path)
        self.assertEqual(read_from(self.path, offset, identity)[0], b"c 1\n")


class ThreadedWriterTests(TestCase):
    def test_thread_writes_and_stop_flushes(self) -> None:
        """The threaded writer writes everything queued before stop() fires."""
        directory = Path(self.mktemp())
        writer = AppLogWriter(10**9, reactor)
        writer.start()
        target = writer.open(directory / "t.log", 10**6, 1)
        for index in range(100):
            writer.write(target, b"%d\n" % index)

        def check(_: object) -> None:
            self.assertEqual((directory / "t.log").read_bytes().count(b"\n"), 100)

        return writer.stop().addCallback(check)

    def test_backpressure_drops_and_counts(self) -> None:
        """Past max_pending bytes, output is dropped and counted, never blocking."""
        writer = AppLogWriter(10**9, reactor, max_pending=10)
        writer._thread = object()  # type: ignore[assignment]  # queue only, no thread
        target = writer.open(Path(self.mktemp()) / "x.log", 10**6, 1)
        writer.write(target, b"12345678")
        writer.write(target, b"too much")
        self.assertEqual(target.dropped, 8)


class FullDiskTests(TestCase):
    def test_a_log_the_disk_refuses_is_reported_once(self) -> None:
        """A program's output the disk refuses (full) is dropped and counted with one warning,
        not one per write, and its log says how much was dropped once the disk has room; a
        chatty program on a full disk logged a warning for every chunk of its output."""
        from gateway.apps import logs

        warnings: list[str] = []
        self.patch(logs.log, "warn", lambda text, **kw: warnings.append(text.format(**kw)))
        directory = Path(self.mktemp())
        writer = AppLogWriter(10**9, reactor)
        writer.start()
        self.addCleanup(writer.stop)
        target = writer.open(directory / "t.log", 10**6, 1)
        write = RotatingLog.write
        full = [True]

        def refuse(data: bytes) -> bool:
            if full[0]:
                raise OSError(28, "No space left on device")
            return write(target, data)
        target.write = refuse  # type: ignore[method-assign]
        for _ in range(20):
            writer.write(target, b"0123456789")

        def space_back(_: object) -> object:
            self.assertEqual(len(warnings), 1, warnings)
            self.assertIn("No space left on device", warnings[0])
            full[0] = False
            writer.write(target, b"back\n")
            return writer.flush()

        def check(_: object) -> None:
            self.assertEqual((directory / "t.log").read_bytes(), b"\n[gateway: 200 bytes of output dropped]\nback\n")
            self.assertEqual(len(warnings), 1)

        return writer.flush().addCallback(space_back).addCallback(check)


class PermissionTests(TestCase):
    """docs/apps.md (Logs): a log file the gateway's user may not write (root's, after a ``sudo
    twistd gateway``, where an app's ``stdout_logfile`` names it) loses the output, counted,
    with one warning naming the file, its owner and mode and the command that sets it right."""

    def refused_log(self) -> tuple[Path, RotatingLog, AppLogWriter, list[str]]:
        """A log file root may write but the gateway's user, as the tests pretend to be, may not
        (the refusal injected: tests run as root), and the warnings logged."""
        import errno

        from gateway.apps import logs
        from tests.test_stateaccess import GATEWAY_UID

        warnings: list[str] = []
        self.patch(logs.log, "warn", lambda text, **kw: warnings.append(text.format(**kw)))
        self.patch(os, "geteuid", lambda: GATEWAY_UID)
        path = Path(self.mktemp()).absolute() / "sensor.log"
        path.parent.mkdir()
        path.write_bytes(b"")
        os.chmod(path, 0o644)
        writer = AppLogWriter(10**9, reactor)
        target = writer.open(path, 10**6, 1)

        def refuse(data: bytes) -> bool:  # (the append's open, as the kernel refuses it)
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        target.write = refuse  # type: ignore[method-assign]
        return path, target, writer, warnings

    def expected(self, path: Path) -> str:
        from tests.test_stateaccess import GATEWAY_UID, name_of

        user = name_of(GATEWAY_UID)
        return (f"apps: cannot write {path}: {path} (owner {name_of(os.stat(path).st_uid)}, mode 0644) may not be"
                f" used by the gateway's user {user}: chown {user}: {path}; its output is dropped (and counted in"
                " it) until it can be written again")

    def test_output_after_the_writer_stopped_is_counted_not_raised(self) -> None:
        """A program's last words after the writer stopped are written inline: a log that
        refuses them raised PermissionError into the program's protocol (a traceback in the
        gateway's log); they are dropped and counted, with the warning."""
        path, target, writer, warnings = self.refused_log()
        writer.write(target, b"last words\n")
        writer.write(target, b"more\n")
        self.assertEqual(target.dropped, 16)
        self.assertEqual(warnings, [self.expected(path)])

    def test_the_writer_thread_says_what_to_do(self) -> None:
        """From the writer's thread: one warning with the owner, the mode and the chown (it
        said only '[Errno 13] Permission denied')."""
        path, target, writer, warnings = self.refused_log()
        writer.start()
        self.addCleanup(writer.stop)
        writer.write(target, b"hello\n")
        writer.write(target, b"again\n")

        def check(_: object) -> None:
            self.assertEqual(warnings, [self.expected(path)])
            self.assertEqual(target.dropped, 12)

        return writer.flush().addCallback(check)


class WriterThreadTests(TestCase):
    timeout = 10

    def test_writer_thread_is_a_daemon(self) -> None:
        """The log writer's thread is a daemon thread: a stopService that raised before the writer
        was stopped cannot hang the interpreter's exit."""
        writer = AppLogWriter(10**6, reactor)
        writer.start()
        self.addCleanup(writer.stop)
        thread = writer._thread
        assert thread is not None
        self.assertTrue(thread.daemon)


class LogFollowerTests(SynchronousTestCase):
    def test_a_resume_while_a_read_is_under_way_reads_nothing_twice(self) -> None:
        """A send buffer that drains while a read of the log is under way in the pool's thread
        starts no second read from the same offset: the line would be sent twice."""
        from twisted.internet.task import Clock
        from twisted.internet.testing import StringTransport

        from gateway.admin.logstream import LogFollower

        path = Path(self.mktemp())
        path.write_bytes(b"one\n")
        reads: list[tuple[Deferred[Any], Callable[[], Any]]] = []

        def blocking(read: Callable[[], Any]) -> Deferred[Any]:
            reads.append((Deferred(), read))
            return reads[-1][0]
        request, clock = StringTransport(), Clock()  # (a request's producer and write, as a transport's)
        follower = LogFollower(request, Deferred(), path, 0, clock, blocking, 1.0, lambda _: None)
        follower.start()
        clock.advance(1.0)
        follower.pauseProducing()
        follower.resumeProducing()
        self.assertEqual(len(reads), 1)
        done, read = reads.pop()
        done.callback(read())
        self.assertEqual(request.value(), b"one\n")
        follower.stopProducing()

    def test_a_read_that_fails_ends_the_response(self) -> None:
        """A read of the followed log that fails (the program made its log unreadable) ends the
        response, said in the gateway's log: the client is not left waiting for ever on a
        follower that no longer polls."""
        from twisted.internet.defer import fail
        from twisted.internet.task import Clock
        from twisted.internet.testing import StringTransport

        from gateway.admin.logstream import LogFollower

        class Request(StringTransport):
            finished = False

            def finish(self) -> None:
                self.finished = True

        request, clock, done = Request(), Clock(), []
        follower = LogFollower(request, Deferred(), Path(self.mktemp()), 0, clock,
                               lambda _: fail(PermissionError(13, "Permission denied")), 1.0, done.append)
        follower.start()
        clock.advance(1.0)
        self.assertEqual(len(self.flushLoggedErrors(PermissionError)), 1)
        self.assertTrue(request.finished)
        self.assertEqual(done, [follower])
        self.assertIsNone(request.producer)
