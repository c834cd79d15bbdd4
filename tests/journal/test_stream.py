"""Streams: group commit, roll-over, cursors, retention, overflow, losses, policies."""

from __future__ import annotations

import asyncio
import errno
import json
import copy
import os
from typing import Iterator

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from gateway.clockstep import BootClock, SteadyTimersReactor
from gateway.filelayer import OSFiles, move_into_place, write_temporary
from gateway.journal.errors import JournalWriteError, RecordTooLargeError, StreamFullError, UnknownCursorError
from gateway.journal.record import encode
from gateway.journal.segments import recover, segment_path, write_batch, write_ledger
from gateway.journal.settings import StreamSettings
from gateway.journal.stream import SLOW_WRITE_S, WRITE_BACKOFF_MAX_S, WRITE_BACKOFF_S, Stream
from tests.journal.helpers import DIR, ManualRunner, appended, open_stream, read_all, record, run_now
from tests.journal.powercut import PowerCutFiles
from tests.steppingclock import SteppingClock

FRAME = len(encode(record(1), 1))


def _segments(files: PowerCutFiles) -> list[str]:
    return sorted(p for p in files.names if p.endswith(".seg"))


def _dropped(stream: Stream) -> list[int]:
    """The seqs of ``stream``'s max-bytes losses, each as often as an entry counts it."""
    return [seq for e in stream.loss_report().entries if e.reason == "max-bytes"
            for seq in range(e.first_seq, e.last_seq + 1)]


def _reopened_after_each_job(files: PowerCutFiles, settings: StreamSettings, runner: ManualRunner,
                             said: list[str], phrase: str) -> Iterator[Stream]:
    """The stream in ``files`` reopened after a power cut before ``runner``'s next I/O job, then
    after each job it runs, until none is left; the lines each open logs holding ``phrase`` are
    added to ``said``."""
    while True:
        cut = copy.deepcopy(files)
        cut.cut()
        with capturedLogs() as events:
            reopened = open_stream(cut, settings)
        said += [formatEvent(e) for e in events if phrase in formatEvent(e)]
        yield reopened
        if not runner.step():
            return


class _RefusesOnce(PowerCutFiles):
    """A disk that refuses the first write to ``path`` (ENOSPC)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def append_sync(self, path: str, data: bytes) -> None:
        if path == self.path:
            self.path = ""
            raise OSError(errno.ENOSPC, "No space left on device", path)
        super().append_sync(path, data)


class _SegmentsRefused(PowerCutFiles):
    """While :attr:`refusing` is set, every write to a segment fails (EIO), the loss ledger's work."""

    refusing = False

    def append(self, path: str, data: bytes) -> None:
        if self.refusing and path.endswith(".seg"):
            raise OSError(errno.EIO, "Input/output error", path)
        super().append(path, data)


class _EmptyCreated(_SegmentsRefused):
    """While :attr:`refusing` is set, writes of data to a segment fail (EIO, as on a full
    disk), and creating an empty one works."""

    def append(self, path: str, data: bytes) -> None:
        if data or not self.refusing:
            super().append(path, data)
        else:
            PowerCutFiles.append(self, path, data)


def _refused_after_two(test: SynchronousTestCase, files: _SegmentsRefused, settings: StreamSettings) -> Stream:
    """A stream in ``files`` that wrote records 1-2 (and stopped), then, reopened, appended 3-5,
    whose write the disk refused (``files.refusing`` left set): counted, the ledger written."""
    s = open_stream(files, settings)
    for i in (1, 2):
        appended(s, record(i))
    test.successResultOf(s.close())
    s = open_stream(files, settings)
    files.refusing = True
    for i in (3, 4, 5):
        s.append(record(i))
    s.clock.advance(0)  # refused: counted, the ledger written with the next batch
    s.clock.advance(0)
    return s


class _DirSyncFailsAfterUnlink(PowerCutFiles):
    """A disk whose first directory fsync after an unlink fails (EIO), the unlink not durable."""

    unlinked = False
    failed = False

    def unlink(self, path: str) -> None:
        super().unlink(path)
        self.unlinked = True

    def fsync_dir(self, path: str) -> None:
        if self.unlinked and not self.failed:
            self.failed = True
            raise OSError(errno.EIO, "Input/output error", path)
        super().fsync_dir(path)


