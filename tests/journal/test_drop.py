"""Dropping a stream the configuration no longer uses (JournalService.drop): refused while in
use or holding records not acknowledged (unless forced, then counted lost), closed before its
directory is renamed aside and deleted, and an aside directory a kill left deleted at start."""

from __future__ import annotations

import os
from pathlib import Path

from twisted.internet.task import Clock
from twisted.logger import formatEvent
from twisted.trial.unittest import SynchronousTestCase

from gateway.errors import JournalError
from gateway.filelayer import OSFiles
from gateway.journal.dropping import ASIDE_PREFIX
from gateway.journal.errors import JournalClosedError, StreamInUseError, StreamNotDrainedError, UnknownStreamError
from gateway.journal.service import JournalService
from gateway.journal.settings import JournalSettings, StreamSettings
from gateway.journal.snapshot import DroppedStream
from tests.journal.helpers import appended, record, run_now
from tests.logevents import capture_log_events

USERS = {"link-cloud": "the link 'cloud'", "broker-state": "the broker's state log"}


class Killed(Exception):
    """The simulated gateway was killed at this file operation."""


class RecordingFiles(OSFiles):
    """The real file layer, noting the operations a drop makes, and killed at one if told."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[str, str]] = []
        self.kill_at: str | None = None

    def _note(self, op: str, path: str) -> None:
        self.ops.append((op, path))
        if op == self.kill_at:
            raise Killed(op)

    def close(self, path: str) -> None:
        self._note("close", path)
        super().close(path)

    def replace(self, src: str, dst: str) -> None:
        self._note("replace", src)
        super().replace(src, dst)

    def remove_tree(self, path: str) -> None:
        self._note("remove_tree", path)
        super().remove_tree(path)


class DropTests(SynchronousTestCase):
    """A started journal on real files, its I/O jobs run at once, on a Clock."""

    def setUp(self) -> None:
        self.state = Path(self.mktemp()).absolute()
        self.files = RecordingFiles()
        self.clock = Clock()
        self.journal = self.start()

    def start(self) -> JournalService:
        journal = JournalService(JournalSettings(defaults=StreamSettings(min_free_bytes=0)), self.state,
                                 self.clock, files=self.files, run=run_now, in_use=USERS)
        journal.startService()
        self.addCleanup(lambda: journal.running and journal.stopService())
        return journal

    def old_stream(self, records: int, acked: int) -> str:
        """Stream ``link-old`` (a link removed from the configuration) with ``records`` records,
        its cursor ``cloud`` having acknowledged the first ``acked``; its directory."""
        stream = self.journal.stream("link-old")
        self.successResultOf(stream.cursor("cloud"))
        for i in range(1, records + 1):
            self.successResultOf(appended(stream, record(i)))
        if acked:
            self.successResultOf(stream.ack("cloud", acked))
        return stream.directory

    def test_drops_a_stream_no_link_uses(self) -> None:
        """A stream whose cursor acknowledged everything is deleted whole, directory and all,
        nothing counted lost; the journal forgets it, and no aside directory is left."""
        directory = self.old_stream(3, 3)
        dropped = self.successResultOf(self.journal.drop("link-old"))
        self.assertEqual((dropped.name, dropped.lost, dropped.lost_bytes), ("link-old", 0, 0))
        self.assertFalse(os.path.exists(directory))
        self.assertEqual(os.listdir(os.path.dirname(directory)), [])
        self.assertNotIn("link-old", self.journal.streams())
        snapshot = self.journal.snapshot()
        self.assertNotIn("link-old", [s.name for s in snapshot.streams])
        self.assertEqual(snapshot.dropped, (DroppedStream("link-old", 0, 0, self.clock.seconds()),))

    def test_the_descriptors_are_closed_before_the_rename(self) -> None:
        """The tail segment's kept descriptor is closed before the directory is renamed aside,
        and the aside directory is what is deleted."""
        directory = self.old_stream(2, 2)
        self.files.ops.clear()
        self.successResultOf(self.journal.drop("link-old"))
        ops = self.files.ops
        renamed = ops.index(("replace", directory))
        segment = os.path.join(directory, "%020d.seg" % 1)
        self.assertIn(("close", segment), ops[:renamed])
        aside = os.path.join(os.path.dirname(directory), ASIDE_PREFIX + "link-old")
        self.assertEqual(ops[-1], ("remove_tree", aside))

    def test_a_stream_in_use_is_refused(self) -> None:
        """A stream the configuration uses is not dropped: the error says what uses it."""
        stream = self.journal.stream("link-cloud")
        self.successResultOf(appended(stream, record(1)))
        error = self.assertRaises(StreamInUseError, self.journal.drop, "link-cloud", True)
        self.assertIn("in use by the configuration (the link 'cloud')", str(error))
        self.assertTrue(os.path.exists(stream.directory))
        self.successResultOf(appended(stream, record(2)))

    def test_an_unknown_stream(self) -> None:
        """A name the journal has no stream of is refused as unknown."""
        self.assertRaises(UnknownStreamError, self.journal.drop, "link-nope")

    def test_records_not_acknowledged_refuse_the_drop(self) -> None:
        """Without force, records its cursors have not acknowledged refuse the drop, with
        their number; the stream is left as it was and takes appends."""
        directory = self.old_stream(5, 2)
        failure = self.failureResultOf(self.journal.drop("link-old"), StreamNotDrainedError)
        self.assertEqual(failure.value.records, 3)
        self.assertIn("3 records not acknowledged", str(failure.value))
        self.assertIn("holds 1 record not acknowledged", str(StreamNotDrainedError("link-old", 1)), "not '1 records'")
        self.assertTrue(os.path.exists(directory))
        self.successResultOf(appended(self.journal.stream("link-old"), record(6)))
        self.assertEqual(self.journal.snapshot().dropped, ())

    def test_a_stream_without_cursor_holds_only_unacknowledged_records(self) -> None:
        """A stream no cursor reads: every record it keeps counts as not acknowledged."""
        stream = self.journal.stream("link-old")
        self.successResultOf(appended(stream, record(1)))
        failure = self.failureResultOf(self.journal.drop("link-old"), StreamNotDrainedError)
        self.assertEqual(failure.value.records, 1)

    def test_force_counts_the_records_lost_and_logs_once(self) -> None:
        """With force the stream goes, and the records not acknowledged are counted lost
        (reason ``dropped``), in the journal's snapshot, with one warning."""
        events = capture_log_events(self)
        directory = self.old_stream(5, 2)
        held = self.journal.stream("link-old").stats().bytes
        dropped = self.successResultOf(self.journal.drop("link-old", force=True))
        # its bytes are all the stream held (docs/journal.md), as a drop by the limits counts a segment's
        self.assertEqual((dropped.lost, dropped.lost_bytes), (3, held))
        self.assertFalse(os.path.exists(directory))
        self.assertEqual(self.journal.snapshot().dropped, (dropped,))
        warnings = [formatEvent(e) for e in events if "dropped by the operator" in (e.get("log_format") or "")]
        self.assertEqual(warnings, [f"journal link-old: dropped by the operator with 3 records not acknowledged by"
                                    f" its cursors (seq 3-5, {dropped.lost_bytes} bytes): counted lost (dropped)"])

    def test_the_snapshot_says_which_streams_are_not_in_use(self) -> None:
        """``in_use`` is false for a stream the configuration does not use, true otherwise."""
        self.old_stream(1, 1)
        self.journal.stream("link-cloud")
        in_use = {s.name: s.in_use for s in self.journal.snapshot().streams}
        self.assertEqual(in_use, {"link-cloud": True, "link-old": False})

    def test_a_second_drop_meanwhile_and_a_stopped_journal(self) -> None:
        """The journal refuses a drop once stopped; a dropped stream is unknown after."""
        self.old_stream(1, 1)
        self.successResultOf(self.journal.drop("link-old"))
        self.assertRaises(UnknownStreamError, self.journal.drop, "link-old")
        self.journal.stream("link-gone")
        self.successResultOf(self.journal.stopService())
        self.assertRaises(JournalClosedError, self.journal.drop, "link-gone")

    def test_killed_before_the_rename_the_stream_is_whole(self) -> None:
        """A kill before the rename leaves the stream whole: the next start has every record."""
        self.old_stream(3, 1)
        self.files.kill_at = "replace"
        self.failureResultOf(self.journal.drop("link-old", force=True), JournalError)
        self.files.kill_at = None
        self.successResultOf(self.journal.stopService())
        journal = self.start()
        stream = journal.streams()["link-old"]
        self.assertEqual(stream.unacked("cloud"), 2)

    def test_killed_after_the_rename_the_next_start_deletes_what_is_left(self) -> None:
        """A kill after the rename leaves the aside directory, which the next start deletes
        (saying so); the stream is gone."""
        directory = self.old_stream(3, 3)
        aside = os.path.join(os.path.dirname(directory), ASIDE_PREFIX + "link-old")
        self.files.kill_at = "remove_tree"
        self.failureResultOf(self.journal.drop("link-old"), JournalError)
        self.assertEqual((os.path.exists(directory), os.path.exists(aside)), (False, True))
        self.files.kill_at = None
        self.successResultOf(self.journal.stopService())
        events = capture_log_events(self)
        journal = self.start()
        self.assertFalse(os.path.exists(aside))
        self.assertNotIn("link-old", journal.streams())
        self.assertIn(f"journal: removed {ASIDE_PREFIX}link-old, left by a drop cut short",
                      [formatEvent(e) for e in events])
