"""The service with its real I/O thread: start, append, read, stop flushes; a real full disk."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, cast

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks, maybeDeferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway.errors import JournalError
from gateway.journal.errors import JournalClosedError, JournalWriteError, StreamFullError
from gateway.filelayer import OSFiles
from gateway.journal.record import Record
from gateway.journal.service import JournalService
from gateway.journal.settings import JournalSettings, StreamSettings
from tests.logevents import capture_log_events


def _settings(**kw: object) -> JournalSettings:
    return JournalSettings(defaults=StreamSettings(**kw))  # type: ignore[arg-type]


class ServiceTests(TestCase):
    """Real files, the real dedicated thread, the test's reactor."""

    timeout = 30

    @inlineCallbacks
    def test_append_read_restart(self) -> None:
        """Appends are durable and readable; after a restart the cursor resumes after its ack."""
        state = Path(self.mktemp())
        svc = JournalService(_settings(min_free_bytes=0), state, reactor)
        yield svc.startService()
        self.addCleanup(lambda: svc.stopService() if svc.running else None)
        s = svc.stream("cloud")
        yield s.cursor("link")
        seqs = yield gatherResults([s.append(Record("t/a", b"%d" % i)) for i in range(100)])
        self.assertEqual(seqs, list(range(1, 101)))
        got = yield s.read("link", 60)
        yield s.ack("link", got[-1].seq)
        yield svc.stopService()
        svc = JournalService(_settings(min_free_bytes=0), state, reactor)
        yield svc.startService()
        self.assertIn("cloud", svc.streams())
        got = yield svc.stream("cloud").read("link")
        self.assertEqual([r.payload for r in got], [b"%d" % i for i in range(60, 100)])
        yield svc.stopService()
        self.assertRaises(JournalClosedError, svc.stream, "other")

    @inlineCallbacks
    def test_the_gateways_lock_file_is_no_stream(self) -> None:
        """The gateway's lock file in a journal directory outside the state directory
        (gateway.lock, a name a stream could have) is neither a stream nor a warning; it
        was opened as a stream, a file in a directory's place, and the start failed."""
        state = Path(self.mktemp())
        (state / "journal").mkdir(parents=True)
        (state / "journal" / "gateway.lock").write_text("4711\n")
        events = capture_log_events(self)
        svc = JournalService(_settings(min_free_bytes=0), state, reactor)
        yield svc.startService()
        self.addCleanup(svc.stopService)
        self.assertEqual((dict(svc.streams()), [e for e in events if "ignoring" in e.get("log_format", "")]), ({}, []))

    @inlineCallbacks
    def test_stream_and_cursor_names(self) -> None:
        """Stream and cursor names are 1-100 of A-Z a-z 0-9 _ . -, not starting with a dot
        (they name a directory and a file: ".." must not be one); others are a ValueError."""
        svc = JournalService(_settings(min_free_bytes=0), Path(self.mktemp()), reactor)
        yield svc.startService()
        self.addCleanup(svc.stopService)
        s = svc.stream("A-z_0.9" + "x" * 93)
        yield s.cursor("c" * 100)
        for bad in ("", "x" * 101, "a/b", "a b", ".hidden", "..", "\u00e9", "a\n"):
            self.assertRaises(ValueError, svc.stream, bad)
            yield self.assertFailure(maybeDeferred(s.cursor, bad), ValueError)

    @inlineCallbacks
    def test_stop_flushes_and_fsyncs_none_policy(self) -> None:
        """Under sync: none, stopService still writes and fsyncs what was pending."""
        state = Path(self.mktemp())
        svc = JournalService(_settings(sync="none", min_free_bytes=0), state, reactor)
        yield svc.startService()
        s = svc.stream("x")
        for i in range(10):
            s.append(Record("t", b"p"))
        yield svc.stopService()
        svc = JournalService(_settings(min_free_bytes=0), state, reactor)
        yield svc.startService()
        self.assertEqual(svc.stream("x").next_seq, 11)
        yield svc.stopService()

    @inlineCallbacks
    def test_a_stream_that_cannot_be_opened_stops_the_start_saying_why(self) -> None:
        """A segment the journal cannot read (a directory in its place), a file where a
        stream's directory belongs, or one where the journal's directory belongs: the start
        fails with a JournalError naming the stream and the file, not a FirstError's
        traceback, and the log says it in one line, without a traceback."""
        for damage in ("segment", "stream", "journal"):
            state = Path(self.mktemp())
            svc = JournalService(_settings(min_free_bytes=0), state, reactor)
            yield svc.startService()
            yield svc.stream("cloud").append(Record("t/a", b"1"))
            yield svc.stopService()
            cloud = state / "journal" / "cloud"
            if damage == "segment":
                [segment] = cloud.glob("*.seg")
                segment.unlink()
                segment.mkdir()
                bad, why = segment, "Is a directory"
            else:
                bad = cloud if damage == "stream" else cloud.parent
                shutil.rmtree(bad)
                bad.write_bytes(b"x")
                why = "File exists"
            events = capture_log_events(self)
            svc = JournalService(_settings(min_free_bytes=0), state, reactor)
            error = yield self.assertFailure(maybeDeferred(svc.startService), JournalError)
            yield svc.stopService()
            self.assertIn(why, str(error), damage)
            self.assertIn(str(bad), str(error), damage)
            if damage != "journal":
                self.assertTrue(str(error).startswith("journal stream cloud cannot be opened: "), str(error))
            self.assertFalse([e for e in events if e.get("log_failure") is not None], damage)


    @inlineCallbacks
    def test_a_file_of_a_stream_the_user_may_not_read_stops_the_start_and_stays(self) -> None:
        """A cursor or a segment the gateway's user may not read (root's, after ``sudo twistd
        gateway``; here the refusal is injected: tests run as root): the start fails in one line
        naming the file, its owner and mode, and what to do; the cursor stays where it is. It was
        moved aside to ``cloud.json.damaged`` and the link sent everything again."""
        for refused in ("cursor", "segment"):
            state = Path(self.mktemp())
            svc = JournalService(_settings(min_free_bytes=0), state, reactor)
            yield svc.startService()
            stream = svc.stream("cloud")
            yield stream.append(Record("t/a", b"1"))
            yield stream.cursor("link")
            stream.ack("link", 1)
            yield svc.stopService()
            cloud = state / "journal" / "cloud"
            path = str(cloud / "cursors" / "link.json") if refused == "cursor" else str(next(cloud.glob("*.seg")))

            class Refusing(OSFiles):
                def read(self, name: str, offset: int, length: int) -> bytes:
                    if name == path:
                        raise PermissionError(errno.EACCES, "Permission denied", name)
                    return super().read(name, offset, length)

            events = capture_log_events(self)
            svc = JournalService(_settings(min_free_bytes=0), state, reactor, files=Refusing())
            error = yield self.assertFailure(maybeDeferred(svc.startService), JournalError)
            yield svc.stopService()
            self.assertTrue(str(error).startswith(f"journal stream cloud cannot be opened: {path} (owner "), str(error))
            self.assertTrue(str(error).endswith(" and start again"), str(error))
            self.assertFalse([e for e in events if e.get("log_failure") is not None], refused)
            self.assertTrue(os.path.isfile(path), refused)
            self.assertEqual(sorted(os.listdir(cloud / "cursors")), ["link.json"], refused)