class GroupCommitTests(SynchronousTestCase):
    """Appends arriving while a write is in flight share the next write and fsync."""

    def test_appends_share_one_batch(self) -> None:
        """Appends of one reactor turn share a write; two batches go to the I/O thread at
        once, a third turn's appends wait and share the next; each fires after its own
        batch's fsync, in seq order."""
        files, runner = PowerCutFiles(), ManualRunner()
        s = open_stream(files, run=runner)
        runner.drain()
        ds = [s.append(record(i)) for i in range(1, 101)]
        self.assertEqual(runner.jobs, [])  # written when the turn ends, not per append
        s.clock.advance(0)
        self.assertEqual(len(runner.jobs), 1)
        second = [s.append(record(i)) for i in range(101, 151)]
        s.clock.advance(0)
        self.assertEqual(len(runner.jobs), 2)  # a second batch goes while the first is in flight
        third = [s.append(record(i)) for i in range(151, 171)]
        s.clock.advance(0)
        self.assertEqual(len(runner.jobs), 2)  # two are in flight: these wait
        for d in ds + second + third:
            self.assertNoResult(d)
        seqs: list[int] = []
        for d in ds + second + third:
            d.addCallback(seqs.append)
        runner.step()
        self.assertEqual(seqs, list(range(1, 101)))
        self.assertEqual(len(runner.jobs), 2)  # the third turn's appends went as the first finished
        runner.step()
        self.assertEqual(seqs, list(range(1, 151)))
        runner.step()
        self.assertEqual(seqs, list(range(1, 171)))
        self.assertEqual((s.stats().batch_records.count, s.stats().batch_records.max), (3, 100))
        path = segment_path(DIR, 1)
        self.assertEqual(files.names[path].synced, bytes(files.names[path].data))
        self.assertEqual([r.seq for r in read_all(open_stream(files))], list(range(1, 171)))

    def test_closed_loop_splits_into_two_batches(self) -> None:
        """Producers that append again when their append fires: with nothing else in flight,
        the first half's new appends are handed over before the second half fires, so
        their fsync overlaps it; from then on two batches alternate."""
        files, runner = PowerCutFiles(), ManualRunner()
        s = open_stream(files, run=runner)
        runner.drain()
        jobs_seen: list[int] = []
        fired: list[int] = []

        def again(seq: int) -> None:
            fired.append(seq)
            jobs_seen.append(len(runner.jobs))
            if len(fired) <= 64 * 3:  # 64 producers, four appends each
                s.append(record(seq + 1000)).addCallback(again)

        for i in range(64):
            s.append(record(i)).addCallback(again)
        s.clock.advance(0)
        runner.step()  # the first batch (64) fires: 32, hand-over, 32
        self.assertEqual(jobs_seen[:64], [0] * 32 + [1] * 32)
        self.assertEqual([len(job[1][2][0][1]) // FRAME for job in runner.jobs], [32, 32])
        runner.drain()
        self.assertEqual(fired, list(range(1, 64 * 4 + 1)))
        self.assertEqual((s.stats().batch_records.count, s.stats().batch_records.max), (1 + 6, 64))  # 64, then 32s
        self.assertEqual([r.seq for r in read_all(open_stream(files))], list(range(1, 64 * 4 + 1)))

    def test_a_slow_disk_gathers_a_closed_loop_into_one_batch_a_write(self) -> None:
        """Where a batch's write takes 100 ms (fsync on an SD card), eight producers that
        append again a moment after their append fires (a client's PUBACK round trip, each
        its own) share one write a round: one batch on the I/O thread at a time, handed over
        a short linger after the first append, so every producer waits for one write, not
        two or three (split in halves, and over the turns their appends arrived in, they
        shared the thread's serial writes three ways: 26 appends a second, not 70)."""
        files, runner, clock = PowerCutFiles(), ManualRunner(), Clock()
        s = Stream("s", DIR, StreamSettings(), files, runner, clock, slow_write_s=SLOW_WRITE_S)
        s.open()
        runner.drain()
        fired: list[int] = []

        def again(seq: int, producer: int) -> None:
            fired.append(seq)
            clock.callLater(0.0002 * (producer + 1), lambda: s.append(record(producer)).addCallback(again, producer))

        for producer in range(8):
            s.append(record(producer)).addCallback(again, producer)
        while clock.seconds() < 3.0:
            if not runner.jobs:
                clock.advance(0.0001)
                continue
            for _ in range(100):  # the write takes 100 ms; the reactor runs meanwhile
                clock.advance(0.001)
            f, args, d = runner.jobs.pop(0)
            result = f(*args)
            d.callback((0.1, *result[1:]) if f is write_batch else result)
        self.assertGreater(len(fired), 200)  # 3 s at 8 a round of 100 ms and a few ms more
        batches = s.stats().batch_records
        self.assertGreater(batches.total / batches.count, 7.5)

    def test_append_then_calls_back_per_record_in_seq_order(self) -> None:
        """append_then: a completed batch calls each append's on_durable with its seq, in
        order, only after the batch's write; a callback that raises is logged and the rest
        of the batch is still told."""
        files, runner = PowerCutFiles(), ManualRunner()
        s = open_stream(files, run=runner)
        runner.drain()
        told: list[int] = []

        def boom(seq: int) -> None:
            told.append(seq)
            raise RuntimeError("a broken consumer")

        s.append_then(record(1), told.append, told.append)
        s.append_then(record(2), boom, told.append)
        s.append_then(record(3), told.append, told.append)
        s.clock.advance(0)
        self.assertEqual(told, [])  # written, not yet durable
        runner.drain()
        self.assertEqual(told, [1, 2, 3])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_append_then_failure_calls_on_failed_once(self) -> None:
        """A failed write calls on_failed (with the JournalWriteError), never on_durable."""
        files, runner = PowerCutFiles(), ManualRunner()
        s = open_stream(files, run=runner)
        runner.drain()
        durable: list[int] = []
        failed: list[object] = []
        s.append_then(record(1), durable.append, failed.append)
        s.clock.advance(0)
        files.capacity = files.used()  # the disk is full: the write fails with ENOSPC
        runner.drain()
        self.assertEqual(durable, [])
        self.assertEqual([f.type for f in failed], [JournalWriteError])  # type: ignore[attr-defined]

    def test_append_many_calls_back_once_with_the_last_seq(self) -> None:
        """append_many: the records join one batch; one on_durable call with the last seq,
        only after the batch's write, and nothing for the records before it."""
        files, runner = PowerCutFiles(), ManualRunner()
        s = open_stream(files, run=runner)
        runner.drain()
        told: list[int] = []
        failed: list[object] = []
        s.append_then(record(1), told.append, failed.append)
        s.append_many([record(2), record(3), record(4)], told.append, failed.append)
        s.clock.advance(0)
        self.assertEqual(len(runner.jobs), 1)
        self.assertEqual(told, [])
        runner.drain()
        self.assertEqual((told, failed), ([1, 4], []))
        self.assertEqual([r.seq for r in read_all(open_stream(files))], [1, 2, 3, 4])
        self.assertRaises(ValueError, s.append_many, [], told.append, failed.append)

    def test_append_many_stores_what_one_by_one_would(self) -> None:
        """append_many takes its one-pass path while the records fit the segment and the
        limits, and goes one by one where they do not (a new segment, drop-oldest making
        room): either way the files, seqs, bytes and latency counts are those of
        append_then."""
        settings = StreamSettings(segment_bytes=10 * FRAME, max_bytes=30 * FRAME, overflow="drop-oldest")
        results: list[tuple[object, ...]] = []
        for together in (False, True):
            files, runner = PowerCutFiles(), ManualRunner()
            s = open_stream(files, settings, run=runner)
            runner.drain()
            told: list[int] = []
            records = [record(i, received=float(i)) for i in range(1, 46)]
            for start in range(0, len(records), 4):
                batch = records[start:start + 4]
                if together:
                    s.append_many(batch, told.append, told.append)
                else:
                    for r in batch:
                        s.append_then(r, lambda seq, r=r: told.append(seq) if r is batch[-1] else None,
                                      told.append)
                s.clock.advance(0)
                runner.drain()
            results.append((told, {p: bytes(i.data) for p, i in files.names.items()}, s.next_seq,
                            s.retention.bytes, s.stats().drops, s.append_latency.count))
        self.assertEqual(results[0], results[1])
        told, _, next_seq, _, drops, appends = results[1]
        self.assertEqual((told[-1], next_seq, appends), (45, 46, 45))
        self.assertEqual(drops, {"max-bytes": 20})  # drop-oldest: two segments of ten made room

    def test_append_many_refused_record_fails_the_call_once(self) -> None:
        """A record refused by reject-new fails the whole call at once, never on_durable; the
        records before it are kept and each refused one is counted."""
        settings = StreamSettings(segment_bytes=10 * FRAME, max_bytes=20 * FRAME, overflow="reject-new")
        s = open_stream(PowerCutFiles(), settings)
        told: list[int] = []
        failed: list[object] = []
        s.append_many([record(i) for i in range(1, 23)], told.append, failed.append)
        self.assertEqual([f.type for f in failed], [StreamFullError])  # type: ignore[attr-defined]
        s.clock.advance(0)
        self.assertEqual(told, [])
        self.assertEqual(s.stats().drops, {"rejected": 2})
        self.assertEqual(s.next_seq, 21)

    def test_append_many_failed_write_calls_on_failed_once(self) -> None:
        """A failed write fails the call once (each record of it is lost), never on_durable."""
        files, runner = PowerCutFiles(), ManualRunner()
        s = open_stream(files, run=runner)
        runner.drain()
        durable: list[int] = []
        failed: list[object] = []
        s.append_many([record(1), record(2)], durable.append, failed.append)
        s.clock.advance(0)
        files.capacity = files.used()
        runner.drain()
        self.assertEqual(durable, [])
        self.assertEqual([f.type for f in failed], [JournalWriteError])  # type: ignore[attr-defined]

    def test_append_many_in_one_pass_failed_write_calls_on_failed_once(self) -> None:
        """The one-pass path (a segment exists, the records fit): a failed write fails the
        call once, and the earlier append in the same batch is told too."""
        files, runner = PowerCutFiles(), ManualRunner()
        s = open_stream(files, run=runner)
        runner.drain()
        s.append_then(record(1), lambda seq: None, lambda f: None)
        s.clock.advance(0)
        runner.drain()  # the segment exists now
        durable: list[int] = []
        failed: list[object] = []
        s.append_then(record(2), durable.append, failed.append)
        s.append_many([record(3), record(4), record(5)], durable.append, failed.append)
        self.assertEqual(s.next_seq, 6)
        s.clock.advance(0)
        files.capacity = files.used()
        runner.drain()
        self.assertEqual(durable, [])
        self.assertEqual([f.type for f in failed], [JournalWriteError, JournalWriteError])  # type: ignore[attr-defined]
        self.assertEqual(s.next_seq, 2)  # the lost seqs are reused

    def test_append_many_under_interval_fires_at_once(self) -> None:
        """sync: interval: the call is told the last seq at once, as append_then would be."""
        s = open_stream(PowerCutFiles(), StreamSettings(sync="interval", sync_interval_ms=50), Clock())
        told: list[int] = []
        s.append_many([record(1), record(2)], told.append, told.append)
        self.assertEqual(told, [2])

    def test_interval_policy_acks_at_once_and_syncs_on_timer(self) -> None:
        """sync: interval fires appends at once and fsyncs every sync_interval_ms."""
        files, clock = PowerCutFiles(), Clock()
        s = open_stream(files, StreamSettings(sync="interval", sync_interval_ms=50), clock)
        self.assertEqual(self.successResultOf(s.append(record(1))), 1)
        self.assertNotIn(segment_path(DIR, 1), files.names)
        clock.advance(0.05)
        inode = files.names[segment_path(DIR, 1)]
        self.assertEqual(inode.synced, bytes(inode.data))
        self.assertEqual(len(inode.data), FRAME)

    def test_interval_policy_writes_on_the_next_turn(self) -> None:
        """sync: interval writes its appends on the next reactor turn, as sync: none does, and
        only the fsync waits for the timer: a process killed (SIGKILL) after the append fired
        loses nothing, only a power cut before the fsync can."""
        files, clock = PowerCutFiles(), Clock()
        s = open_stream(files, StreamSettings(sync="interval", sync_interval_ms=5000), clock)
        self.assertEqual(self.successResultOf(s.append(record(1))), 1)
        clock.advance(0)
        inode = files.names[segment_path(DIR, 1)]
        self.assertEqual((len(inode.data), inode.synced), (FRAME, b""))
        self.assertEqual([r.seq for r in read_all(open_stream(files))], [1])  # what a restarted process reads
        clock.advance(5)
        self.assertEqual(inode.synced, bytes(inode.data))

    def test_interval_write_failure_is_a_counted_loss(self) -> None:
        """sync: interval acknowledged the appends already; when their write fails they are
        counted as lost (how many, how many bytes, which seqs), and their seqs are given to no
        other record."""
        files, clock = PowerCutFiles(capacity=FRAME // 2), Clock()
        files.reported_free = 1 << 30
        s = open_stream(files, StreamSettings(sync="interval", sync_interval_ms=50, min_free_bytes=0), clock)
        self.assertEqual([self.successResultOf(s.append(record(i))) for i in (1, 2, 3)], [1, 2, 3])
        clock.advance(0.05)
        self.assertEqual(s.stats().drops, {"write-failed": 3})
        [entry] = s.loss_report().entries
        self.assertEqual((entry.records, entry.bytes, entry.first_seq, entry.last_seq), (3, 3 * FRAME, 1, 3))
        self.assertEqual(s.stats().bytes, 0)
        clock.advance(WRITE_BACKOFF_S)  # (appends are refused for a moment after a failed write)
        self.assertEqual(self.successResultOf(s.append(record(4))), 4)

    def test_seqs_counted_write_failed_are_never_given_again(self) -> None:
        """docs/journal.md: under ``sync: interval`` and ``none`` the seqs of appends whose
        write failed (counted ``write-failed``) go to no other record, so the loss report never
        names a record that was delivered: the next records are numbered past them, read
        without the gap counted as damage, and so after a stop and after a power cut that took
        what followed (the ledger on disk). They took those seqs again: the report said seqs
        3-5 were lost while records 3-5 were delivered."""
        for sync in ("interval", "none"):
            files = _SegmentsRefused()
            settings = StreamSettings(sync=sync, sync_interval_ms=50, min_free_bytes=0)
            s = open_stream(files, settings)
            self.successResultOf(s.cursor("link"))
            for i in (1, 2):
                self.assertEqual(self.successResultOf(appended(s, record(i))), i)
            files.refusing = True
            self.assertEqual([self.successResultOf(s.append(record(i))) for i in (3, 4, 5)], [3, 4, 5])
            s.clock.advance(0)  # written: refused
            self.successResultOf(s.close())  # (the ledger written, then everything fsynced)
            files.refusing = False
            s = open_stream(files, settings)
            self.assertEqual(s.next_seq, 6, sync)
            self.assertEqual((s.unacked("link"), s.stats().backlog), (2, {"link": 2}), sync)  # (not 5)
            self.assertEqual(self.successResultOf(appended(s, record(6))), 6)
            self.assertEqual([r.seq for r in read_all(s, "link")], [1, 2, 6], sync)
            self.assertEqual([(e.reason, e.first_seq, e.last_seq) for e in s.loss_report().entries],
                             [("write-failed", 3, 5)], sync)
            self.successResultOf(s.close())
            files.cut()  # (nothing was fsynced since the stop but what the stop did)
            self.assertEqual([r.seq for r in read_all(open_stream(files, settings), "link")], [1, 2, 6], sync)
            files.cut()
            reopened = open_stream(files, settings)
            self.assertEqual(self.successResultOf(appended(reopened, record(7))), 7, sync)

    def test_an_older_build_numbers_past_seqs_counted_write_failed(self) -> None:
        """docs/install.md: a build older than the ledger's ``skipped`` (it ignores the key) reads
        the next seq from the stream's segments alone. When the seqs counted ``write-failed``
        (3-5) are the stream's last ones, an empty segment named for seq 6 tells it so, after a
        stop and after a power cut: it gave 3-5 to new acknowledged records, which this version,
        back, took for the lost ones and never sent. This version reads and appends on as before."""
        for sync, stop in (("interval", True), ("none", True), ("none", False)):
            files = _EmptyCreated()
            settings = StreamSettings(sync=sync, sync_interval_ms=50, min_free_bytes=0)
            s = _refused_after_two(self, files, settings)  # (the next seq marked, then the ledger written)
            files.refusing = False
            self.assertEqual(_segments(files), [segment_path(DIR, 1), segment_path(DIR, 6)], sync)
            if stop:
                self.successResultOf(s.close())
            else:  # the process that marked it reads on, then loses power (record 6 never fsynced)
                s.clock.advance(WRITE_BACKOFF_S)
                self.assertEqual(self.successResultOf(appended(s, record(6))), 6)
                self.assertEqual([r.seq for r in read_all(s, "link")], [1, 2, 6])
                self.assertEqual(s.stats().drops, {"write-failed": 3})
            files.cut()
            ledger = files.names[f"{DIR}/losses.json"]
            saved = json.loads(bytes(ledger.data))
            del saved["skipped"]  # (as an older build reads it)
            ledger.data = bytearray(json.dumps(saved).encode())
            ledger.synced = bytes(ledger.data)
            self.assertEqual(recover(files, DIR).next_seq, 6, (sync, stop))  # (as ee3ea923 recovers)
            self.assertEqual(open_stream(files, settings).next_seq, 6, (sync, stop))
            files.names[f"{DIR}/losses.json"].data = bytearray(json.dumps({**saved, "skipped": [[3, 5]]}).encode())
            back = open_stream(files, settings)
            self.assertEqual(self.successResultOf(appended(back, record(6))), 6)
            self.assertEqual([r.seq for r in read_all(back, "link")], [1, 2, 6], (sync, stop))
            self.assertEqual([(e.reason, e.first_seq, e.last_seq) for e in back.loss_report().entries],
                             [("write-failed", 3, 5)], (sync, stop))  # (no gap counted as damage)

    def test_the_next_seq_is_on_disk_before_the_ledger_that_skips_to_it(self) -> None:
        """A power cut at any point after a write failure (``sync: none``): whenever the ledger
        on disk counts seqs 3-5 ``write-failed``, the segments alone (all an older build reads)
        number past them too."""
        files, runner = _EmptyCreated(), ManualRunner()
        settings = StreamSettings(sync="none", min_free_bytes=0)
        s = open_stream(files, settings, run=runner)
        runner.drain()
        appended(s, record(1))
        runner.drain()
        files.refusing = True
        for i in (2, 3, 4):
            s.append(record(i))
        s.clock.advance(0)
        runner.step()  # the write: refused
        s.clock.advance(0)
        seen, marked_only = [], False
        for reopened in _reopened_after_each_job(files, settings, runner, [], "missing"):
            counted = [(e.first_seq, e.last_seq) for e in reopened.loss_report().entries]
            seen.append(counted)
            if counted:
                self.assertEqual(counted, [(2, 4)])
                self.assertEqual(recover(reopened.files, DIR).next_seq, 5)
            elif recover(reopened.files, DIR).next_seq == 5:  # (marked, the ledger not written: read as a gap)
                reopened.files.refusing = False  # type: ignore[attr-defined]  # (the disk, cut, works again)
                self.successResultOf(appended(reopened, record(5)))
                self.assertEqual([r.seq for r in read_all(reopened)], [1, 5])
                self.assertEqual([(e.reason, e.first_seq, e.last_seq) for e in reopened.loss_report().entries],
                                 [("corrupt", 2, 4)])
                marked_only = True
            s.clock.advance(0)
        self.assertEqual((seen[-1], marked_only), ([(2, 4)], True))

    def test_write_failures_in_a_row_leave_one_empty_segment(self) -> None:
        """A full disk fails each retry (``sync: none``): the empty segment that names the next
        seq replaces the one the failure before left, rather than one more file per retry."""
        files = _EmptyCreated()
        settings = StreamSettings(sync="none", min_free_bytes=0)
        s = open_stream(files, settings)
        appended(s, record(1))
        files.refusing = True
        for retry in range(3):
            for i in (1, 2):
                s.append(record(i))
            s.clock.advance(0)
            s.clock.advance(0)
            s.clock.advance(WRITE_BACKOFF_MAX_S)
        self.assertEqual(_segments(files), [segment_path(DIR, 1), segment_path(DIR, 8)])
        files.refusing = False
        self.assertEqual(self.successResultOf(appended(s, record(8))), 8)
        files.cut()
        self.assertEqual(recover(files, DIR).next_seq, 8)
        self.assertEqual([r.seq for r in read_all(open_stream(files, settings))], [1])

    def test_a_power_cut_after_a_counted_write_failure_gives_its_seqs_to_no_record(self) -> None:
        """The ledger counting seqs 3-5 ``write-failed`` is on disk, the record after them (seq 6)
        is not (``sync: none``, cut by a power cut): the reopened stream numbers past 5 all the
        same."""
        files = _SegmentsRefused()
        settings = StreamSettings(sync="none", min_free_bytes=0)
        s = _refused_after_two(self, files, settings)
        self.assertIn(f"{DIR}/losses.json", files.names)
        files.refusing = False
        s.clock.advance(WRITE_BACKOFF_S)
        self.assertEqual(self.successResultOf(appended(s, record(6))), 6)
        files.cut()  # record 6 was never fsynced
        reopened = open_stream(files, settings)
        self.assertEqual([r.seq for r in read_all(reopened)], [1, 2])
        self.assertEqual(self.successResultOf(appended(reopened, record(7))), 6)

    def test_none_policy_writes_without_fsync(self) -> None:
        """sync: none writes on the next turn and never fsyncs, until close."""
        files, clock = PowerCutFiles(), Clock()
        s = open_stream(files, StreamSettings(sync="none"), clock)
        self.successResultOf(s.append(record(1)))
        clock.advance(0)
        inode = files.names[segment_path(DIR, 1)]
        self.assertEqual((len(inode.data), inode.synced), (FRAME, b""))
        self.successResultOf(s.close())
        self.assertEqual(len(inode.synced), FRAME)


class SegmentTests(SynchronousTestCase):
    """Segments roll over at segment_bytes and are deleted once every cursor passed them."""

    def test_roll_over_and_delete_acked(self) -> None:
        """Ten records per segment; acking past a segment deletes it, the tail stays; the oldest
        record kept (``first_kept_seq``) is the first of the oldest segment left."""
        files = PowerCutFiles()
        s = open_stream(files, StreamSettings(segment_bytes=10 * FRAME))
        self.assertEqual(s.first_kept_seq, 1)  # (none kept: next_seq)
        self.successResultOf(s.cursor("a"))
        self.successResultOf(s.cursor("b"))
        for i in range(1, 26):
            appended(s, record(i))
        self.assertEqual(len(_segments(files)), 3)
        self.assertEqual([r.seq for r in read_all(s, "a")], list(range(1, 26)))
        self.successResultOf(s.ack("a", 25))
        self.assertEqual(len(_segments(files)), 3)
        self.assertEqual(s.first_kept_seq, 1)
        self.successResultOf(s.ack("b", 20))
        self.assertEqual(_segments(files), [segment_path(DIR, 21)])
        self.assertEqual(s.first_kept_seq, 21)
        self.assertEqual(s.stats().backlog, {"a": 0, "b": 5})

    def test_a_backlog_holds_no_descriptor_per_segment(self) -> None:
        """On the real filesystem, each segment the stream had written kept its file
        descriptor open until the segment was deleted: a cloud link down for a day held one
        per segment of its backlog (up to max_bytes / segment_bytes: 65,536 with 16 KiB
        segments and 1 GiB), and the gateway met its LimitNOFILE. Only the tail's stays open,
        and the sealed segments read back whole."""
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        files = OSFiles()
        self.addCleanup(files.close_all)
        s = open_stream(files, StreamSettings(segment_bytes=10 * FRAME), directory=directory)
        self.successResultOf(s.cursor("a"))
        for i in range(1, 201):
            appended(s, record(i))
        self.assertEqual(len([n for n in os.listdir(directory) if n.endswith(".seg")]), 20)
        self.assertEqual(len(_open_under(directory)), 1)
        self.assertEqual([r.seq for r in read_all(s, "a")], list(range(1, 201)))
        self.assertEqual(_open_under(directory), [segment_path(directory, 191)])


def _open_under(directory: str) -> list[str]:
    """The files under ``directory`` this process holds a descriptor of."""
    held = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(directory + os.sep):
            held.append(target)
    return held


class CursorTests(SynchronousTestCase):
    """Cursors persist; a restart re-delivers what was in flight and skips nothing."""

    def test_restart_redelivers_unacked(self) -> None:
        """Read 10, ack 6, restart: reading resumes at 7."""
        files = PowerCutFiles()
        s = open_stream(files)
        self.successResultOf(s.cursor("link"))
        for i in range(1, 11):
            appended(s, record(i))
        self.assertEqual(len(self.successResultOf(s.read("link", 10))), 10)
        self.successResultOf(s.ack("link", 6))
        self.assertEqual(self.successResultOf(s.read("link")), [])
        s = open_stream(files)
        self.assertEqual([r.seq for r in self.successResultOf(s.read("link"))], [7, 8, 9, 10])

    def test_a_cursor_is_saved_only_when_asked_and_once_per_ask(self) -> None:
        """On a slow disk a cursor save takes as long as two fsyncs, and it shares the I/O
        thread with the appends: acknowledgements noted in memory while a save is in flight
        wait for the next :meth:`ack` (they are not saved on their own), and an :meth:`ack`
        made as a save completes (its consumer's next, from that save's callback) is written
        once, not twice."""
        files, runner = PowerCutFiles(), ManualRunner()
        s = open_stream(files, run=runner)
        runner.drain()
        s.cursor("link")
        runner.drain()
        for i in range(1, 11):
            s.append(record(i))
        s.clock.advance(0)
        runner.drain()
        saved: list[str] = []
        again: list[Deferred[None]] = []

        def next_ack(_: object) -> None:  # a link saving again at once, from the save's callback
            s.note_ack("link", 3)
            again.append(s.ack("link", 3))

        s.note_ack("link", 1)
        s.ack("link", 1).addCallback(next_ack)
        s.note_ack("link", 2)  # in memory only, while the save of 1 is in flight
        while runner.jobs:
            if runner.jobs[0][0] is write_temporary:
                saved.append(b"".join(runner.jobs[0][1][2]).decode())
            runner.step()
        self.assertEqual(saved, ['{"acked": 1}', '{"acked": 3}'])
        self.successResultOf(again[0])
        s.ack("link", 4)
        s.note_ack("link", 5)  # in memory only, while the save of 4 is in flight
        runner.step()
        runner.step()
        self.assertEqual(runner.jobs, [])  # durable with the next ack, not on its own
        s.ack("link", 5)
        self.assertEqual(b"".join(runner.jobs[0][1][2]), b'{"acked": 5}')

    def test_a_batch_ready_during_a_cursor_save_goes_before_its_rename(self) -> None:
        """A cursor save is two jobs on the I/O thread, each an fsync (on a slow disk, 100 ms):
        the temporary file's write, then its rename over the cursor file and the directory's
        fsync, queued once the first is done. A batch of appends handed over meanwhile is
        written between the two, so its appends wait for one of them, not both. The ack fires
        only once the rename is durable, and a crash between the two keeps the old cursor."""
        files, runner = PowerCutFiles(), ManualRunner()
        s = open_stream(files, run=runner)
        runner.drain()
        s.cursor("link")
        runner.drain()
        for i in range(1, 4):
            s.append(record(i))
        s.clock.advance(0)
        runner.drain()
        acked = s.ack("link", 2)
        durable = s.append(record(4))
        s.clock.advance(0)  # the batch is handed over while the cursor's temporary file is written
        self.assertEqual([job[0] for job in runner.jobs], [write_temporary, write_batch])
        runner.step()
        self.assertEqual([job[0] for job in runner.jobs], [write_batch, move_into_place])
        runner.step()
        self.assertEqual(self.successResultOf(durable), 4)
        self.assertNoResult(acked)
        crashed = copy.deepcopy(files)
        crashed.cut()
        self.assertEqual(open_stream(crashed).reader.cursors["link"].acked, 0)  # the old cursor
        runner.step()
        self.successResultOf(acked)
        self.assertEqual(open_stream(files).reader.cursors["link"].acked, 2)

    def test_ranges_acknowledged_above_the_cursor(self) -> None:
        """Ranges acknowledged out of order are durable: reads skip them, before and after a
        restart, across segments; a range that joins the cursor moves it; nothing unacked is skipped."""
        files = PowerCutFiles()
        s = open_stream(files, StreamSettings(segment_bytes=4 * FRAME))
        self.successResultOf(s.cursor("link"))
        for i in range(1, 31):
            appended(s, record(i))
        self.assertEqual(len(self.successResultOf(s.read("link", 100))), 30)
        self.successResultOf(s.ack("link", 5, [(16, 20), (8, 10), (9, 12), (40, 50)]))  # past the end: cut
        self.assertEqual(s.stats().backlog, {"link": 30 - 5 - 5 - 5})
        s.rewind("link")
        self.assertEqual([r.seq for r in read_all(s, "link")], [6, 7, 13, 14, 15] + list(range(21, 31)))
        s = open_stream(files, StreamSettings(segment_bytes=4 * FRAME))  # a restart: read from disk
        self.assertEqual([r.seq for r in read_all(s, "link")], [6, 7, 13, 14, 15] + list(range(21, 31)))
        self.successResultOf(s.ack("link", 7))  # joins 8-12
        self.assertEqual(s.reader.cursors["link"].above, [(16, 20)])
        self.assertEqual(s.stats().backlog, {"link": 30 - 12 - 5})
        self.successResultOf(s.ack("link", 15))  # joins 16-20: nothing above any more
        s = open_stream(files, StreamSettings(segment_bytes=4 * FRAME))
        self.assertEqual((s.reader.cursors["link"].acked, s.reader.cursors["link"].above), (20, []))
        self.assertEqual([r.seq for r in read_all(s, "link")], list(range(21, 31)))
        self.assertEqual(_segments(files), [segment_path(DIR, n) for n in (21, 25, 29)])

    def test_oldest_unacked(self) -> None:
        """The oldest unacknowledged seq is the slowest cursor's next one, in memory; a
        cursor that acknowledged everything (or ranges above) does not hold it back."""
        s = open_stream(PowerCutFiles())
        self.assertIsNone(s.reader.oldest_unacked())  # no cursor
        self.successResultOf(s.cursor("a"))
        self.successResultOf(s.cursor("b"))
        self.assertIsNone(s.reader.oldest_unacked())  # nothing appended
        for i in range(1, 11):
            appended(s, record(i))
        self.assertEqual(s.reader.oldest_unacked(), 1)
        s.note_ack("a", 4)
        self.successResultOf(s.ack("b", 7, [(9, 10)]))
        self.assertEqual(s.reader.oldest_unacked(), 5)
        s.note_ack("a", 10)
        self.assertEqual(s.reader.oldest_unacked(), 8)
        self.successResultOf(s.ack("b", 8))  # joins 9-10: everything
        self.assertIsNone(s.reader.oldest_unacked())

    def _forty_in_four_segments(self) -> tuple[PowerCutFiles, StreamSettings, Stream]:
        """A stream of records 1-40 in segments of 10, full (the next append drops 1-10),
        with a cursor "link" at its start."""
        files = PowerCutFiles()
        settings = StreamSettings(segment_bytes=10 * FRAME, max_bytes=40 * FRAME)
        s = open_stream(files, settings)
        self.successResultOf(s.cursor("link"))
        for i in range(1, 41):
            appended(s, record(i))
        return files, settings, s

    def test_note_ack_is_in_memory_and_no_loss_when_dropped(self) -> None:
        """note_ack writes nothing (a restart sends those records again) and a drop counts
        none of them as lost; only what no ack covers is."""
        files, settings, s = self._forty_in_four_segments()
        s.note_ack("link", 6)
        self.assertEqual(s.stats().backlog, {"link": 34})
        self.assertEqual(self.successResultOf(open_stream(files, settings).read("link", 1))[0].seq, 1)
        self.assertRaises(UnknownCursorError, s.note_ack, "nobody", 1)
        appended(s, record(41))  # drop-oldest deletes 1-10
        [entry] = s.loss_report().entries
        self.assertEqual((entry.records, entry.first_seq, entry.last_seq), (4, 7, 10))

    def test_a_drop_does_not_count_again_what_a_link_counted(self) -> None:
        """A link skipped 5 and 7 (over-cloud-limit) and its cursor has not passed them yet
        (its save waits for 1-4, or a crash came first): drop-oldest deleting 1-10 counts
        the other 8 only. It counted all 10: 5 and 7 twice."""
        files, settings, s = self._forty_in_four_segments()
        s.note_loss("over-cloud-limit", 1, FRAME, 5, 5)
        s.note_loss("over-cloud-limit", 1, FRAME, 7, 7)
        appended(s, record(41))  # drop-oldest deletes 1-10
        self.assertEqual([(e.reason, e.records, e.first_seq, e.last_seq) for e in s.loss_report().entries],
                         [("over-cloud-limit", 1, 5, 5), ("over-cloud-limit", 1, 7, 7), ("max-bytes", 8, 1, 10)])
        self.assertEqual(s.stats().drops, {"over-cloud-limit": 2, "max-bytes": 8})

    def test_a_drop_counts_only_what_a_cursor_has_not_acknowledged(self) -> None:
        """Ranges acknowledged above a cursor (live records a link sent beside its backlog)
        are delivered: a drop counts only the records some cursor has not acknowledged (a
        record another cursor still wants is lost all the same). They were all counted from
        the slowest cursor's acknowledged seq on."""
        s = self._forty_in_four_segments()[2]
        self.successResultOf(s.ack("link", 2, [(4, 6), (9, 12)]))
        appended(s, record(41))  # drop-oldest deletes 1-10: 3, 7 and 8 were never delivered
        [entry] = s.loss_report().entries
        self.assertEqual((entry.records, entry.first_seq, entry.last_seq), (3, 3, 8))
        self.successResultOf(s.cursor("audit"))  # (a second cursor, at the oldest record kept: 11)
        self.successResultOf(s.ack("audit", 13))
        for i in range(42, 52):
            appended(s, record(i))  # drop-oldest deletes 11-20: "link" acknowledged 11-12 only
        entry = s.loss_report().entries[-1]
        self.assertEqual((entry.records, entry.first_seq, entry.last_seq), (8, 13, 20))

    def test_rewind_and_limits(self) -> None:
        """max_records and max_bytes bound a read; rewind goes back to the last ack."""
        s = open_stream(PowerCutFiles())
        self.successResultOf(s.cursor("c"))
        for i in range(1, 11):
            appended(s, record(i))
        self.assertEqual([r.seq for r in self.successResultOf(s.read("c", 3))], [1, 2, 3])
        self.assertEqual([r.seq for r in self.successResultOf(s.read("c", max_bytes=64))], [4, 5])
        s.rewind("c")
        self.assertEqual(self.successResultOf(s.read("c", 1))[0].seq, 1)

    def test_rewind_during_read(self) -> None:
        """A rewind while a read is in flight wins: the next read starts after the ack."""
        runner = ManualRunner()
        s = open_stream(PowerCutFiles(), run=runner)
        s.cursor("c")
        for i in range(1, 4):
            s.append(record(i))
        runner.drain()
        s.clock.advance(0)
        runner.drain()
        s.tail.clear()  # so the read goes to the I/O thread, where the rewind overtakes it
        first = s.read("c")
        s.rewind("c")
        runner.drain()
        self.assertEqual(len(self.successResultOf(first)), 3)
        again = s.read("c")
        runner.drain()
        self.assertEqual([r.seq for r in self.successResultOf(again)], [1, 2, 3])

    def test_unknown_cursor(self) -> None:
        """Reading with a cursor never created fails precisely."""
        s = open_stream(PowerCutFiles())
        self.failureResultOf(s.read("nope"), UnknownCursorError)

    def test_wait_fires_on_append(self) -> None:
        """wait() fires once a record for the cursor is durable."""
        s = open_stream(PowerCutFiles())
        self.successResultOf(s.cursor("c"))
        d = s.wait("c")
        self.assertNoResult(d)
        appended(s, record(1))
        self.successResultOf(d)


class OverflowTests(SynchronousTestCase):
    """Limits: drop-oldest deletes and reports, reject-new refuses precisely."""

    def test_drop_oldest_on_max_bytes(self) -> None:
        """Over max_bytes, the oldest segment goes; the unread records count as lost, durably."""
        files = PowerCutFiles()
        settings = StreamSettings(segment_bytes=10 * FRAME, max_bytes=40 * FRAME)
        s = open_stream(files, settings)
        self.successResultOf(s.cursor("link"))
        for i in range(1, 46):
            self.successResultOf(appended(s, record(i, received=float(i))))
        [entry] = s.loss_report().entries
        self.assertEqual((entry.reason, entry.records, entry.first_seq, entry.last_seq),
                         ("max-bytes", 10, 1, 10))
        self.assertEqual((entry.first_time, entry.last_time), (1.0, 11.0))
        self.assertEqual(self.successResultOf(s.read("link", 1))[0].seq, 11)
        self.assertEqual(s.first_kept_seq, 11)
        self.assertEqual(open_stream(files, settings).loss_report().entries, (entry,))
        report = s.loss_report()
        self.successResultOf(s.clear_losses(report))
        self.assertEqual(open_stream(files, settings).loss_report().entries, ())

    def test_segment_bytes_is_capped_at_a_quarter_of_max_bytes(self) -> None:
        """A segment_bytes over max_bytes / 4 is capped there (docs/journal.md), so drop-oldest
        drops a quarter of the stream at a time, never all of it: with 16 MiB segments and a
        64 KiB stream the segments roll over every 16 KiB."""
        files = PowerCutFiles()
        s = open_stream(files, StreamSettings(max_bytes=64 * 1024, min_free_bytes=0))
        self.successResultOf(s.cursor("link"))
        for i in range(1, 3 * 64 * 1024 // FRAME):
            self.successResultOf(appended(s, record(i)))
        sizes = [len(files.names[path].data) for path in sorted(files.names) if path.endswith(".seg")]
        self.assertEqual(len(sizes), 4)
        self.assertTrue(all(16 * 1024 - FRAME < size <= 16 * 1024 for size in sizes[:-1]), sizes)
        self.assertLessEqual(sum(sizes), 64 * 1024)

    def test_drop_oldest_after_restart_with_smaller_max_bytes(self) -> None:
        """Reopened with a max_bytes smaller than its one segment, a drop-oldest stream drops
        that segment (counted as lost, cursors moved past it) and takes the append in a new
        one, instead of refusing every append."""
        files = PowerCutFiles()
        s = open_stream(files, StreamSettings(segment_bytes=40 * FRAME))
        self.successResultOf(s.cursor("link"))
        for i in range(1, 31):
            self.successResultOf(appended(s, record(i, received=float(i))))
        self.successResultOf(s.ack("link", 5))
        clock = Clock()
        clock.advance(40)
        settings = StreamSettings(max_bytes=20 * FRAME)
        s = open_stream(files, settings, clock)
        self.assertEqual(self.successResultOf(appended(s, record(31, received=40.0))), 31)
        [entry] = s.loss_report().entries
        self.assertEqual((entry.reason, entry.records, entry.first_seq, entry.last_seq, entry.last_time),
                         ("max-bytes", 25, 6, 30, 40.0))
        self.assertEqual(_segments(files), [segment_path(DIR, 31)])
        self.assertEqual([r.seq for r in self.successResultOf(s.read("link"))], [31])
        s = open_stream(files, settings)
        self.assertEqual(s.next_seq, 32)
        self.assertEqual([r.seq for r in self.successResultOf(s.read("link"))], [31])

    def test_last_segment_dropped_stays_on_disk_until_the_next_is_written(self) -> None:
        """The dropped last segment's file is deleted only after the write that creates the
        new segment: killed after any I/O job, the stream reopens with its seqs going on, not
        from 1."""
        files = PowerCutFiles()
        s = open_stream(files, StreamSettings(segment_bytes=40 * FRAME))
        self.successResultOf(s.cursor("link"))
        for i in range(1, 31):
            self.successResultOf(appended(s, record(i)))
        runner = ManualRunner()
        settings = StreamSettings(max_bytes=20 * FRAME)
        s = Stream("s", DIR, settings, files, runner, Clock())
        s.open()
        runner.drain()
        d = appended(s, record(31))
        while runner.step():
            self.assertIn(open_stream(files, settings).next_seq, (31, 32))  # killed here
        self.assertEqual(self.successResultOf(d), 31)
        self.assertEqual(_segments(files), [segment_path(DIR, 31)])

    def _filled_to_the_bound(self, files: PowerCutFiles) -> StreamSettings:
        """Records 1-25 in ``files``, ten a segment, at the max_bytes of the settings returned,
        with a cursor ``link`` that acknowledged none."""
        settings = StreamSettings(segment_bytes=10 * FRAME, max_bytes=25 * FRAME)
        s = open_stream(files, settings)
        self.successResultOf(s.cursor("link"))
        for i in range(1, 26):
            self.successResultOf(appended(s, record(i)))
        return settings

    def _dropping_at_the_bound(self) -> tuple[PowerCutFiles, StreamSettings, ManualRunner, Deferred[int]]:
        """A stream of records 1-25 at its max_bytes with a cursor that acknowledged none,
        reopened with its I/O jobs run one by one, and the append of 26 that drops segment 1."""
        files = PowerCutFiles()
        settings = self._filled_to_the_bound(files)
        runner = ManualRunner()
        s = Stream("s", DIR, settings, files, runner, Clock())
        s.open()
        runner.drain()
        return files, settings, runner, appended(s, record(26))

    def test_records_dropped_for_room_are_counted_whenever_they_are_gone(self) -> None:
        """drop-oldest's loss is on disk before the cursors move past the dropped segment and
        before its file goes: killed after any I/O job, every record the reopened stream no
        longer gives its cursor is in its loss report."""
        files, settings, runner, d = self._dropping_at_the_bound()
        while True:
            reopened = open_stream(files, settings)  # killed here
            first = self.successResultOf(reopened.read("link", max_records=1))[0].seq
            counted = sum(e.records for e in reopened.loss_report().entries if e.reason == "max-bytes")
            self.assertGreaterEqual(counted, first - 1, (first, reopened.loss_report()))
            if not runner.step():
                break
        self.assertEqual(self.successResultOf(d), 26)

    def test_a_power_cut_never_brings_a_dropped_segment_back(self) -> None:
        """docs/journal.md: a segment drop-oldest drops is deleted durably, and one a power cut
        leaves behind (cut after its drop was counted, before its deletion was durable) is
        deleted by the next open. Cut after any I/O job: the reopened stream gives its cursor
        no dropped record (they were sent again), and its own drops at the bound count each seq
        once (they counted the segment that came back twice)."""
        files, settings, runner, d = self._dropping_at_the_bound()
        said: list[str] = []
        for cuts, reopened in enumerate(_reopened_after_each_job(files, settings, runner, said,
                                                                 "that a crash or power cut left")):
            first = self.successResultOf(reopened.read("link", max_records=1))[0].seq
            self.assertNotIn(first, _dropped(reopened), cuts)
            for _ in range(10):  # at the bound: each append drops again
                self.successResultOf(appended(reopened, record(reopened.next_seq)))
            entries = [e for e in reopened.loss_report().entries if e.reason == "max-bytes"]
            seqs = _dropped(reopened)
            self.assertEqual((sum(e.records for e in entries), len(set(seqs))), (len(seqs), len(seqs)), cuts)
        self.assertEqual(self.successResultOf(d), 26)
        self.assertEqual(set(said), {"journal s: deleting 1 segments (seqs 1-10) that a crash or power cut left after"
                                     " they were dropped (those a cursor had not acknowledged were counted in the"
                                     " loss report then; the others were delivered)"})  # (a cut or two)

    def _one_segment_over_a_lowered_bound(self, files: PowerCutFiles,
                                          cursor: bool) -> tuple[StreamSettings, ManualRunner, Stream]:
        """Records 1-25 in one segment (with cursor ``link`` at none, if ``cursor``), the stream
        reopened under a max_bytes they exceed, its I/O jobs run one by one."""
        s = open_stream(files, StreamSettings(segment_bytes=100 * FRAME))
        if cursor:
            self.successResultOf(s.cursor("link"))
        for i in range(1, 26):
            self.successResultOf(appended(s, record(i)))
        settings = StreamSettings(segment_bytes=10 * FRAME, max_bytes=20 * FRAME)
        runner = ManualRunner()
        s = Stream("s", DIR, settings, files, runner, Clock())
        s.open()
        runner.drain()
        return settings, runner, s

    def test_a_power_cut_never_brings_a_dropped_last_segment_back(self) -> None:
        """docs/journal.md: the last segment, dropped whole to make room under a lowered
        max_bytes, goes once the next one is on disk; a power cut before that leaves it, its
        drop counted. Cut after any I/O job, with a cursor or none: the reopened stream gives
        its cursor none of its records, counts none of them again, and says so in one line."""
        for cursor in (True, False):
            files = PowerCutFiles()
            settings, runner, s = self._one_segment_over_a_lowered_bound(files, cursor)
            d = appended(s, record(26))
            said: list[str] = []
            heard = 0
            for cuts, reopened in enumerate(_reopened_after_each_job(files, settings, runner, said,
                                                                     "resumes at seq")):
                self.assertLessEqual(len(said) - heard, 1, said[heard:])  # one line for one gap
                heard = len(said)
                self.assertNotIn(reopened.first_kept_seq, _dropped(reopened), cuts)  # (the twin reads it)
                if cursor:
                    got = self.successResultOf(reopened.read("link", max_records=1))
                    self.assertNotIn(got[0].seq if got else None, _dropped(reopened), cuts)
                for _ in range(10):  # at the bound: each append drops again
                    self.successResultOf(appended(reopened, record(reopened.next_seq)))
                seqs = _dropped(reopened)
                self.assertEqual(len(seqs), len(set(seqs)), (cursor, cuts))
            self.assertEqual(self.successResultOf(d), 26)
            self.assertEqual(set(said), {"journal s: cursor link resumes at seq 26: seqs 1-25 were dropped before"
                                         " a crash or power cut (those it had not acknowledged were counted in the"
                                         " loss report then; those it had, in memory, were delivered)"}
                             if cursor else set())

    def test_records_acknowledged_in_memory_then_dropped_are_not_said_to_be_counted(self) -> None:
        """docs/journal.md: the cursor acknowledged records 1-20 in memory (``note_ack``, not saved)
        when the last segment, 1-25, is dropped whole: the drop counts 21-25 only (1-20 were
        delivered), and a power cut after its ledger makes the next open say so, not that
        seqs 1-25 were all "counted in the loss report already"."""
        files = PowerCutFiles()
        settings, runner, s = self._one_segment_over_a_lowered_bound(files, cursor=True)
        s.note_ack("link", 20)
        d = appended(s, record(26))
        said: list[str] = []
        for reopened in _reopened_after_each_job(files, settings, runner, said, "were dropped"):
            self.assertIn(_dropped(reopened), ([], list(range(21, 26))))
        self.assertEqual(self.successResultOf(d), 26)
        self.assertIn("journal s: cursor link resumes at seq 26: seqs 1-25 were dropped before a crash or power cut"
                      " (those it had not acknowledged were counted in the loss report then; those it had, in memory,"
                      " were delivered)", said)
        self.assertFalse([line for line in said if "already" in line], said)

    def test_a_deletion_whose_directory_fsync_fails_loses_nothing(self) -> None:
        """The directory's fsync after a dropped segment's unlink fails (EIO): one error line
        names the segment, and after a power cut (the file back) nothing is lost, sent again or
        counted twice: the next open deletes it, the ledger's ``dropped_below`` being durable
        before the unlink."""
        files = _DirSyncFailsAfterUnlink()
        settings = self._filled_to_the_bound(files)
        s = open_stream(files, settings)
        with capturedLogs() as events:
            self.assertEqual(self.successResultOf(appended(s, record(26))), 26)
        errors = [formatEvent(e) for e in events if e["log_level"] == LogLevel.error]
        self.assertEqual(errors, [f"journal s: deleting {segment_path(DIR, 1)} failed: [Errno 5] Input/output error:"
                                  f" '{DIR}'"])
        files.cut()
        self.assertIn(segment_path(DIR, 1), files.names)  # (the unlink was not durable)
        reopened = open_stream(files, settings)
        self.assertNotIn(segment_path(DIR, 1), files.names)
        self.assertEqual([r.seq for r in read_all(reopened, "link")], list(range(11, 27)))
        self.assertEqual(_dropped(reopened), list(range(1, 11)))

    def test_a_power_cut_under_a_lazy_sync_gives_no_dropped_seq_to_a_new_record(self) -> None:
        """docs/journal.md: under ``sync: interval`` or ``none`` the last segment (records 1-25,
        written, not fsynced) is dropped whole, its drop counted in the ledger; a power cut after
        any I/O job leaves less on disk than the ledger's ``dropped_below``. The reopened stream
        numbers on past every seq the ledger counts dropped: no seq names a dropped record and a
        delivered one, and the cursor reads every new record."""
        for sync in ("interval", "none"):
            files = PowerCutFiles()
            s = open_stream(files, StreamSettings(segment_bytes=100 * FRAME, sync=sync))
            self.successResultOf(s.cursor("link"))
            for i in range(1, 26):
                appended(s, record(i))
            settings = StreamSettings(segment_bytes=10 * FRAME, max_bytes=20 * FRAME, sync=sync)
            runner = ManualRunner()
            s = Stream("s", DIR, settings, files, runner, Clock())
            s.open()
            runner.drain()
            appended(s, record(26))
            for cuts, reopened in enumerate(_reopened_after_each_job(files, settings, runner, [], "resumes")):
                dropped = _dropped(reopened)
                first = reopened.next_seq
                for i in range(5):
                    appended(reopened, record(100 + i))
                read = [r.seq for r in read_all(reopened, "link")]
                self.assertEqual(read, list(range(first, first + 5)), (sync, cuts))
                self.assertFalse(set(read) & set(dropped), (sync, cuts, dropped))

    def test_a_drop_mark_beyond_the_segments_deletes_none(self) -> None:
        """A ledger whose ``dropped_below`` is past the stream's next seq belongs to segments
        removed from outside (the stream numbers from 1 again): the open deletes nothing (it
        would delete records acknowledged to their publishers) and forgets the mark."""
        files = PowerCutFiles()
        settings = StreamSettings(segment_bytes=10 * FRAME)
        s = open_stream(files, settings)
        for i in range(1, 26):
            self.successResultOf(appended(s, record(i)))
        write_ledger(files, DIR, b'{"entries": [], "dropped_below": 1000}')
        reopened = open_stream(files, settings)
        self.assertEqual([seg.first_seq for seg in reopened.segments], [1, 11, 21])
        self.assertEqual(reopened.ledger.dropped_below, 0)
        self.assertEqual(len(read_all(reopened)), 25)

    def test_losses_reported_is_kept_with_the_ledger(self) -> None:
        """mark_losses_reported: written with the append made in the same turn, read back after
        a power cut; unchanged ledger entries."""
        files = PowerCutFiles()
        s = open_stream(files)
        self.assertIsNone(s.losses_reported)
        s.mark_losses_reported("1 {}")
        self.successResultOf(appended(s, record(1)))
        reopened = open_stream(files)
        self.assertEqual(reopened.losses_reported, "1 {}")
        self.assertEqual(reopened.loss_report().entries, ())

    def test_reject_new_on_max_bytes(self) -> None:
        """reject-new fails the append with StreamFullError naming the limit, and counts it."""
        settings = StreamSettings(segment_bytes=10 * FRAME, max_bytes=20 * FRAME, overflow="reject-new")
        s = open_stream(PowerCutFiles(), settings)
        for i in range(1, 21):
            self.successResultOf(appended(s, record(i)))
        err = self.failureResultOf(appended(s, record(21)), StreamFullError)
        self.assertEqual((err.value.stream, err.value.limit), ("s", "max-bytes"))
        self.assertEqual(s.stats().drops, {"rejected": 1})
        self.assertEqual(s.next_seq, 21)
        self.assertFalse(err.check(RecordTooLargeError))  # (room may come: sending again may work)

    def test_an_ack_fires_once_the_segments_it_freed_are_deleted(self) -> None:
        """The segments an acknowledgement frees are deleted before its ack() fires, so a
        consumer told the ack is durable sees the room it made (``first_kept_seq``: the twin's
        shadow sync reads again then the shadows whose correction a full stream refused). They
        were deleted after, and ``first_kept_seq`` still named the first record."""
        settings = StreamSettings(segment_bytes=10 * FRAME, max_bytes=20 * FRAME, overflow="reject-new")
        s = open_stream(PowerCutFiles(), settings)
        self.successResultOf(s.cursor("a"))
        for i in range(1, 21):
            self.successResultOf(appended(s, record(i)))
        self.failureResultOf(appended(s, record(21)), StreamFullError)
        runner = ManualRunner()
        self.patch(s, "run", runner)  # (the cursor's save on a thread: its ack fires after it)
        seen: list[int] = []
        acked = s.ack("a", 20).addCallback(lambda _: seen.append(s.first_kept_seq))
        while runner.step():
            pass
        self.successResultOf(acked)
        self.assertEqual(seen, [11])

    def test_a_record_larger_than_max_bytes_is_refused_for_good(self) -> None:
        """A record larger than max_bytes on its own fails with RecordTooLargeError (a
        StreamFullError), naming its size and the limit: the writers answer it as final, not
        as "try again" (docs/journal.md)."""
        for overflow in ("reject-new", "drop-oldest"):
            s = open_stream(PowerCutFiles(), StreamSettings(segment_bytes=10 * FRAME, max_bytes=20 * FRAME,
                                                            overflow=overflow))
            err = self.failureResultOf(appended(s, record(1, size=30 * FRAME)), RecordTooLargeError)
            size = len(encode(record(1, size=30 * FRAME), 1))
            self.assertEqual((err.value.limit, err.value.size, err.value.max_bytes), ("max-bytes", size, 20 * FRAME))
            self.assertEqual(err.getErrorMessage(), f"journal stream 's' refused the append (max-bytes): a record of"
                                                    f" {size} bytes is larger than max_bytes ({20 * FRAME} bytes)")

    def test_the_stop_line_counts_only_batches_of_records(self) -> None:
        """A full stream under reject-new writes its loss ledger alone for each refusal: those
        writes are not batches of records in the line a stop logs. A real gateway whose stream
        had refused appends logged 'journal link-cloud: 6 batches of 0.0 records on average;
        ..., append to durable 0.00 ms on average'."""
        settings = StreamSettings(segment_bytes=10 * FRAME, max_bytes=20 * FRAME, overflow="reject-new")
        s = open_stream(PowerCutFiles(), settings)
        for i in range(1, 21):
            self.successResultOf(appended(s, record(i)))
        for i in range(21, 24):
            self.failureResultOf(appended(s, record(i)), StreamFullError)
        with capturedLogs() as events:
            self.successResultOf(s.close())
        [line] = [formatEvent(e) for e in events if "batches of" in e.get("log_format", "")]
        self.assertTrue(line.startswith("journal s: 20 batches of 1.0 records on average;"), line)
        self.assertEqual(s.stats().batch_records.count, 20)

    def test_drop_oldest_refusing_a_record_too_big_for_the_stream_counts_it_rejected(self) -> None:
        """Under drop-oldest, a record that would not fit even in an empty stream is refused
        with StreamFullError, drops nothing, and is counted as a ``rejected`` loss like a
        refusal under reject-new (docs/journal.md: the loss reasons)."""
        settings = StreamSettings(segment_bytes=10 * FRAME, max_bytes=20 * FRAME)
        s = open_stream(PowerCutFiles(), settings)
        for i in range(1, 6):
            self.successResultOf(appended(s, record(i)))
        err = self.failureResultOf(appended(s, record(6, size=30 * FRAME)), StreamFullError)
        self.assertEqual(err.value.limit, "max-bytes")
        self.assertEqual(s.stats().drops, {"rejected": 1})
        self.assertEqual([(e.reason, e.records) for e in s.loss_report().entries], [("rejected", 1)])
        self.assertEqual([r.seq for r in read_all(s)], [1, 2, 3, 4, 5])

    def test_reject_new_after_restart_with_smaller_max_bytes(self) -> None:
        """Reopened with a max_bytes smaller than its one segment, a reject-new stream refuses
        appends while that segment holds records a cursor has not acknowledged, and takes
        them again (deleting it, no loss) once every cursor has, instead of never again."""
        files = PowerCutFiles()
        s = open_stream(files, StreamSettings(segment_bytes=40 * FRAME))
        self.successResultOf(s.cursor("link"))
        for i in range(1, 31):
            self.successResultOf(appended(s, record(i)))
        s = open_stream(files, StreamSettings(max_bytes=20 * FRAME, overflow="reject-new"))
        self.successResultOf(s.ack("link", 29))
        self.failureResultOf(appended(s, record(31)), StreamFullError)
        self.successResultOf(s.ack("link", 30))
        self.assertEqual(self.successResultOf(appended(s, record(31))), 31)
        self.assertEqual(s.stats().drops, {"rejected": 1})
        self.assertEqual(_segments(files), [segment_path(DIR, 31)])
        self.assertEqual([r.seq for r in self.successResultOf(s.read("link"))], [31])

    def test_min_free_disk(self) -> None:
        """Below min_free_bytes, reject-new refuses; drop-oldest frees space by dropping."""
        files = PowerCutFiles(capacity=100 * FRAME)
        base = dict(segment_bytes=10 * FRAME, min_free_bytes=70 * FRAME)
        s = open_stream(files, StreamSettings(overflow="reject-new", **base))
        for i in range(1, 31):
            self.successResultOf(appended(s, record(i)))
        self.assertEqual(self.failureResultOf(appended(s, record(31)), StreamFullError).value.limit, "min-free-disk")
        s = open_stream(files, StreamSettings(**base))
        self.successResultOf(appended(s, record(31)))
        self.assertEqual(s.stats().drops, {"min-free-disk": 10})

    def test_max_age(self) -> None:
        """Sealed segments whose records are all older than max_age_s expire, counted."""
        clock = Clock()
        clock.advance(1020)
        s = open_stream(PowerCutFiles(), StreamSettings(segment_bytes=10 * FRAME, max_age_s=100), clock)
        for i in range(1, 26):
            appended(s, record(i, received=900.0 + i))
        s.enforce_limits()
        self.assertEqual(s.stats().drops, {"max-age": 10})
        self.assertEqual(s.stats().records, 15)


class _DyingDisk(PowerCutFiles):
    """While :attr:`dying` is set, a segment write fails (EIO) once its bytes reached the file
    (not fsynced), the creation of an empty one fails (no file made), and so does every truncate."""

    dying = False

    def append(self, path: str, data: bytes) -> None:  # (sync: interval or none)
        if self.dying and not data:
            raise OSError(errno.EIO, "Input/output error", path)
        super().append(path, data)
        if self.dying and path.endswith(".seg"):
            raise OSError(errno.EIO, "Input/output error", path)

    def append_sync(self, path: str, data: bytes) -> None:
        if self.dying:
            self.append(path, data)
            raise OSError(errno.EIO, "Input/output error", path)
        super().append_sync(path, data)

    def truncate(self, path: str, size: int) -> None:
        if self.dying:
            raise OSError(errno.EIO, "Input/output error", path)
        super().truncate(path, size)


class _FreeSpaceUnknown(PowerCutFiles):
    """A disk whose free space cannot be measured (statvfs fails, EIO) while :attr:`failing` is set."""

    failing = False

    def free_bytes(self, path: str) -> int:
        if self.failing:
            raise OSError(errno.EIO, "Input/output error", path)
        return super().free_bytes(path)


class DiskFullTests(SynchronousTestCase):
    """A failed write fails its appends cleanly and damages nothing stored."""

    def _dropped_with_the_ledger_refused(self, files: PowerCutFiles) -> Stream:
        """Segments 1-4, 5-8 and 9-12 stored, cursor ``link`` at none, and the disk short of
        free space (``min_free_disk``) with the ledger's writes failing: the first two dropped."""
        s = open_stream(files, StreamSettings(segment_bytes=4 * FRAME, min_free_bytes=500))
        s.cursor("link")
        for i in range(1, 13):
            self.successResultOf(appended(s, record(i)))
        files.capacity = files.used() + 20
        s.retention.measure_free(now=True)
        s.enforce_limits()
        self.assertEqual(s.stats().drops, {"min-free-disk": 8})
        return s

    def _after_a_cut(self, files: PowerCutFiles) -> tuple[list[int], list[int]]:
        """The seqs the loss ledger counts and those cursor ``link`` reads, after a power cut now."""
        files.cut()
        files.capacity = 1 << 30
        reopened = open_stream(files)
        counted = [seq for e in reopened.loss_report().entries for seq in range(e.first_seq, e.last_seq + 1)]
        read = [r.seq for r in read_all(reopened, "link")]
        reopened.close()
        return counted, read

    def test_a_free_space_measure_that_fails_after_a_write_fails_no_append(self) -> None:
        """A batch is written and fsynced, then measuring the free space (statvfs, due once a
        second) fails: its records are durable, their appends fire, and the next records take
        the next seqs. The batch was taken for a failed write, never undone: its appends failed
        though stored, and a batch queued behind it was written, then its result met no batch
        in flight (IndexError); under ``sync: interval`` its seqs were counted lost while
        stored."""
        for sync in ("sync", "interval"):
            files, runner, clock = _FreeSpaceUnknown(), ManualRunner(), Clock()
            s = Stream("s", DIR, StreamSettings(sync=sync, min_free_bytes=0), files, runner, clock)
            s.open()
            runner.drain()
            clock.advance(60)  # (the free space is measured with the next write)
            files.failing = True
            first = s.append(record(1))
            clock.advance(0)
            second = s.append(record(2))
            clock.advance(0)  # (a second batch in flight behind the first)
            runner.drain()
            files.failing = False
            self.assertEqual((self.successResultOf(first), self.successResultOf(second)), (1, 2), sync)
            self.assertEqual(s.stats().drops, {}, sync)
            s.close()
            runner.drain()
            self.assertEqual([r.seq for r in read_all(open_stream(files))], [1, 2], sync)

    def test_a_drop_on_a_full_disk_is_counted_before_its_segments_go(self) -> None:
        """docs/journal.md: min_free_disk drops two segments on a disk too full for the loss
        ledger that counts them: the oldest is deleted to make room for it, the ledger is
        written, and only then the other; a power cut after that finds all 8 counted (the
        ledger's refused write did not hold the deletions back: 8 records gone and counted
        nowhere)."""
        files = PowerCutFiles()
        self._dropped_with_the_ledger_refused(files)
        self.assertNotIn(segment_path(DIR, 5), files.names)
        self.assertEqual(self._after_a_cut(files), (list(range(1, 9)), [9, 10, 11, 12]))
        self.flushLoggedErrors(OSError)

    def test_dropped_segments_wait_for_a_ledger_the_disk_refuses(self) -> None:
        """docs/journal.md: the disk refuses the loss ledger for another reason than space (EIO):
        the dropped segments stay on disk, counted as free; a power cut brings their records
        back, to be sent (nothing lost uncounted); once the ledger is written (the next
        periodic check), they go."""

        class RefusingLedger(PowerCutFiles):
            refuse = True

            def write(self, path: str, data: bytes) -> None:
                if self.refuse and path.endswith("losses.json.tmp"):
                    raise OSError(errno.EIO, "Input/output error", path)
                super().write(path, data)

        files = RefusingLedger()
        s = self._dropped_with_the_ledger_refused(files)
        self.assertIn(segment_path(DIR, 1), files.names)
        self.assertGreaterEqual(s.retention.free, 500)  # (no more drops for want of their room)
        snapshot = copy.deepcopy((files.names, files.durable))
        files.refuse = False
        s.enforce_limits()
        self.assertEqual(sorted(p for p in files.names if p.endswith(".seg")), [segment_path(DIR, 9)])
        self.assertEqual(self._after_a_cut(files), (list(range(1, 9)), [9, 10, 11, 12]))
        files.names, files.durable = snapshot  # (the power cut before the ledger was written)
        self.assertEqual(self._after_a_cut(files), ([], list(range(1, 13))))
        self.flushLoggedErrors(OSError)

    def test_cursor_saves_refused_after_drops_are_logged_once_a_minute(self) -> None:
        """Each drop moves the cursors past the dropped records and saves them; on a disk that
        refuses those saves, each failure logged a line: a real gateway on a full tmpfs wrote 17
        in one second, one per segment dropped. Now the first, then at most once a minute with
        the failures since."""

        class RefusingCursors(PowerCutFiles):
            def write(self, path: str, data: bytes) -> None:
                if path.endswith("link.json.tmp"):
                    raise OSError(errno.EIO, "Input/output error", path)
                super().write(path, data)

        clock = Clock()
        s = open_stream(RefusingCursors(), StreamSettings(min_free_bytes=0), clock)
        s.cursor("link")
        for i in range(1, 13):
            self.successResultOf(appended(s, record(i)))

        def lines() -> list[str]:
            return [formatEvent(e) for e in logs if "saving cursor" in e.get("log_format", "")]

        with capturedLogs() as logs:
            for seq in (3, 5, 7, 9):  # (drops moving the cursor past seq - 1)
                s.reader.skip_to(seq)
                clock.advance(1)
            self.assertEqual(len(lines()), 1, lines())
            self.assertIn("saving cursor link failed (logged at most once a minute while they go on): ", lines()[0])
            clock.advance(60)
            s.reader.skip_to(11)
            clock.advance(0)
        self.assertEqual(len(lines()), 2, lines())
        self.assertIn("saving cursor link failed (4 failed since the last such line; logged at most once a minute"
                      " while they go on): ", lines()[1])

    def test_a_segment_write_a_full_disk_refuses_deletes_no_dropped_segment_before_the_ledger(self) -> None:
        """docs/journal.md: dropped segments held while the disk refused their ledger (EIO); a
        batch carrying the ledger fails on its segment write (ENOSPC) before the ledger's turn:
        the ledger, never refused itself, is written on its own at once, and the held segments
        go only once it is on disk; a power cut after any of it loses nothing uncounted. (The
        batch's ENOSPC was taken for the ledger's: the oldest held segment was deleted "to make
        room", with no ledger write queued behind it, and a power cut lost its 4 records
        uncounted.)"""

        class Refusing(PowerCutFiles):
            ledger = segments = False

            def write(self, path: str, data: bytes) -> None:
                if self.ledger and path.endswith("losses.json.tmp"):
                    raise OSError(errno.EIO, "Input/output error", path)
                super().write(path, data)

            def append_sync(self, path: str, data: bytes) -> None:
                if self.segments and path.endswith(".seg"):
                    raise OSError(errno.ENOSPC, "No space left on device", path)
                super().append_sync(path, data)

        files, runner = Refusing(), ManualRunner()
        s = open_stream(files, StreamSettings(segment_bytes=4 * FRAME, min_free_bytes=500), run=runner)
        runner.drain()
        s.cursor("link")
        for i in range(1, 13):
            d = appended(s, record(i))
            runner.drain()
            self.successResultOf(d)
        files.ledger = True
        files.reported_free = 20  # (min_free_disk drops; the small ledger would fit)
        s.retention.measure_free(now=True)
        runner.drain()
        s.enforce_limits()
        runner.drain()
        self.assertEqual(s.stats().drops, {"min-free-disk": 8})
        self.assertIn(segment_path(DIR, 1), files.names)  # (held: the ledger was refused)
        files.ledger, files.segments = False, True
        refused = appended(s, record(13))  # (its batch holds the ledger)
        s.enforce_limits()  # (the held segments wait for that batch's ledger write)
        jobs = 0
        while runner.step():
            jobs += 1
            counted, read = self._after_a_cut(copy.deepcopy(files))
            self.assertEqual(sorted(counted + read), list(range(1, 13)), f"a power cut after job {jobs}")
        self.failureResultOf(refused, JournalWriteError)
        self.assertEqual(sorted(p for p in files.names if p.endswith(".seg")), [segment_path(DIR, 9)])
        self.flushLoggedErrors(OSError)

    def test_enospc_then_resume(self) -> None:
        """ENOSPC: appends fail with JournalWriteError, stored records intact, appends resume with freed space."""
        files = PowerCutFiles(capacity=5 * FRAME + 10)
        files.reported_free = 1 << 30  # others share the disk: the check cannot foresee it
        s = open_stream(files, StreamSettings(min_free_bytes=0))
        for i in range(1, 6):
            self.successResultOf(appended(s, record(i)))
        err = self.failureResultOf(appended(s, record(6)), JournalWriteError)
        self.assertEqual(err.value.cause.errno, 28)
        self.assertEqual(len(files.names[segment_path(DIR, 1)].data), 5 * FRAME)
        files.capacity = 1 << 20
        s.clock.advance(WRITE_BACKOFF_S)
        self.assertEqual(self.successResultOf(appended(s, record(6))), 6)
        self.assertEqual([r.seq for r in read_all(open_stream(files))], [1, 2, 3, 4, 5, 6])

    def test_a_failed_batch_truncated_back_stays_so_after_a_power_cut(self) -> None:
        """A batch that filled the last segment (that part durable) and started a new one,
        which the disk refused: the undo cuts the old segment back, durably. The seqs are used
        again by the next write, which goes to a new segment (a bigger record that does not
        fit); after a power cut every acknowledged record is read back, once, in order. The
        cut-back was not fsynced: the refused record came back in the old segment, under the
        seq of the acknowledged one in the new segment, which the reader then skipped."""
        files = _RefusesOnce(segment_path(DIR, 11))
        settings = StreamSettings(segment_bytes=10 * FRAME, min_free_bytes=0)
        s = open_stream(files, settings)
        for i in range(1, 10):
            self.successResultOf(appended(s, record(i)))
        d10, d11 = s.append(record(10)), s.append(record(11))
        s.clock.advance(0)
        self.failureResultOf(d10, JournalWriteError)
        self.failureResultOf(d11, JournalWriteError)
        s.clock.advance(WRITE_BACKOFF_S)
        big = record(10, size=2 * FRAME)
        self.assertEqual(self.successResultOf(appended(s, big)), 10)
        self.assertEqual(self.successResultOf(appended(s, record(11))), 11)
        files.cut()
        got = read_all(open_stream(files, settings))
        self.assertEqual([(r.seq, r.payload) for r in got],
                         [(i, record(i).payload) for i in range(1, 10)] + [(10, big.payload), (11, record(11).payload)])


    def test_a_failed_undo_keeps_the_refused_seqs_from_other_records(self) -> None:
        """A write that failed (EIO, its record in the file all the same) and whose undo failed
        too (the cut-back: EIO): appends are refused, without a record written, until the undo
        works; then the next record takes the refused one's seq and is read back, before and
        after a power cut. The next write took the seq at once: its record went into the
        file behind the refused one, which readers then read in its place."""
        files = _DyingDisk()
        runner = ManualRunner()
        s = open_stream(files, StreamSettings(min_free_bytes=0), run=runner)
        runner.drain()
        for i in (1, 2):
            d = appended(s, record(i))
            runner.drain()
            self.successResultOf(d)
        files.dying = True
        d = appended(s, record(3))
        runner.drain()
        error = self.failureResultOf(d, JournalWriteError).value.cause
        self.assertEqual(error.errno, errno.EIO)
        self.assertIn("undoing it failed", str(error))
        size = len(files.names[segment_path(DIR, 1)].data)
        for backoff in (WRITE_BACKOFF_S, 2 * WRITE_BACKOFF_S):
            s.clock.advance(backoff)
            d = appended(s, record(30))
            runner.drain()
            self.assertIn("appends are refused until it is undone",
                          str(self.failureResultOf(d, JournalWriteError).value.cause))
            self.assertEqual(len(files.names[segment_path(DIR, 1)].data), size)  # nothing written
        self.assertEqual(s.snapshot().refusing.reason, "write-error")
        files.dying = False
        s.clock.advance(4 * WRITE_BACKOFF_S)
        d = appended(s, record(30))
        runner.drain()
        self.assertEqual(self.successResultOf(d), 3)
        self.assertIsNone(s.snapshot().refusing)
        expected = [(1, record(1).payload), (2, record(2).payload), (3, record(30).payload)]
        self.assertEqual([(r.seq, r.payload) for r in read_all(s)], expected)
        files.cut()
        self.assertEqual([(r.seq, r.payload) for r in read_all(open_stream(files))], expected)

    def test_a_failed_undo_under_a_lazy_sync_leaves_no_record_counted_lost_to_read(self) -> None:
        """``sync: interval``: an acknowledged append whose write failed (EIO, its record in the
        file all the same) and whose undo failed too is counted ``write-failed``; a stop before
        the undo works leaves the record on disk. The next start neither reads it (the loss
        report counts it: reading it too made the report wrong) nor gives its seq to a new
        record. It was read back, seq 3 both counted lost and delivered."""
        files = _DyingDisk()
        settings = StreamSettings(sync="interval", sync_interval_ms=50, min_free_bytes=0)
        s = open_stream(files, settings)
        self.successResultOf(s.cursor("link"))
        for i in (1, 2):
            self.successResultOf(appended(s, record(i)))
        files.dying = True
        self.assertEqual(self.successResultOf(appended(s, record(3))), 3)
        self.assertEqual(s.stats().drops, {"write-failed": 1})
        self.successResultOf(s.close())
        files.dying = False
        self.assertEqual(len(files.names[segment_path(DIR, 1)].data), 3 * FRAME)  # (the refused record)
        reopened = open_stream(files, settings)
        self.assertEqual([r.seq for r in read_all(reopened, "link")], [1, 2])
        self.assertEqual([(e.reason, e.first_seq, e.last_seq) for e in reopened.loss_report().entries],
                         [("write-failed", 3, 3)])
        self.assertEqual(self.successResultOf(appended(reopened, record(4))), 4)
        self.assertEqual([r.seq for r in read_all(reopened, "link")], [4])
        self.assertEqual(reopened.stats().drops, {})  # (no gap counted as damage)
        self.successResultOf(appended(reopened, record(5)))
        self.successResultOf(reopened.close())
        data = files.names[segment_path(DIR, 1)].data  # 1, 2, the refused 3, 4, 5
        data[2 * FRAME + 20] ^= 0xFF  # (damage across the refused record and record 4)
        data[3 * FRAME + 20] ^= 0xFF
        again = open_stream(files, settings)
        self.assertEqual([(e.reason, e.records, e.first_seq, e.last_seq) for e in again.loss_report().entries],
                         [("write-failed", 1, 3, 3), ("corrupt", 1, 4, 4)])  # (3 is not counted twice)
        self.assertEqual([r.seq for r in read_all(again, "link")], [1, 2, 5])  # (not acknowledged)

    def test_a_cursor_made_on_a_full_disk_is_kept_in_memory(self) -> None:
        """A new cursor (a link added to the configuration) whose file the disk refuses (a
        gateway started on a full disk): its creation is one error line, not a failure, and it
        works from memory (records read, acknowledged); it is written with its next save the
        disk takes, and a stop with the disk still full ends all the same, saying so. Its
        creation failed with JournalWriteError, which failed the link's start and the whole
        gateway's ('gateway failed to start: FirstError[#1, [Failure instance: ...'), and
        the stop after it failed too ('stopping journal failed', with a traceback)."""
        files = PowerCutFiles()
        s = open_stream(files, StreamSettings(min_free_bytes=0))
        self.successResultOf(appended(s, record(1)))
        files.capacity = files.used()  # full
        with capturedLogs() as events:
            self.successResultOf(s.cursor("link"))
        self.assertEqual([formatEvent(e) for e in events], [
            f"journal s: cursor link is not on disk ([Errno 28] No space left on device: '{DIR}/cursors/link.json.tmp'):"
            " it is written with"
            " its next save the disk takes; a start before that starts it again at the oldest record kept"
            " (sent again, never skipped)"])
        [got] = self.successResultOf(s.read("link"))
        self.assertEqual(got.seq, 1)
        self.failureResultOf(s.ack("link", 1), JournalWriteError)  # (still full: the caller is told)
        with capturedLogs() as events:
            self.successResultOf(s.close())
        self.assertEqual([formatEvent(e) for e in events if e["log_level"] == LogLevel.error], [
            f"journal s: cursor link could not be saved at stop ([Errno 28] No space left on device:"
            f" '{DIR}/cursors/link.json.tmp'): the next start resumes it from its last save (the oldest record"
            " kept if it has none): what it acknowledged since is sent again, never skipped"])
        files.capacity = 1 << 20
        again = open_stream(files)
        self.successResultOf(again.cursor("link"))
        self.assertEqual([r.seq for r in self.successResultOf(again.read("link"))], [1])

    def test_failed_write_backs_off(self) -> None:
        """After a failed write, appends are refused at once without touching the disk
        (0.5 s, doubling with each further failure up to 8 s); a successful write ends it."""
        files, runner = PowerCutFiles(capacity=3 * FRAME + 10), ManualRunner()
        files.reported_free = 1 << 30  # the estimate cannot foresee it
        s = open_stream(files, StreamSettings(min_free_bytes=0), run=runner)
        runner.drain()
        for i in (1, 2, 3):
            d = appended(s, record(i))
            runner.drain()
            self.successResultOf(d)
        attempts = 0
        for backoff in (0.5, 1.0, 2.0, 4.0, 8.0, 8.0):
            d = appended(s, record(4))
            self.assertEqual(len([j for j in runner.jobs if j[0] is write_batch]), 1)  # it is tried
            runner.drain()
            attempts += 1
            self.assertEqual(self.failureResultOf(d, JournalWriteError).value.cause.errno, 28)
            s.clock.advance(backoff - 0.01)
            refused = appended(s, record(4))  # within the back-off: refused, nothing tried
            self.assertEqual(self.failureResultOf(refused, JournalWriteError).value.cause.errno, 28)
            self.assertEqual(runner.jobs, [])
            s.clock.advance(0.01)
        files.capacity = 1 << 20
        d = appended(s, record(4))
        runner.drain()
        self.assertEqual(self.successResultOf(d), 4)
        files.capacity = 0  # the next failure backs off from the start again
        d = appended(s, record(5))
        runner.drain()
        self.failureResultOf(d, JournalWriteError)
        s.clock.advance(0.5)
        files.capacity = 1 << 20
        d = appended(s, record(5))
        runner.drain()
        self.assertEqual(self.successResultOf(d), 5)

    def test_failed_writes_are_logged_once_a_minute(self) -> None:
        """A filesystem remounted read-only fails one write per back-off (8 s) for as long as
        it stays so: each failure was an error line, two a stream every 8 s for hours. The
        first failure is logged, then at most once a minute with the failures in a row; the
        first write that works again says so, and a failure after it is logged at once."""

        class ReadOnlyDisk(PowerCutFiles):
            read_only = False

            def append(self, path: str, data: bytes) -> None:
                if self.read_only:
                    raise OSError(errno.EROFS, "Read-only file system", path)
                super().append(path, data)

            append_sync = append

        files, clock = ReadOnlyDisk(), Clock()
        s = open_stream(files, StreamSettings(min_free_bytes=0), clock)
        self.successResultOf(appended(s, record(1)))
        files.read_only = True

        def run(seconds: int) -> list[str]:
            with capturedLogs() as events:
                for _ in range(seconds):
                    s.append(record(2)).addErrback(lambda f: f.trap(JournalWriteError))
                    clock.advance(1)
            return [formatEvent(e) for e in events if e["log_format"].startswith("journal")]

        error = f"[Errno 30] Read-only file system: '{segment_path(DIR, 1)}'"
        self.assertEqual(run(60), [f"journal s: write failed (1 in a row; appends refused for 0.5 s, then tried"
                                   f" again; logged at most once a minute): {error}"])
        self.assertEqual(run(60), [f"journal s: write failed (11 in a row; appends refused for 8.0 s, then tried"
                                   f" again; logged at most once a minute): {error}"])
        files.read_only = False
        self.assertEqual(run(8), ["journal s: writes work again, after 16 failed writes"])
        self.assertEqual([r.seq for r in read_all(open_stream(files))], [1, 2, 3, 4, 5, 6, 7, 8, 9])
        files.read_only = True
        self.assertEqual(run(1), [f"journal s: write failed (1 in a row; appends refused for 0.5 s, then tried"
                                  f" again; logged at most once a minute): {error}"])

    def test_the_back_off_across_a_step_back_of_the_wall_clock(self) -> None:
        """NTP steps the clock back an hour during the 0.5 s back-off after a failed write:
        appends are tried again 0.5 s later, not refused for the hour."""
        files, runner, clock = PowerCutFiles(capacity=FRAME + 10), ManualRunner(), SteppingClock()
        files.reported_free = 1 << 30
        s = open_stream(files, StreamSettings(min_free_bytes=0), clock=clock, run=runner)
        runner.drain()
        d = appended(s, record(1))
        runner.drain()
        self.successResultOf(d)
        d = appended(s, record(2))
        runner.drain()
        self.failureResultOf(d, JournalWriteError)
        clock.step(-3600.0)
        clock.advance(WRITE_BACKOFF_S)
        files.capacity = 1 << 20
        d = appended(s, record(2))
        runner.drain()
        self.assertEqual(self.successResultOf(d), 2)

    def test_append_latency_across_a_step_of_the_wall_clock(self) -> None:
        """docs/journal.md: append_latency in seconds. NTP steps the clock forward by years
        while a batch is on the I/O thread: its appends took no years (the max was a year
        for good)."""
        runner, clock = ManualRunner(), SteppingClock()
        s = open_stream(PowerCutFiles(), clock=clock, run=runner)
        runner.drain()
        d = appended(s, record(1))
        clock.step(365 * 86400.0)
        runner.drain()
        self.successResultOf(d)
        self.assertLess(s.stats().append_latency.max, 1.0)

    def test_failed_write_refreshes_free_space(self) -> None:
        """A write fails for want of space while the free-space estimate is stale: the
        estimate is measured again at once, so the overflow policy (here drop-oldest)
        makes room on the next append instead of writing into a full disk again. (On this
        tiny disk the loss ledger that counts the first drop takes the room it made: the
        ledger goes first, so the append after it makes room once more.)"""
        files = PowerCutFiles(capacity=9 * FRAME + 10)
        files.reported_free = 1 << 30  # measured at open: plenty
        s = open_stream(files, StreamSettings(segment_bytes=3 * FRAME, min_free_bytes=2 * FRAME))
        for i in range(1, 10):
            self.successResultOf(appended(s, record(i)))
        files.reported_free = None  # from now on statvfs tells the truth: the disk is full
        self.failureResultOf(appended(s, record(10)), JournalWriteError)
        s.clock.advance(WRITE_BACKOFF_S)
        self.failureResultOf(appended(s, record(10)), JournalWriteError)
        self.assertIn(DIR + "/losses.json", files.names)
        s.clock.advance(2 * WRITE_BACKOFF_S)
        self.assertEqual(self.successResultOf(appended(s, record(10))), 10)
        self.assertEqual(s.stats().drops, {"min-free-disk": 6})
        files.capacity = 1 << 20  # (room for the reading cursor, and the ledger at the close)
        self.successResultOf(s.close())
        reopened = open_stream(files)
        self.assertEqual([r.seq for r in read_all(reopened)], list(range(7, 11)))
        self.assertEqual(sum(e.records for e in reopened.loss_report().entries), 6)

    def _two_in_flight(self, capacity_frames: int, settings: StreamSettings | None = None,
                       stored: int = 3, first: int = 3, second: int = 2
                       ) -> tuple[PowerCutFiles, ManualRunner, Stream, list[Deferred[int]], list[Deferred[int]]]:
        """``stored`` records on disk, then two batches queued on the I/O thread."""
        files, runner = PowerCutFiles(capacity=capacity_frames * FRAME + 10), ManualRunner()
        files.reported_free = 1 << 30
        s = open_stream(files, settings or StreamSettings(min_free_bytes=0), run=runner)
        runner.drain()
        for i in range(1, stored + 1):
            appended(s, record(i))
            runner.drain()
        a = [s.append(record(i)) for i in range(stored + 1, stored + first + 1)]
        s.clock.advance(0)
        b = [s.append(record(i)) for i in range(stored + first + 1, stored + first + second + 1)]
        s.clock.advance(0)
        self.assertEqual(len(runner.jobs), 2)
        return files, runner, s, a, b

    def _resumes(self, files: PowerCutFiles, runner: ManualRunner, s: Stream, seq: int) -> None:
        """Space returns: the next append gets ``seq`` and the stream reads back 1..``seq``."""
        files.capacity = 1 << 20
        s.clock.advance(WRITE_BACKOFF_MAX_S)  # (past any back-off)
        d = appended(s, record(seq))
        runner.drain()
        self.assertEqual(self.successResultOf(d), seq)
        self.assertEqual([r.seq for r in read_all(open_stream(files))], list(range(1, seq + 1)))

    def test_batch_queued_behind_a_failed_one_is_not_written(self) -> None:
        """The first of two batches in flight hits ENOSPC: both fail at once, the second is
        refused on the I/O thread without touching the file, and the seqs are reused."""
        files, runner, s, a, b = self._two_in_flight(capacity_frames=5)
        runner.step()
        for d in a + b:
            self.assertEqual(self.failureResultOf(d, JournalWriteError).value.cause.errno, 28)
        self.assertEqual(len(files.names[segment_path(DIR, 1)].data), 3 * FRAME)
        files.capacity = 1 << 20  # space returns before the refused batch comes up
        runner.step()
        self.assertEqual(len(files.names[segment_path(DIR, 1)].data), 3 * FRAME)
        self.assertEqual([job[0] for job in runner.jobs], [files.free_bytes])  # only the free-space check
        self._resumes(files, runner, s, 4)
        self.assertEqual(s.stats().records, 4)

    def test_failure_leaves_latency_accounting_clean(self) -> None:
        """Appends that were pending when a write failed do not count in the latency of the
        appends made afterwards."""
        clock = Clock()
        clock.advance(1000)
        files, runner = PowerCutFiles(capacity=FRAME // 2), ManualRunner()
        files.reported_free = 1 << 30
        s = open_stream(files, StreamSettings(min_free_bytes=0), clock, run=runner)
        runner.drain()
        failed = [appended(s, record(i)) for i in range(1, 8)]  # 7 turns: 2 in flight, 5 pending
        runner.drain()
        for d in failed:
            self.failureResultOf(d, JournalWriteError)
        files.capacity = 1 << 20
        clock.advance(5)
        before = s.stats().append_latency
        count, total = before.count, before.total
        for i in (8, 9):
            d = appended(s, record(i))
            runner.drain()
            self.successResultOf(d)
        latency = s.stats().append_latency
        self.assertEqual(latency.count, count + 2)
        self.assertAlmostEqual(latency.total, total)  # no clock time passed while they were written

    def test_second_batch_fails_after_the_first_is_stored(self) -> None:
        """The first batch fits, the second does not: the first fires, the second fails and
        is cut off the file without touching the first."""
        files, runner, s, a, b = self._two_in_flight(capacity_frames=6)
        runner.step()
        self.assertEqual([self.successResultOf(d) for d in a], [4, 5, 6])
        runner.step()
        for d in b:
            self.failureResultOf(d, JournalWriteError)
        self.assertEqual(len(files.names[segment_path(DIR, 1)].data), 6 * FRAME)
        self._resumes(files, runner, s, 7)

    def test_new_segment_is_undone_only_by_the_batch_that_created_it(self) -> None:
        """The first batch starts a new segment and the second continues it: when the
        second fails, the segment stays with the first batch's records; when the first
        fails, the segment goes and the second is refused."""
        settings = StreamSettings(segment_bytes=4 * FRAME, min_free_bytes=0)
        files, runner, s, a, b = self._two_in_flight(capacity_frames=6, settings=settings, stored=4, first=2)
        runner.step()
        self.assertEqual([self.successResultOf(d) for d in a], [5, 6])
        runner.step()
        for d in b:
            self.failureResultOf(d, JournalWriteError)
        self.assertEqual(len(files.durable[segment_path(DIR, 5)].data), 2 * FRAME)
        files.capacity = 1 << 20
        self.assertEqual([r.seq for r in read_all(open_stream(files))], list(range(1, 7)))

        files, runner, s, a, b = self._two_in_flight(capacity_frames=5, settings=settings, stored=4, first=2)
        runner.drain()
        for d in a + b:
            self.failureResultOf(d, JournalWriteError)
        self.assertNotIn(segment_path(DIR, 5), files.names)
        self._resumes(files, runner, s, 5)

    def test_ledger_write_failure_keeps_the_records(self) -> None:
        """Writing the loss ledger fails after the batch's records are durable: the appends
        fire, and the ledger is written with a later batch."""

        class LedgerFails(PowerCutFiles):
            failures = 2  # the batch with the appends, and one more the turn's end starts

            def write(self, path: str, data: bytes) -> None:
                if path.endswith("losses.json.tmp") and self.failures:
                    self.failures -= 1
                    raise OSError(28, "No space left on device", path)
                super().write(path, data)

        files = LedgerFails()
        s = open_stream(files, StreamSettings(min_free_bytes=0))
        s.note_loss("rejected", 1, 10)
        self.assertEqual(self.successResultOf(appended(s, record(1))), 1)
        self.assertNotIn(DIR + "/losses.json", files.names)
        self.assertTrue(s.ledger.dirty)
        self.assertEqual(self.successResultOf(appended(s, record(2))), 2)
        self.assertIn(DIR + "/losses.json", files.names)
        self.assertEqual(open_stream(files).loss_report().totals, {"rejected": 1})
        self.assertEqual([r.seq for r in read_all(open_stream(files))], [1, 2])

    def test_a_refused_ledger_or_cursor_write_leaves_no_temp_file(self) -> None:
        """A loss-ledger or cursor write the full disk refuses removes its temporary file at
        once: an empty losses.json.tmp (and cursors/<c>.json.tmp) stayed in the stream's
        directory until the next start cleared it."""
        files = PowerCutFiles()
        s = open_stream(files, StreamSettings(min_free_bytes=0))
        self.successResultOf(s.cursor("link"))
        self.successResultOf(appended(s, record(1)))
        files.capacity = files.used()  # full
        s.note_loss("rejected", 1, 10)
        s.clock.advance(0)  # type: ignore[attr-defined]
        self.assertTrue(s.ledger.dirty)  # refused: kept to write later
        self.failureResultOf(s.ack("link", 1), JournalWriteError)
        self.assertEqual(sorted(p for p in files.names if p.endswith(".tmp")), [])


    def test_a_close_on_a_disk_that_refuses_the_ledger_ends(self) -> None:
        """A stream closing with a loss ledger to write on a disk that refuses it (full) tries it
        once and ends (its cursors saved), the ledger kept unwritten; a clear of the losses
        there fails, saying so. The close wrote the ledger again and again without end (each
        a job on the journal's thread), so the gateway's stop waited out its shutdown_timeout
        ('journal did not stop within 4.0 s', seen on a real gateway on a full tmpfs) and the
        cursors were never saved; a clear waited for ever."""

        class FullDisk(PowerCutFiles):
            def write(self, path: str, data: bytes) -> None:
                if path.endswith("losses.json.tmp"):
                    raise OSError(28, "No space left on device", path)
                super().write(path, data)

        files, runner = FullDisk(), ManualRunner()
        s = open_stream(files, StreamSettings(min_free_bytes=0), run=runner)
        runner.drain()
        s.note_loss("rejected", 1, 10)
        cleared = s.clear_losses(s.loss_report())
        for _ in range(3):
            runner.step()
        self.failureResultOf(cleared, JournalWriteError)
        made = s.cursor("link")
        runner.drain()
        self.successResultOf(made)
        s.note_ack("link", 0)  # (a change to save at the close)
        closed = s.close()
        for _ in range(3):
            if runner.jobs:
                runner.step()
        self.assertEqual(runner.jobs, [])
        self.successResultOf(closed)
        self.assertIn(DIR + "/cursors/link.json", files.names)
        self.assertTrue(s.ledger.dirty)

    def test_failed_ledger_writes_are_logged_once_a_minute(self) -> None:
        """On a full disk every refused append notes a loss and every note's ledger write fails:
        the error was logged each time, so publishers retrying at once (broker.md: they
        reconnect and publish again at once) flooded the log. It is logged at the first
        failure, then at most once a minute with the failures in a row; the first write that
        works again says so, and a failure after it is logged at once again."""

        class FullDisk(PowerCutFiles):
            full = True

            def write(self, path: str, data: bytes) -> None:
                if path.endswith("losses.json.tmp") and self.full:
                    raise OSError(28, "No space left on device", path)
                super().write(path, data)

        files, clock = FullDisk(), Clock()
        s = open_stream(files, StreamSettings(min_free_bytes=0), clock)

        def refuse(times: int) -> list[str]:
            with capturedLogs() as events:
                for _ in range(times):
                    s.note_loss("rejected", 1, 10)
                    clock.advance(1)
            return [formatEvent(e) for e in events if "ledger" in e.get("log_format", "")]

        error = "[Errno 28] No space left on device: '/j/s/losses.json.tmp'"
        self.assertEqual(refuse(59), [f"journal s: writing the loss ledger failed (1 in a row; kept, written later;"
                                      f" logged at most once a minute): {error}"])
        self.assertEqual(refuse(2), [f"journal s: writing the loss ledger failed (61 in a row; kept, written later;"
                                     f" logged at most once a minute): {error}"])
        files.full = False
        self.assertEqual(refuse(1), ["journal s: the loss ledger is written again, after 61 failed writes"])
        self.assertEqual(open_stream(files).loss_report().totals, {"rejected": 62})
        files.full = True
        self.assertEqual(refuse(1), [f"journal s: writing the loss ledger failed (1 in a row; kept, written later;"
                                     f" logged at most once a minute): {error}"])


class OpeningTests(SynchronousTestCase):
    """Work handed to a stream before it finished opening waits for it, in order."""

    def test_appends_and_cursor_before_open(self) -> None:
        """Appends and a cursor made while recovery runs complete after it, with seqs in call order."""
        files, runner = PowerCutFiles(), ManualRunner()
        s = open_stream(files, run=runner)
        pending = [s.append(record(i)) for i in range(1, 4)]
        cursor = s.cursor("c")
        for d in pending + [cursor]:
            self.assertNoResult(d)
        runner.drain()
        s.clock.advance(0)
        runner.drain()
        self.assertEqual([self.successResultOf(d) for d in pending], [1, 2, 3])
        self.successResultOf(cursor)
        read = s.read("c")
        runner.drain()
        self.assertEqual([r.seq for r in self.successResultOf(read)], [1, 2, 3])


    def test_a_record_the_format_cannot_hold_raises_before_open_too(self) -> None:
        """A record too big for the frame (a topic over 65535 bytes) raises ValueError at once
        while the stream opens, as it does once it is open (docs/journal.md), and the appends
        around it are stored. Queued, it raised when the open released it: the open failed
        ("journal stream ... failed to open") and the append behind it never fired."""
        files, runner = PowerCutFiles(), ManualRunner()
        s = open_stream(files, run=runner)
        first = s.append(record(1))
        self.assertRaises(ValueError, s.append, record(2)._replace(topic="t" * 65536))
        second = s.append(record(3))
        runner.drain()
        s.clock.advance(0)
        runner.drain()
        self.assertEqual([self.successResultOf(d) for d in (first, second)], [1, 2])
        self.assertRaises(ValueError, s.append, record(4)._replace(topic="t" * 65536))


class ClockStepAgeTests(SynchronousTestCase):
    """docs/journal.md "Ages and clock steps": ages (and ``max_age_s``) go by the wall clock as
    it reads now; a step of the clock seen while the gateway ran moves the older records'
    received times with it, after a restart too."""

    def _stream(self, files: PowerCutFiles, clock: Clock) -> Stream:
        return open_stream(files, StreamSettings(segment_bytes=10 * FRAME, max_age_s=100), clock)

    def _received(self, s: Stream, clock: Clock, first: int, last: int) -> None:
        for i in range(first, last + 1):
            self.successResultOf(appended(s, record(i, received=clock.seconds())))

    def test_a_step_forward_by_years_does_not_expire_fresh_records(self) -> None:
        """A gateway without a real-time clock booted at 1970 buffers 25 records, then NTP
        steps it by 56 years: none has expired (each was counted 56 years old), and they
        expire once really older than max_age_s."""
        clock, files = SteppingClock(), PowerCutFiles()
        clock.advance(1000)
        s = self._stream(files, clock)
        self._received(s, clock, 1, 25)
        clock.step(56 * 365 * 86400.0)
        self._received(s, clock, 26, 27)
        s.enforce_limits()
        self.assertEqual((s.stats().drops, s.stats().records), ({}, 27))
        self.assertLess(s.snapshot().oldest_age_s, 1.0)
        clock.advance(101)
        s.enforce_limits()
        self.assertEqual(s.stats().drops, {"max-age": 20})

    def test_the_step_is_kept_across_a_restart(self) -> None:
        """The step is in the stream's ledger: a gateway started after it (its clock right
        from the start, no step seen) counts the records' ages alike."""
        clock, files = SteppingClock(), PowerCutFiles()
        clock.advance(1000)
        s = self._stream(files, clock)
        self._received(s, clock, 1, 25)
        clock.step(56 * 365 * 86400.0)
        clock.advance(0)  # (the ledger is written at the end of the turn)
        self.successResultOf(s.close())
        later = Clock()
        later.advance(clock.seconds() + 50)
        s = self._stream(files, later)
        s.enforce_limits()
        self.assertEqual((s.stats().drops, s.stats().records), ({}, 25))
        self.assertAlmostEqual(s.snapshot().oldest_age_s, 50.0, delta=1.0)
        later.advance(60)
        s.enforce_limits()
        self.assertEqual(s.stats().drops, {"max-age": 20})

    def test_a_step_back_does_not_keep_records_past_max_age(self) -> None:
        """The clock steps back an hour: the records received before it still expire once
        older than max_age_s, not an hour later."""
        clock, files = SteppingClock(), PowerCutFiles()
        clock.advance(1_000_000)
        s = self._stream(files, clock)
        self._received(s, clock, 1, 25)
        clock.step(-3600.0)
        clock.advance(101)
        s.enforce_limits()
        self.assertEqual(s.stats().drops, {"max-age": 20})

    def test_steps_before_every_record_kept_are_forgotten(self) -> None:
        """Once the records received before a step are gone, the step is no longer kept."""
        clock, files = SteppingClock(), PowerCutFiles()
        clock.advance(1000)
        s = self._stream(files, clock)
        self._received(s, clock, 1, 5)
        clock.step(3600.0)
        self._received(s, clock, 6, 25)
        self.assertEqual(s.ledger.steps, [(6, 3600.0)])
        clock.advance(101)
        s.enforce_limits()
        self.assertEqual(s.stats().drops, {"max-age": 20})
        self.assertEqual(s.ledger.steps, [])

    def _booted(self, files: PowerCutFiles, clock: SteppingClock, boot: str) -> Stream:
        """The stream opened in boot ``boot``, whose clock is ``clock``'s steady one."""
        return open_stream(files, StreamSettings(segment_bytes=10 * FRAME, max_age_s=100), clock,
                           boot=BootClock(boot, clock.steady_seconds))

    def test_a_step_after_a_reboot_moves_only_the_records_of_this_boot(self) -> None:
        """A gateway without a real-time clock ran with its clock right, and buffered 5
        records; the machine rebooted at 1970, the gateway buffered 5 more, and NTP stepped
        the clock to the right time: only the 5 received at 1970 are moved by the step. The
        first 5 were moved too (56 years into the future): ``oldest_age_s`` said 0 and
        ``max_age_s`` would expire them in 56 years, and an HTTP link would send their times
        56 years ahead (seen under libfaketime: 'oldest waiting 0s' a minute after NTP's step)."""
        files, before = PowerCutFiles(), SteppingClock()
        before.advance(1_800_000_000)
        s = self._booted(files, before, "boot-1")
        self._received(s, before, 1, 5)
        self.successResultOf(s.close())
        rebooted = SteppingClock()
        rebooted.advance(600)  # (1970: ten minutes after the boot)
        s = self._booted(files, rebooted, "boot-2")
        self._received(s, rebooted, 6, 10)
        rebooted.step(before.seconds() + 60 - rebooted.seconds())
        self.assertAlmostEqual(s.snapshot().oldest_age_s, 60.0, delta=1.0)
        self.assertEqual(s.received_now(1, 1_800_000_000.0), 1_800_000_000.0)
        self.assertEqual(s.received_now(6, 600.0), 1_800_000_060.0)
        rebooted.advance(0)  # (the ledger is written at the end of the turn)
        self.successResultOf(s.close())
        s = self._booted(files, rebooted, "boot-2")  # (the ledger keeps it: a restart counts alike)
        self.assertAlmostEqual(s.snapshot().oldest_age_s, 60.0, delta=1.0)
        self.assertEqual(s.received_now(6, 600.0), 1_800_000_060.0)

    def test_a_step_moves_the_records_of_earlier_runs_on_the_same_clock(self) -> None:
        """The gateway restarted at 1970 (same boot, the clock not stepped meanwhile): a step
        NTP makes later moves the records of both runs, received on the same wrong clock; a
        step made while it was stopped is not seen, and the records from before it stay as
        they are when a later step comes."""
        files, clock = PowerCutFiles(), SteppingClock()
        clock.advance(600)
        s = self._booted(files, clock, "boot-1")
        self._received(s, clock, 1, 3)
        self.successResultOf(s.close())
        clock.advance(5)
        s = self._booted(files, clock, "boot-1")
        self._received(s, clock, 4, 6)
        clock.step(1_800_000_000.0)
        clock.advance(0)
        self.assertEqual([s.received_now(seq, 600.0) for seq in (1, 4)], [1_800_000_600.0] * 2)
        self.successResultOf(s.close())
        clock.step(-3600.0)  # (while stopped: not seen)
        s = self._booted(files, clock, "boot-1")
        self._received(s, clock, 7, 8)
        clock.step(7200.0)
        self.assertEqual([s.received_now(seq, 600.0) for seq in (1, 4, 7)],
                         [1_800_000_600.0, 1_800_000_600.0, 7800.0])

    def test_on_the_gateways_reactor(self) -> None:
        """The stream hears the steps of the reactor ``twistd gateway`` runs on
        (gateway.clockstep.SteadyTimersReactor), and stops hearing them once closed."""
        clocks = {"wall": 1000.0, "steady": 5.0}
        reactor = SteadyTimersReactor(asyncio.new_event_loop(), steady=lambda: clocks["steady"],
                                      wall=lambda: clocks["wall"])
        self.addCleanup(reactor._asyncioEventloop.close)
        self.addCleanup(reactor.waker.connectionLost, None)
        self.addCleanup(reactor.removeAll)
        s = Stream("s", DIR, StreamSettings(), PowerCutFiles(), run_now, reactor)
        s.open()
        s.append(record(1, received=reactor.seconds()))
        reactor.runUntilCurrent()
        clocks["wall"] += 3600.0
        reactor.seconds()
        self.assertEqual(s.ledger.steps, [(2, 3600.0)])
        self.successResultOf(s.close())
        clocks["wall"] += 60.0
        reactor.seconds()
        self.assertEqual(s.ledger.steps, [(2, 3600.0)])
