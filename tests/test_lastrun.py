"""The run record: whether the previous run on a state directory stopped cleanly, and how often
runs there did not (docs/install.md, telling a power cut; docs/readside.md, previous_stop)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import formatEvent
from twisted.trial.unittest import SynchronousTestCase

from gateway import lastrun
from gateway.admin.tables import previous_stop
from gateway.journal.snapshot import JournalSnapshot, LatencySnapshot, LossCount, StreamSnapshot
from gateway.journal.stats import Histogram
from gateway.lastrun import (CLEAN, KILLED, NONE, REBOOT, RUN_FILE, STOP_CUT_SHORT, UNCLEAN, PreviousStop,
                             RunRecord, journal_recovery, unclean_line)
from gateway.state import StateDirService
from tests.logevents import capture_log_events

BOOT = "1b3a5c8e-0000-4000-8000-000000000001"


def stream(name: str, losses: tuple[LossCount, ...] = ()) -> StreamSnapshot:
    """An empty stream's snapshot with ``losses``."""
    return StreamSnapshot(name, 0, 0, 0, 0, 0.0, 0.0, 1, 0, LatencySnapshot(0, 0.0, 0.0, 0.0), 0,
                          Histogram().snapshot(), (), losses)


class Times:
    """A wall clock that reads what the test sets."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class RunRecordTests(SynchronousTestCase):
    """:class:`RunRecord`: begun at each start, ended at each clean stop."""

    def setUp(self) -> None:
        self.state = Path(self.mktemp())
        self.state.mkdir()
        self.times = Times()

    def record(self, boot: str = BOOT) -> RunRecord:
        return RunRecord(self.state, self.times, boot)

    def test_a_first_start_knows_no_previous_run(self) -> None:
        """A first start on an empty state directory is neither clean nor unclean; it records
        this run as running (durably, in run.json)."""
        self.assertEqual(self.record().begin(4711), PreviousStop(NONE))
        self.assertEqual(json.loads((self.state / RUN_FILE).read_text()),
                         {"pid": 4711, "started_at": self.times.now, "boot_id": BOOT, "stopped_at": None,
                          "unclean_stops": 0, "last_unclean_at": None})

    def test_a_clean_stop_is_told_as_clean(self) -> None:
        """A run that ended its stop is told as clean at the next start, with its pid, start and
        stop times; no unclean stop is counted."""
        first = self.record()
        first.begin(4711)
        started = self.times.now
        self.times.now += 3600
        first.end()
        self.times.now += 10
        self.assertEqual(self.record().begin(4800), PreviousStop(CLEAN, started + 3600, 4711, started, "", 0, None))

    def test_a_killed_run_is_unclean_and_counted(self) -> None:
        """A run that never ended its stop (SIGKILL: same boot) is told as unclean, killed, last
        known alive when its record was last marked; the count grows with each and stays
        after a clean stop, which remembers when the latest one was last alive."""
        first = self.record()
        first.begin(4711)
        os.utime(self.state / RUN_FILE, (1_800_000_060, 1_800_000_060))  # (its last mark of life)
        self.times.now += 120
        previous = self.record().begin(4800)
        self.assertEqual(previous, PreviousStop(UNCLEAN, 1_800_000_060.0, 4711, 1_800_000_000.0, KILLED, 1,
                                                1_800_000_060.0))
        third = self.record()
        self.assertEqual(third.begin(4900).unclean_stops, 2)
        third.end()
        after = self.record().begin(5000)
        self.assertEqual((after.kind, after.pid, after.unclean_stops), (CLEAN, 4900, 2))
        self.assertIsNotNone(after.last_unclean_at)

    def test_a_run_killed_soon_after_its_start_was_alive_no_earlier_than_its_start(self) -> None:
        """The record's modification time comes from the kernel's coarse clock, a few ms behind
        the one that wrote ``started_at``: a run killed before its first mark of life is told
        last known alive at its start, never before it."""
        self.record().begin(4711)
        os.utime(self.state / RUN_FILE, (1_799_999_999.996, 1_799_999_999.996))  # (4 ms before its start)
        self.times.now += 120
        previous = self.record().begin(4800)
        self.assertEqual((previous.kind, previous.started_at, previous.at, previous.last_unclean_at),
                         (UNCLEAN, 1_800_000_000.0, 1_800_000_000.0, 1_800_000_000.0))

    def test_a_run_the_machine_went_down_under_is_a_reboot(self) -> None:
        """A record of another boot that says it runs: the machine started again under the
        gateway (a power cut, a panic, a watchdog)."""
        self.record("an-earlier-boot").begin(4711)
        self.assertEqual(self.record().begin(4800).cause, REBOOT)

    def test_a_stop_that_began_and_did_not_end_is_cut_short(self) -> None:
        """The lock file named the previous run's pid as stopping: its stop was cut short (a
        SIGKILL after systemd's TimeoutStopSec); a stopping pid of another run is not it."""
        self.record().begin(4711)
        self.assertEqual(self.record().begin(4800, stopping_pid="4711").cause, STOP_CUT_SHORT)
        self.assertEqual(self.record().begin(4900, stopping_pid="4711").cause, KILLED)

    def test_alive_marks_the_record(self) -> None:
        """The mark of life sets the record's modification time, and no more."""
        record = self.record()
        record.begin(4711)
        path = self.state / RUN_FILE
        before = path.read_bytes()
        os.utime(path, (1000, 1000))
        record.alive()
        self.assertGreater(path.stat().st_mtime, 1000)
        self.assertEqual(path.read_bytes(), before)

    def test_a_damaged_record_is_set_aside(self) -> None:
        """A record that is no JSON is moved aside, said in a warning, and the previous run is
        unknown (the count starts again)."""
        events = capture_log_events(self)
        (self.state / RUN_FILE).write_text("{not json")
        self.assertEqual(self.record().begin(4711), PreviousStop(NONE))
        self.assertEqual((self.state / f"{RUN_FILE}.damaged").read_text(), "{not json")
        self.assertIn("holds no run record", " ".join(formatEvent(e) for e in events))

    def test_a_record_of_another_json_kind_is_set_aside(self) -> None:
        """JSON that is no object (a list, a number, null) is no run record either: moved aside
        with a warning naming the file, as one that is no JSON (not read past in silence)."""
        for text in ("[1, 2]", "42", "null"):
            events = capture_log_events(self)
            (self.state / RUN_FILE).write_text(text)
            self.assertEqual(self.record().begin(4711), PreviousStop(NONE))
            self.assertEqual((self.state / f"{RUN_FILE}.damaged").read_text(), text)
            told = [formatEvent(e) for e in events if "holds no run record" in formatEvent(e)]
            self.assertEqual(len(told), 1)
            self.assertIn(str(self.state / RUN_FILE), told[0])
            (self.state / f"{RUN_FILE}.damaged").unlink()
            self.record().end()

    def test_a_record_of_odd_values_is_read_as_far_as_it_goes(self) -> None:
        """A record whose numbers are not numbers (a string, JSON's Infinity or NaN, a negative
        count) stops no start: what cannot be read is unknown, the count starts from zero."""
        (self.state / RUN_FILE).write_text('{"pid": "x", "started_at": Infinity, "stopped_at": NaN,'
                                           ' "unclean_stops": -4, "last_unclean_at": true}')
        previous = self.record().begin(4711)
        self.assertEqual((previous.kind, previous.pid, previous.started_at, previous.unclean_stops,
                          previous.last_unclean_at), (UNCLEAN, None, None, 1, previous.at))

    def test_a_record_of_times_out_of_range_stops_no_start(self) -> None:
        """Times no clock can write (``1e20``, past time_t) are read; the start's line and the
        status's say them unknown instead of failing the start with an OverflowError."""
        (self.state / RUN_FILE).write_text('{"pid": 7, "started_at": 1e20, "stopped_at": null,'
                                           ' "unclean_stops": 1, "last_unclean_at": 1e300}')
        previous = self.record().begin(4711)
        line = unclean_line(previous)
        self.assertTrue(line is not None and line.startswith(
            "the previous run did not stop cleanly (pid 7, started -, last known alive "), line)
        self.assertIn("unclean stops on this state directory: 2, the last known alive -",
                      previous_stop({"kind": "clean", "at": 1e20, "unclean_stops": 2, "last_unclean_at": 1e300}))

    def test_a_record_not_written_leaves_no_wrong_one(self) -> None:
        """A disk that refuses this run's record (full) makes the start say so and remove the
        previous run's clean record: the next start knows no previous run rather than a clean
        stop this one never made."""
        first = self.record()
        first.begin(4711)
        first.end()
        events = capture_log_events(self)

        def full(*args: Any, **kwargs: Any) -> None:
            raise OSError(28, "No space left on device")

        self.patch(lastrun, "write_json_atomically", full)
        refused = self.record()
        self.assertEqual(refused.begin(4800).kind, CLEAN)
        self.assertFalse((self.state / RUN_FILE).exists())
        refused.alive()  # (no record to mark: no second warning)
        self.assertEqual([formatEvent(e) for e in events],
                         [f"cannot record this run's start in {self.state / RUN_FILE} (No space left on device):"
                          " the next start cannot tell how this run ended"])