class DiskFullTests(TestCase):
    """A journal on a 1 MiB tmpfs hits ENOSPC for real, stays whole, and recovers."""

    timeout = 60

    def setUp(self) -> None:
        if os.geteuid() != 0:
            raise self.skipTest("needs root to mount a size-limited tmpfs")
        self.mnt = os.path.abspath(self.mktemp())
        os.makedirs(self.mnt)
        try:
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", self.mnt],
                           check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError) as e:
            raise self.skipTest(f"cannot mount a tmpfs here: {e}") from None
        self.addCleanup(subprocess.run, ["umount", "-l", self.mnt], check=False)

    @inlineCallbacks
    def test_enospc(self) -> None:
        """Another writer fills the disk: appends fail with ENOSPC, stored data stays whole, appends resume.

        (reject-new: under drop-oldest the journal would make room by dropping its oldest
        records once it has measured the full disk.)"""
        settings = _settings(min_free_bytes=0, segment_bytes=64 * 1024, overflow="reject-new")
        svc = JournalService(settings, Path(self.mnt), reactor)
        yield svc.startService()
        self.addCleanup(lambda: svc.stopService() if svc.running else None)
        s = svc.stream("full")
        yield s.cursor("c")
        for _ in range(100):
            yield s.append(Record("t", bytes(1000)))
        filler = os.path.join(self.mnt, "filler")
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)  # fill the disk behind the journal's back
        try:
            while os.write(fd, bytes(4096)):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        failure = yield self.assertFailure(s.append(Record("t", bytes(8192))), JournalWriteError)
        self.assertEqual(failure.cause.errno, 28)
        records = yield s.read("c", 10_000, 1 << 30)
        self.assertEqual([r.seq for r in records], list(range(1, 101)))
        os.unlink(filler)
        for _ in range(400):  # after a failed write, appends are refused for a moment (back-off)
            try:
                seq = yield s.append(Record("t", bytes(1000)))
                break
            except (JournalWriteError, StreamFullError):
                yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(seq, 101)
        yield svc.stopService()
        svc = JournalService(settings, Path(self.mnt), reactor)
        yield svc.startService()
        stream = svc.stream("full")
        self.assertEqual(stream.next_seq, 102)
        yield stream.cursor("d")
        records = yield stream.read("d", 10_000, 1 << 30)
        self.assertEqual([r.seq for r in records], list(range(1, 102)))
        yield svc.stopService()


