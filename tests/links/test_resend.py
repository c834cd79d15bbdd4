"""What a restart sends again: at most ``resend_limit`` records, never the live ones already acknowledged."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from gateway.journal.errors import JournalWriteError
from gateway.journal.record import Record, encode, with_seq
from gateway.journal.settings import StreamSettings
from gateway.journal.stream import WRITE_BACKOFF_S
from gateway.links.forwarder import CURSOR_ACK_INTERVAL, Forwarder
from tests.journal.helpers import appended, open_stream, record
from tests.journal.powercut import PowerCutFiles
from tests.links.test_protocol import Wire, filled

FRAME = len(encode(record(1), 1))


class ResendLimitTests(SynchronousTestCase):
    """Records sent whose acknowledgement is not durable yet never exceed ``resend_limit``."""

    def test_sending_waits_for_the_cursor_save(self) -> None:
        """However slow the cursor saves are, what was sent and is not covered by a finished
        save (what a crash would send again) stays within the limit; the forwarder saves
        once half the limit is acknowledged, without waiting for the timer, stops at the
        limit and goes on when the save finishes; everything gets through."""
        stream = filled(300)
        saves: list[tuple[int, list[tuple[int, int]], Deferred[None]]] = []

        def slow_ack(cursor: str, seq: int, above: Any = ()) -> Deferred[None]:
            d: Deferred[None] = Deferred()
            saves.append((seq, list(above), d))
            return d

        stream.ack = slow_ack  # type: ignore[method-assign]
        forwarder = Forwarder(stream, "cloud", 8, Clock(), resend_limit=20)
        wire = Wire()
        durable: set[int] = set()

        def exposed() -> int:
            return len({int(s[1]) + 1 for s in wire.sent} - durable)

        def finish_save() -> None:
            seq, above, d = saves.pop(0)
            durable.update(range(1, seq + 1))
            for first, last in above:
                durable.update(range(first, last + 1))
            d.callback(None)

        forwarder.attach(wire)  # type: ignore[arg-type]
        acked = 0
        worst = 0
        stalls = 0
        for _ in range(1000):
            if acked < len(wire.sent):  # the cloud acknowledges everything sent so far
                ids = [s[3] for s in wire.sent[acked:]]
                acked = len(wire.sent)
                forwarder.pubacks(ids)
            elif saves:
                stalls += 1  # nothing more goes until a save finishes
                finish_save()
            else:
                break
            worst = max(worst, exposed())
            self.assertLessEqual(exposed(), 20)
        self.assertEqual((len(wire.sent), worst), (300, 20))
        self.assertGreater(stalls, 10)
        self.assertEqual(durable, set(range(1, 301)))  # (the last save at once: half the limit was reached)

    def test_resend_limit_below_the_window(self) -> None:
        """A limit below the window bounds the publishes in flight too."""
        stream = filled(10)
        forwarder = Forwarder(stream, "cloud", 8, Clock(), resend_limit=3)
        wire = Wire()
        forwarder.attach(wire)  # type: ignore[arg-type]
        self.assertEqual(len(wire.sent), 3)
        forwarder.pubacks([s[3] for s in wire.sent])
        self.assertEqual(len(wire.sent), 6)

    def test_bad_limit(self) -> None:
        """A limit below one is refused with the reason."""
        self.assertRaises(ValueError, Forwarder, filled(1), "cloud", 8, Clock(), resend_limit=0)


class CursorSaveFailureTests(SynchronousTestCase):
    """A cursor save that keeps failing (a full disk) is tried again every second and
    logged once a minute, not once a second with a traceback; its recovery is logged."""

    def test_logged_once_a_minute_then_recovery(self) -> None:
        stream = filled(5)
        refusing = [True]
        real_ack = stream.ack

        def ack(cursor: str, seq: int, above: Any = ()) -> Deferred[None]:
            if refusing[0]:
                return fail(OSError(28, "No space left on device"))
            return real_ack(cursor, seq, above)

        stream.ack = ack  # type: ignore[method-assign]
        clock = Clock()
        forwarder = Forwarder(stream, "cloud", 8, clock, resend_limit=2, link="hono")
        wire = Wire()
        with capturedLogs() as logs:
            forwarder.attach(wire)  # type: ignore[arg-type]
            forwarder.pubacks([s[3] for s in wire.sent])
            for _ in range(150):  # 150 s of retries, one a second
                clock.advance(1)
            refusing[0] = False
            clock.advance(1)
            while len(wire.sent) < 5:  # sending had waited for the save: it goes on
                forwarder.pubacks([s[3] for s in wire.sent[-2:]])
                clock.advance(1)
            forwarder.pubacks([s[3] for s in wire.sent[-1:]])
            clock.advance(1)
        errors = [formatEvent(e) for e in logs if e["log_level"] == LogLevel.error]
        self.assertEqual(len(errors), 3, errors)  # at the first failure, then after 60 and 120 s
        # every link's cursor is "cloud": the line names the link (a gateway with two links)
        self.assertIn("link hono: cursor cloud: saving it failed (1 in a row): [Errno 28] No space left on device",
                      errors[0])
        self.assertFalse([e for e in logs if e.get("log_failure") is not None])
        infos = [formatEvent(e) for e in logs if "saved again" in formatEvent(e)]
        self.assertEqual(len(infos), 1, infos)
        self.assertTrue(infos[0].startswith("link hono: cursor cloud: saved again after"), infos)
        self.assertEqual(stream.acked["cloud"], 5)


class LiveRangesTests(SynchronousTestCase):
    """Live records acknowledged while the backlog drains are not sent again after a restart."""

    def test_restart_skips_live_records_acknowledged(self) -> None:
        """A backlog drains with live records interleaved; the cloud has acknowledged all
        but one backlog record when the gateway dies: the next run sends that one and the
        backlog not sent yet, and none of the live records."""
        files, clock = PowerCutFiles(), Clock()
        clock.advance(100)
        stream = open_stream(files, clock=clock)
        self.successResultOf(stream.cursor("cloud"))
        for i in range(40):
            appended(stream, Record("t", b"backlog %d" % i, 1, received=50.0))
        forwarder = Forwarder(stream, "cloud", 4, clock)
        wire = Wire()
        forwarder.attach(wire)  # type: ignore[arg-type]
        for i in range(11):
            if i < 10:
                record = Record("t", b"live %d" % i, 1, received=clock.seconds())
                seq = self.successResultOf(appended(stream, record))
                forwarder.offer(with_seq(record, seq))
            acked = {s[1] for s in wire.sent if s[1] != b"backlog 5"}
            forwarder.pubacks([s[3] for s in wire.sent if s[1] in acked])  # (ids acked before are ignored)
        self.assertEqual(len([p for p in acked if p.startswith(b"live")]), 10)
        clock.advance(CURSOR_ACK_INTERVAL)
        forwarder.detach()  # SIGKILL: nothing more happens in this run

        stream = open_stream(files, clock=clock)
        again = Forwarder(stream, "cloud", 4, clock)
        wire = Wire()
        again.attach(wire)  # type: ignore[arg-type]
        for _ in range(100):
            again.pubacks([s[3] for s in wire.sent[-4:]])
        self.assertEqual([s[1] for s in wire.sent],
                         [b"backlog %d" % i for i in range(40) if b"backlog %d" % i not in acked])


    def test_live_records_the_cursor_never_brings_are_not_remembered(self) -> None:
        """Live records sent beside a backlog and acknowledged, their ranges saved before the
        cursor reaches them: the journal skips them, so the cursor never brings them; the
        forwarder forgot none of them (one seq each, for the life of the link, while a
        backlog drained), and sends each once."""
        files, clock = PowerCutFiles(), Clock()
        clock.advance(100)
        stream = open_stream(files, clock=clock)
        self.successResultOf(stream.cursor("cloud"))
        for i in range(600):  # (more than one read of the cursor: it is behind the live records)
            appended(stream, Record("t", b"backlog %d" % i, 1, received=50.0))
        forwarder = Forwarder(stream, "cloud", 4, clock)
        wire = Wire()
        forwarder.attach(wire)  # type: ignore[arg-type]
        for i in range(10):
            record = Record("t", b"live %d" % i, 1, received=clock.seconds())
            seq = self.successResultOf(appended(stream, record))
            forwarder.offer(with_seq(record, seq))
            forwarder.pubacks([s[3] for s in wire.sent])
        clock.advance(CURSOR_ACK_INTERVAL)  # (the live ranges are saved: the journal skips them)
        while len(wire.sent) < 610:
            forwarder.pubacks([s[3] for s in wire.sent[-4:]])
        self.assertEqual(sorted(s[1] for s in wire.sent),
                         sorted([b"backlog %d" % i for i in range(600)] + [b"live %d" % i for i in range(10)]))
        self.assertEqual(len(forwarder._taken_live), 0)


class DroppedWhileSaveFailsTests(SynchronousTestCase):
    """drop-oldest on a full disk, while the cursor's save fails: what the cloud acknowledged
    is delivered, not lost, though the cursor on disk is behind it."""

    def test_acknowledged_records_dropped_are_no_loss(self) -> None:
        """The cloud acknowledges 1-4 (their save fails: the disk is full), then 5-8 (held
        for the save's retry); drop-oldest deletes 1-8 to make room: no loss. After a crash
        the cursor on disk is behind the oldest record kept: the next run resumes there
        (those records are gone), says so in its log, and counts no loss."""
        files, clock = PowerCutFiles(), Clock()
        settings = StreamSettings(segment_bytes=4 * FRAME, min_free_bytes=0)
        stream = open_stream(files, settings, clock)
        self.successResultOf(stream.cursor("cloud"))
        for i in range(1, 13):
            appended(stream, record(i))
        files.capacity = files.used()  # the disk is full
        forwarder = Forwarder(stream, "cloud", 8, clock)
        wire = Wire()
        with capturedLogs() as logs:
            forwarder.attach(wire)  # type: ignore[arg-type]
            forwarder.pubacks([s[3] for s in wire.sent[:4]])  # the save fails
            forwarder.pubacks([s[3] for s in wire.sent[4:8]])  # (saved at the retry, in 1 s)
            self.failureResultOf(appended(stream, record(13)), JournalWriteError)
            clock.advance(WRITE_BACKOFF_S)  # (the retry of the cursor save is not due yet)
            for i in range(13, 18):  # drop-oldest deletes 1-4, then 5-8
                self.successResultOf(appended(stream, record(i)))
        self.assertEqual(stream.segments[0].first_seq, 9)
        self.assertEqual(stream.loss_report().entries, ())
        self.assertFalse([e for e in logs if "dropped seq" in formatEvent(e)])
        forwarder.detach()  # SIGKILL: the cursor on disk says 0

        files.capacity = 1 << 30
        with capturedLogs() as logs:
            stream = open_stream(files, settings, clock)
        self.assertEqual(stream.reader.cursors["cloud"].saved, 0)
        self.assertEqual(self.successResultOf(stream.read("cloud", 1))[0].seq, 9)
        self.assertEqual(stream.loss_report().entries, ())
        self.assertEqual([formatEvent(e) for e in logs if "cursor cloud" in formatEvent(e)],
                         ["journal s: cursor cloud resumes at seq 9, the oldest kept: seqs 1-8 were deleted"
                          " after its last save (acknowledged but not saved yet, or dropped: a drop is"
                          " in the loss report)"])


class ReadFailureTests(SynchronousTestCase):
    """A read of the link's stream that fails (out of file descriptors: EMFILE opening a
    segment; an I/O error) is tried again: the link does not stall on it."""

    def test_a_failed_read_is_tried_again_and_logged_once_a_minute(self) -> None:
        """After a failed read nothing woke the forwarder again: no read was under way, and it
        waited for no stream wake-up, so an idle link sent nothing more until its next
        reconnect (records waited in the journal for hours on a link that was up), and each
        failure was a traceback. Now the read is tried again after READ_RETRY_INTERVAL; the
        failure is one error line at most once a minute, and the records go once it works."""
        from gateway.links.forwarder import READ_FAILURE_LOG_INTERVAL, READ_RETRY_INTERVAL
        stream = filled(0)
        clock = Clock()
        forwarder = Forwarder(stream, "cloud", 8, clock, link="cloud")
        wire = Wire()
        read = stream.read
        stream.read = lambda *args, **kwargs: fail(OSError(24, "Too many open files"))  # type: ignore[method-assign]
        with capturedLogs() as events:
            forwarder.attach(wire)  # type: ignore[arg-type]
            stream.append(Record("t", b"one", 1, received=-1.0))
            clock.pump([READ_RETRY_INTERVAL] * int(READ_FAILURE_LOG_INTERVAL / READ_RETRY_INTERVAL))
            stream.read = read  # type: ignore[method-assign]
            clock.pump([READ_RETRY_INTERVAL] * 2)
        self.assertEqual([s[1] for s in wire.sent], [b"one"])
        lines = [formatEvent(e) for e in events]
        self.assertEqual(len(lines), 3, lines)
        self.assertEqual(lines[0], "link cloud: reading its journal stream failed (1 in a row; tried again every 1 s,"
                                   " logged at most once a minute): [Errno 24] Too many open files")
        self.assertTrue(lines[1].startswith("link cloud: reading its journal stream failed ("), lines)
        self.assertRegex(lines[2], r"^link cloud: its journal stream is read again, after \d+ failed reads$")
        self.assertFalse(any("log_failure" in e for e in events))