class UncleanLineTests(SynchronousTestCase):
    """The one line a start logs after an unclean stop."""

    def test_the_line_says_what_is_known(self) -> None:
        previous = PreviousStop(UNCLEAN, 1_800_000_060.0, 4711, 1_800_000_000.0, REBOOT, 3, 1_800_000_060.0)
        self.assertEqual(unclean_line(previous, "the journal cut a torn tail from link-cloud"),
                         "the previous run did not stop cleanly (pid 4711, started 2027-01-15T08:00:00Z, last known"
                         " alive 2027-01-15T08:01:00Z): the machine has started again since (a power cut, a kernel"
                         " panic, a watchdog reset); the journal cut a torn tail from link-cloud; this state directory"
                         " has seen that 3 times")

    def test_a_record_without_a_pid_says_unknown(self) -> None:
        line = unclean_line(PreviousStop(UNCLEAN, None, None, None, KILLED, 1))
        self.assertTrue(line is not None and line.startswith(
            "the previous run did not stop cleanly (pid unknown, started unknown, last known alive unknown)"), line)

    def test_no_line_after_a_clean_stop_or_none(self) -> None:
        self.assertIsNone(unclean_line(PreviousStop(CLEAN, 1.0, 1, 0.0)))
        self.assertIsNone(unclean_line(PreviousStop()))

    def test_journal_recovery(self) -> None:
        """The streams whose torn tail was cut, and the records damaged data took."""
        self.assertEqual(journal_recovery(JournalSnapshot("/j", (stream("link-a"),))),
                         "the journal found no torn or damaged data")
        damaged = JournalSnapshot("/j", (stream("link-a", losses=(LossCount("torn", 0),)),
                                         stream("link-b", losses=(LossCount("corrupt", 2), LossCount("torn", 1)))))
        self.assertEqual(journal_recovery(damaged),
                         "the journal cut a torn tail from link-a, link-b; the journal lost 2 records to damaged data")