class OutOfInodesTests(TestCase):
    """A journal on a tmpfs with few inodes (a small flash filesystem full of small files)."""

    timeout = 60

    @inlineCallbacks
    def test_drop_oldest_makes_room_as_on_a_full_disk(self) -> Any:
        """Another writer takes every inode, with megabytes of bytes left: the next segment
        cannot be created (ENOSPC). The journal counts the filesystem as full, so drop-oldest
        drops its oldest segments and appends resume, those losses counted, as on a full disk.
        It saw the bytes free, never dropped anything, and refused every append that needed
        a segment for as long as the inodes were short."""
        if os.geteuid() != 0:
            raise self.skipTest("needs root to mount a tmpfs with few inodes")
        mnt = os.path.abspath(self.mktemp())
        os.makedirs(mnt)
        try:
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,nr_inodes=200", "tmpfs", mnt],
                           check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError) as e:
            raise self.skipTest(f"cannot mount a tmpfs here: {e}") from None
        self.addCleanup(subprocess.run, ["umount", "-l", mnt], check=False)
        settings = _settings(min_free_bytes=4096, segment_bytes=4096, overflow="drop-oldest")
        svc = JournalService(settings, Path(mnt), reactor)
        yield svc.startService()
        self.addCleanup(lambda: svc.stopService() if svc.running else None)
        s = svc.stream("full")
        yield s.cursor("c")
        for _ in range(10):  # ten segments of one record
            yield s.append(Record("t", bytes(3000)))
        filler = Path(mnt, "filler")
        filler.mkdir()
        for n in range(200):
            try:
                (filler / str(n)).touch()
            except OSError as e:
                self.assertEqual(e.errno, errno.ENOSPC)
                break
        seq = None
        for _ in range(200):  # after the failed write, appends are refused for a moment (back-off)
            try:
                seq = yield s.append(Record("t", bytes(3000)))
                break
            except (JournalWriteError, StreamFullError):
                yield deferLater(reactor, 0.05, lambda: None)
        self.assertIsNotNone(seq, "no append was taken while the inodes were short")
        self.assertIn("min-free-disk", {e.reason for e in s.ledger.entries})
        records = yield s.read("c", 10_000, 1 << 30)
        self.assertEqual(records[-1].seq, seq)
        yield svc.stopService()


class LimitsCheckTests(SynchronousTestCase):
    """The periodic limits check (``retention_check_s``), with the I/O thread collapsed."""

    def test_one_job_measures_every_stream(self) -> None:
        """Every ``retention_check_s`` the free disk of every stream is measured in one job on
        the I/O thread, not one job per stream (each a hand-off to the thread and back: wake-ups
        of an idle gateway); each stream still gets its own measurement, and its limits are
        enforced with it (here drop-oldest restores min_free_bytes in each)."""
        from twisted.internet.task import Clock

        from gateway.filelayer import FileLayer
        from tests.journal.helpers import run_now
        from tests.journal.powercut import PowerCutFiles

        clock, files, jobs = Clock(), PowerCutFiles(), []

        def run(f: Any, *args: Any) -> Any:
            jobs.append(f)
            return run_now(f, *args)

        settings = JournalSettings(retention_check_s=10.0, defaults=StreamSettings(
            min_free_bytes=1000, segment_bytes=4096, overflow="drop-oldest"))
        svc = JournalService(settings, Path("/state"), clock, files=cast(FileLayer, files), run=run)
        self.successResultOf(svc.startService())
        streams = [svc.stream(name) for name in ("a", "b", "c")]
        for stream in streams:
            for _ in range(3):  # three segments of one record each
                appended = stream.append(Record("t", bytes(4000)))
                clock.advance(0)  # (the batch is written at the end of the turn)
                self.successResultOf(appended)
        jobs.clear()
        clock.advance(10.0)
        self.assertEqual(len(jobs), 1, jobs)  # (nothing to drop: the measurement alone)
        files.reported_free = 0  # another writer filled the disk
        clock.advance(10.0)
        for stream in streams:
            self.assertEqual(len(stream.retention.segments), 2, stream.name)  # the oldest dropped: free enough again
        self.successResultOf(svc.stopService())
