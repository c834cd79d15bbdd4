"""The marks of the shadows behind on disk: what a mark costs, the log's torn tail, its
compaction into the snapshot, the whole-file format of before, and persist-then-answer."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.logger import Logger, capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gateway.journal.errors import StreamFullError
from gateway.twin import behind, behindlog
from gateway.twin.behind import BEHIND_FILE, BehindFile
from gateway.twin.catchup import ShadowCatchUp
from tests.twin.fakes import HeldRunner, run_now

THING = "acme:gw1"


class IdleSync:
    """A shadow sync that is not connected (the catch-up timer never runs)."""

    def sending(self) -> bool:
        return False

    def settled(self, shadow: str) -> bool:
        return True

    def read_again(self, shadow: str) -> None:
        pass

    def pump(self) -> None:
        pass


class BehindFileTests(SynchronousTestCase):
    """The marks of one sync's catch-up, kept by a :class:`BehindFile` in a temporary directory."""

    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        self.clock = Clock()
        self.written = 0
        self.real_pwritev = os.pwritev
        self.count_writes("write")
        self.fsyncs = 0
        self.patch(os, "fsync", self.fsync)  # (counted, not done: the test would take seconds)
        self.patch(os, "pwritev", self.pwritev)

    def fsync(self, fd: int) -> None:
        self.fsyncs += 1

    def pwritev(self, fd: int, buffers: Any, offset: int, flags: int = 0) -> int:
        """``os.pwritev``, its bytes counted; a durable one (``RWF_DSYNC``) counted as an fsync,
        and not made durable (as :meth:`fsync`)."""
        dsync = getattr(os, "RWF_DSYNC", 0)
        if flags & dsync:
            self.fsyncs += 1
        written: int = self.real_pwritev(fd, buffers, offset, flags & ~dsync)
        self.written += written
        return written

    def count_writes(self, name: str) -> None:
        """Count the bytes ``os.<name>`` writes (every write of a file goes through it or
        :meth:`pwritev`)."""
        original = getattr(os, name)

        def counted(fd: int, data: Any, *args: Any) -> int:
            written: int = original(fd, data, *args)
            self.written += written
            return written

        self.patch(os, name, counted)

    def catch_up(self, run_blocking: Any = run_now) -> ShadowCatchUp:
        """A catch-up with its marks read from the directory (as at a start)."""
        catch_up = ShadowCatchUp(IdleSync(), BehindFile(self.dir / BEHIND_FILE, run_blocking, self.clock.seconds),
                                 self.clock, Logger())
        catch_up.load()
        return catch_up

    def refuse(self, catch_up: ShadowCatchUp, shadow: str) -> Any:
        """The journal refused a request of ``shadow``: its result (why the cloud is behind)."""
        return catch_up.refused(THING, shadow, Failure(StreamFullError("shadow-aws", "max-bytes")))

    def saved(self) -> dict[str, tuple[str, float]]:
        """The marks a restart reads."""
        marks = self.successResultOf(BehindFile(self.dir / BEHIND_FILE, run_now, self.clock.seconds).load())
        return {shadow: (mark.thing, mark.since) for shadow, mark in marks.items()}

    def test_a_mark_costs_the_bytes_of_its_own_record(self) -> None:
        """shadows-behind.json was written whole at each new mark and each mark dropped: 600
        shadows marked one at a time wrote 10.5 MB, and as much when brought up to date (the
        square of the marks: 3.3 GB for 10,000). Each change is a record appended to the log now, and the log
        compacted into the snapshot once it holds twice the marks: under 200 bytes a change."""
        catch_up = self.catch_up()
        for n in range(600):
            self.clock.advance(1)
            self.refuse(catch_up, f"f{n}")
        self.assertLess(self.written, 600 * 200)
        self.assertEqual(self.fsyncs, 600 + 1)  # (each mark durable before it is answered; the new log's directory)
        self.assertEqual(len(self.saved()), 600)
        self.assertEqual(self.saved()["f7"], (THING, 8.0))
        self.written = 0
        for n in range(600):
            catch_up.corrected_by(f"f{n}", succeed(None))
        self.assertLess(self.written, 600 * 200)
        self.assertEqual(self.saved(), {})
        self.assertLess((self.dir / behindlog.LOG_FILE).stat().st_size, 200 * 200)  # (compacted)

    def test_the_log_is_compacted_into_the_snapshot(self) -> None:
        """Past COMPACT_FACTOR records a mark (and COMPACT_MIN_RECORDS), the marks are written
        whole to shadows-behind.json (its format of before) and the log emptied."""
        self.patch(behind, "COMPACT_MIN_RECORDS", 4)
        catch_up = self.catch_up()
        for shadow in ("a", "b", "c"):
            self.refuse(catch_up, shadow)
        catch_up.corrected_by("a", succeed(None))
        self.assertEqual((self.dir / BEHIND_FILE).exists(), False)
        catch_up.corrected_by("b", succeed(None))  # (5 records, 1 mark)
        self.assertEqual(json.loads((self.dir / BEHIND_FILE).read_bytes()),
                         {"shadows": {"c": {"thing": THING, "since": 0.0}}})
        self.assertEqual((self.dir / behindlog.LOG_FILE).read_bytes(), b"")
        self.refuse(catch_up, "d")
        self.assertEqual(self.saved(), {"c": (THING, 0.0), "d": (THING, 0.0)})

    def test_a_stop_leaves_every_mark_in_the_snapshot_an_older_gateway_reads(self) -> None:
        """A gateway older than the log (4a15851d and before: a rollback, a downgrade) reads
        shadows-behind.json alone, in this shape, and ignored the log: each mark made since
        the last compaction was lost to it. The sync's stop compacts: the snapshot holds every
        mark and the log is empty; a stop with an empty log writes nothing."""
        catch_up = self.catch_up()
        for shadow in ("", "a", "b"):
            self.clock.advance(1)
            self.refuse(catch_up, shadow)
        catch_up.corrected_by("a", succeed(None))
        self.assertEqual(self.successResultOf(catch_up.compact()), None)
        self.assertEqual(json.loads((self.dir / BEHIND_FILE).read_bytes()),
                         {"shadows": {"": {"thing": THING, "since": 1.0}, "b": {"thing": THING, "since": 3.0}}})
        self.assertEqual((self.dir / behindlog.LOG_FILE).read_bytes(), b"")
        self.written = 0
        self.successResultOf(self.catch_up().compact())
        self.assertEqual(self.written, 0)
        self.assertEqual(self.saved(), {"": (THING, 1.0), "b": (THING, 3.0)})

    def test_a_stop_compacts_after_the_write_under_way(self) -> None:
        """A stop while a mark is being written compacts once that write is done (the mark in
        the snapshot), and fires only then."""
        held = HeldRunner()
        catch_up = self.catch_up(held)
        held.run_one()
        self.refuse(catch_up, "a")
        stopped = catch_up.compact()
        self.assertNoResult(stopped)
        held.run_one()
        self.assertNoResult(stopped)
        held.run_one()
        self.successResultOf(stopped)
        self.assertEqual(json.loads((self.dir / BEHIND_FILE).read_bytes()),
                         {"shadows": {"a": {"thing": THING, "since": 0.0}}})

    def test_a_compaction_cut_short_keeps_every_mark(self) -> None:
        """A compaction whose log is not emptied (a crash, a failed write) leaves the snapshot
        and the log agreeing: the log's last records are what the snapshot holds. The failure is
        logged and the compaction done again with the next change."""
        self.patch(behind, "COMPACT_MIN_RECORDS", 2)
        catch_up = self.catch_up()
        self.refuse(catch_up, "a")
        self.refuse(catch_up, "b")
        empty = behindlog.empty
        self.patch(behindlog, "empty", lambda path: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
        with capturedLogs() as events:
            catch_up.corrected_by("a", succeed(None))
        self.assertEqual([formatEvent(e).split(": ", 2)[2] for e in events if "writing" in e["log_format"]],
                         ["[Errno 5] I/O error; written again with the next change or catch-up"])
        self.assertEqual(self.saved(), {"b": (THING, 0.0)})
        self.patch(behindlog, "empty", empty)
        self.refuse(catch_up, "c")  # (4 records, 2 marks: not due)
        catch_up.corrected_by("b", succeed(None))
        self.assertEqual((self.dir / behindlog.LOG_FILE).read_bytes(), b"")
        self.assertEqual(self.saved(), {"c": (THING, 0.0)})

    def test_a_log_shorter_than_written_is_appended_to_where_it_ends(self) -> None:
        """A compaction that cut the log to nothing but could not make it durable (its fsync
        failed), or a log removed by hand, left the log shorter than the gateway counted: the
        next append lengthened it back to that count with zeros before its record, and a
        restart read no record past the zeros, losing every mark made or dropped since. The
        log is appended to where it ends."""
        self.patch(behind, "COMPACT_MIN_RECORDS", 2)
        catch_up = self.catch_up()
        self.refuse(catch_up, "a")
        self.refuse(catch_up, "b")
        empty = behindlog.empty

        def cut_then_fail(path: Path) -> None:
            os.truncate(path, 0)
            raise OSError(errno.EIO, "I/O error")

        self.patch(behindlog, "empty", cut_then_fail)
        with capturedLogs():
            catch_up.corrected_by("a", succeed(None))  # (compacted: the snapshot holds b)
        self.patch(behindlog, "empty", empty)
        self.refuse(catch_up, "c")
        self.assertEqual(self.saved(), {"b": (THING, 0.0), "c": (THING, 0.0)})
        (self.dir / behindlog.LOG_FILE).unlink()
        self.refuse(catch_up, "d")
        self.refuse(catch_up, "e")
        self.assertEqual(self.saved(), {"b": (THING, 0.0), "d": (THING, 0.0), "e": (THING, 0.0)})

    def test_a_torn_last_record_is_ignored_and_cut_off(self) -> None:
        """A crash while a record was appended leaves part of it, or a record whose CRC does not
        match: the marks before it are read, it is ignored (a warning says how many bytes), and
        the next append cuts it off, so the records after it are read too."""
        catch_up = self.catch_up()
        self.refuse(catch_up, "a")
        log = self.dir / behindlog.LOG_FILE
        whole = log.read_bytes()
        record = behindlog.encode("b", behindlog.BehindMark(THING, 1.0))
        damaged = record[:9] + record[9:].replace(b"1.0", b"2.0")
        for tail in (record[:-1], record[:20], damaged):
            log.write_bytes(whole + tail)
            with capturedLogs() as events:
                catch_up = self.catch_up()
            self.assertEqual(set(catch_up.marks), {"a"})
            self.assertEqual([formatEvent(e).split(": ", 2)[2] for e in events if e["log_level"].name == "warn"],
                             [f"the last {len(tail)} bytes are no whole record (a write cut by a crash or a power"
                              " cut); ignored"])
        self.refuse(catch_up, "c")
        self.assertEqual(log.read_bytes(), whole + behindlog.encode("c", behindlog.BehindMark(THING, 0.0)))
        self.assertEqual(set(self.saved()), {"a", "c"})

    def test_the_whole_file_of_before_is_read(self) -> None:
        """An upgrade keeps the marks: shadows-behind.json as the gateway wrote it before the
        log is the snapshot, read at the start; later changes go to the log."""
        (self.dir / BEHIND_FILE).write_bytes(b'{"shadows": {"": {"thing": "acme:gw1", "since": 3},'
                                             b' "f": {"thing": "acme:gw1:c", "since": 4.5}}}')
        catch_up = self.catch_up()
        self.assertEqual({s: (m.thing, m.since) for s, m in catch_up.marks.items()},
                         {"": (THING, 3.0), "f": ("acme:gw1:c", 4.5)})
        catch_up.corrected_by("f", succeed(None))
        self.refuse(catch_up, "g")
        self.assertEqual(self.saved(), {"": (THING, 3.0), "g": (THING, 0.0)})

    def test_a_snapshot_whose_since_is_no_time_is_set_aside(self) -> None:
        """A shadows-behind.json whose ``since`` is a number no clock gives (an integer too large
        for a float, NaN, infinity: a file damaged or edited by hand) is set aside as any file
        that is not such a file: the integer made the load fail (OverflowError), and with it the
        sync's start; infinity and NaN went on to the snapshot's ``behind_since``."""
        path = self.dir / BEHIND_FILE
        for since in (b"1" + b"0" * 400, b"NaN", b"Infinity", b"-1e999"):
            content = b'{"shadows": {"f": {"thing": "acme:gw1", "since": %s}}}' % since
            path.write_bytes(content)
            with capturedLogs() as events:
                self.assertEqual(self.saved(), {})
            self.assertEqual(path.with_name(BEHIND_FILE + ".damaged").read_bytes(), content)
            self.assertEqual([formatEvent(e).split(" (")[0] for e in events if "unusable" in e["log_format"]],
                             [f"twin: unusable {path}"])

    def test_the_answer_waits_for_the_mark_to_be_durable(self) -> None:
        """Persist, then answer: the reason a change's response gives for the cloud being behind
        comes once the shadow's mark is on disk (a crash before it would lose the only record that
        a deleted thing's shadow must be deleted), or its write failed (logged; written again
        later: the response does not wait for the disk to have room)."""
        runner = HeldRunner()
        catch_up = self.catch_up(runner)
        runner.run_one()  # (the load)
        answer = self.refuse(catch_up, "a")
        again = self.refuse(catch_up, "a")  # (its mark is still on its way)
        later = self.refuse(catch_up, "b")  # (written after the write under way)
        self.assertNoResult(answer)
        self.assertNoResult(again)
        runner.run_one()
        self.assertIn("journal stream 'shadow-aws' is full", self.successResultOf(answer))
        self.successResultOf(again)
        self.assertNoResult(later)
        with capturedLogs():
            runner.run_one(OSError(errno.ENOSPC, "No space left on device"))
        self.successResultOf(later)
        self.assertEqual(set(self.saved()), {"a"})
        catch_up.corrected_by("a", succeed(None))  # (and b's mark, again)
        runner.run_one()
        self.assertEqual(set(self.saved()), {"b"})