class StateDirRunTests(SynchronousTestCase):
    """The state directory's service keeps the run record: begun as it starts, ended as it
    stops (last of all), marked alive in between."""

    def test_stop_then_start_is_clean_kill_then_start_is_not(self) -> None:
        path = Path(self.mktemp())
        first = StateDirService(path)
        first.startService()
        self.assertEqual(first.previous_stop.kind, NONE)
        first.stopService()
        second = StateDirService(path)
        second.startService()
        self.assertEqual((second.previous_stop.kind, second.previous_stop.pid), (CLEAN, os.getpid()))
        second.stopping()  # (a SIGTERM, then a SIGKILL before the stop ends: the lock goes with the process)
        for fd in second._locks:
            os.close(fd)
        third = StateDirService(path)
        third.startService()
        self.addCleanup(third.stopService)
        self.assertEqual((third.previous_stop.kind, third.previous_stop.cause, third.previous_stop.unclean_stops),
                         (UNCLEAN, STOP_CUT_SHORT, 1))

    def test_marked_alive_every_interval(self) -> None:
        """With a clock the service marks its run alive every ALIVE_INTERVAL seconds, and no
        more once stopped."""
        path, clock = Path(self.mktemp()), Clock()
        service = StateDirService(path, clock=clock)
        service.startService()
        record = path / RUN_FILE
        os.utime(record, (1000, 1000))
        clock.advance(lastrun.ALIVE_INTERVAL - 1)
        self.assertEqual(record.stat().st_mtime, 1000)
        clock.advance(1)
        self.assertGreater(record.stat().st_mtime, 1000)
        service.stopService()
        self.assertEqual(clock.getDelayedCalls(), [])
