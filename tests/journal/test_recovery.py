"""Recovery: torn tails cut, zero tails cut, bit rot skipped and reported, fast open."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from gateway.journal.cursors import cursor_path, load_cursors
from gateway.filelayer import OSFiles
from gateway.journal.losses import LossEntry, LossLedger, LossReason
from gateway.journal.record import Record, encode
from gateway.journal.segments import LEDGER_FILE, ReadPosition, read_records, recover, segment_path, write_ledger
from gateway.journal.settings import StreamSettings
from gateway.journal.stream import Stream
from tests.journal.helpers import DIR, ManualRunner, appended, open_stream, read_all, record
from tests.journal.powercut import Inode, PowerCutFiles
from tests.logevents import capture_log_events


def _journal(n: int, segment_bytes: int = 1 << 20) -> PowerCutFiles:
    files = PowerCutFiles()
    s = open_stream(files, StreamSettings(segment_bytes=segment_bytes))
    for i in range(1, n + 1):
        appended(s, record(i))
    s.close()
    return files


class TornTailTests(SynchronousTestCase):
    """A tail cut anywhere, or followed by zeros, reopens to the whole records before it."""

    def test_truncate_at_every_byte_of_last_record(self) -> None:
        """Cutting the tail at each offset inside the last record keeps the others, then appends go on."""
        files = _journal(5)
        path = segment_path(DIR, 1)
        whole = bytes(files.names[path].data)
        last = len(encode(record(5), 5))
        for cut in range(len(whole) - last, len(whole)):
            files.names[path].data = bytearray(whole[:cut])
            s = open_stream(files)
            self.assertEqual([r.seq for r in read_all(s)], [1, 2, 3, 4], cut)
            self.assertEqual(s.next_seq, 5)
            self.assertEqual(len(files.names[path].data), len(whole) - last)
            self.assertEqual(s.loss_report().totals.get("torn", 0), 0)
            got = []
            appended(s, record(5)).addCallback(got.append)
            self.assertEqual(got, [5])
            files.names[path].data = bytearray(whole)

    def test_zero_filled_tail(self) -> None:
        """Zeros after the last record are cut and logged as a torn tail of that many bytes."""
        files = _journal(3)
        path = segment_path(DIR, 1)
        size = len(files.names[path].data)
        files.names[path].data += bytes(8192)
        s = open_stream(files)
        self.assertEqual([r.seq for r in read_all(s)], [1, 2, 3])
        self.assertEqual(len(files.names[path].data), size)
        entry = s.loss_report().entries[-1]
        self.assertEqual((entry.reason, entry.records, entry.bytes), ("torn", 0, 8192))

    def test_a_torn_tail_names_no_seq(self) -> None:
        """A torn tail costs bytes, no record: its entry's first_seq and last_seq are 0, as for
        any loss with no seq known (docs/journal.md), on disk too. They read first_seq 4,
        last_seq 3 (the next seq and the one before), a range of no record."""
        files = _journal(3)
        files.names[segment_path(DIR, 1)].data += b"\xa5\x4a" + bytes(100)
        s = open_stream(files)
        [entry] = s.loss_report().entries
        self.assertEqual((entry.reason, entry.records, entry.bytes, entry.first_seq, entry.last_seq,
                          entry.first_time, entry.last_time), ("torn", 0, 102, 0, 0, 0.0, 0.0))
        s.close()
        [again] = open_stream(files).loss_report().entries
        self.assertEqual((again.first_seq, again.last_seq), (0, 0))


class BitRotTests(SynchronousTestCase):
    """A damaged record mid-segment is skipped, reported as lost, and never stops the stream."""

    def _flip(self, files: PowerCutFiles, path: str, seq_index: int) -> None:
        frame = len(encode(record(1), 1))
        files.names[path].data[seq_index * frame + frame // 2] ^= 0xFF

    def test_corrupt_record_in_tail(self) -> None:
        """Found on open: records 1-2 and 4-6 come back, seq 3 is reported corrupt."""
        files = _journal(6)
        self._flip(files, segment_path(DIR, 1), 2)
        s = open_stream(files)
        self.assertEqual([r.seq for r in read_all(s)], [1, 2, 4, 5, 6])
        [entry] = s.loss_report().entries
        self.assertEqual((entry.reason, entry.records, entry.first_seq, entry.last_seq), ("corrupt", 1, 3, 3))

    def test_corrupt_record_in_sealed_segment(self) -> None:
        """Found by a reader: the bad record is skipped and reported once, the rest flows."""
        frame = len(encode(record(1), 1))
        files = _journal(40, segment_bytes=10 * frame)
        self._flip(files, segment_path(DIR, 11), 4)
        s = open_stream(files, StreamSettings(segment_bytes=10 * frame))
        self.assertEqual([r.seq for r in read_all(s)], [i for i in range(1, 41) if i != 15])
        self.assertEqual([r.seq for r in read_all(s, "other")], [i for i in range(1, 41) if i != 15])
        [entry] = s.loss_report().entries
        self.assertEqual((entry.reason, entry.first_seq, entry.last_seq), ("corrupt", 15, 15))

    def test_corrupt_end_of_sealed_segment(self) -> None:
        """Garbage at the end of a sealed segment costs the records up to the next segment."""
        frame = len(encode(record(1), 1))
        files = _journal(30, segment_bytes=10 * frame)
        files.names[segment_path(DIR, 11)].data[-3:] = b"\0\0\0"
        s = open_stream(files, StreamSettings(segment_bytes=10 * frame))
        self.assertEqual([r.seq for r in read_all(s)], [i for i in range(1, 31) if i != 20])
        self.assertEqual(s.loss_report().totals, {"corrupt": 1})

    def test_a_sealed_segment_cut_short_or_removed_costs_its_seqs_counted_once(self) -> None:
        """A sealed segment emptied, cut at a frame boundary or removed from outside (no bytes
        to find damaged) costs the seqs up to the next segment: counted as ``corrupt`` with
        those seqs, once for every reader and restart, and a warning names them. They were
        skipped with nothing counted: a loss nobody was told of."""
        frame = len(encode(record(1), 1))
        settings = StreamSettings(segment_bytes=10 * frame)
        for how, missing in [("emptied", range(11, 21)), ("cut", range(16, 21)), ("removed", range(11, 21))]:
            files = _journal(30, segment_bytes=10 * frame)
            path = segment_path(DIR, 11)
            if how == "removed":
                del files.names[path]
            else:
                files.names[path].data = files.names[path].data[:0 if how == "emptied" else 5 * frame]
            for n in range(2):
                clock = Clock()
                events = capture_log_events(self)
                s = open_stream(files, settings, clock)
                self.assertEqual([r.seq for r in read_all(s, "a")], [i for i in range(1, 31) if i not in missing])
                self.assertEqual([r.seq for r in read_all(s, "b")], [i for i in range(1, 31) if i not in missing])
                clock.advance(0)
                [entry] = s.loss_report().entries
                self.assertEqual((entry.reason, entry.records, entry.first_seq, entry.last_seq),
                                 ("corrupt", len(missing), missing[0], 20), (how, n))
                self.assertEqual(s.stats().drops, {"corrupt": len(missing)} if n == 0 else {}, (how, n))
                warnings = [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]
                del events[:]
                self.assertEqual(warnings, [f"journal s: seqs {missing[0]}-20 are missing before byte 0 of segment 21"
                                            " (a segment cut short or removed from outside)"] if n == 0 else [],
                                 (how, n))
                s.close()
                clock.advance(0)

    def test_a_segment_cut_short_while_the_stream_is_open_is_damage_not_a_hang(self) -> None:
        """A segment cut from outside after the stream opened (the journal thinks it longer than
        it is; a frame cut in two, or cut at the start of one): the read takes what is left, the
        rest is damage costing its seqs up to the next segment, and the read goes on there. It
        read the same short range again and again, for ever (on the journal's I/O thread)."""
        frame = len(encode(record(1), 1))
        for cut_at in (5 * frame, 5 * frame + frame // 2, 0):
            files = _journal(30, segment_bytes=10 * frame)
            path = segment_path(DIR, 11)
            size = len(files.names[path].data)
            files.names[path].data = files.names[path].data[:cut_at]
            segments = [(1, segment_path(DIR, 1), 10 * frame), (11, path, size), (21, segment_path(DIR, 21), 10 * frame)]
            result = read_records(files, segments, ReadPosition(11, 0, 11), 100, 1 << 20)
            kept = list(range(11, 11 + cut_at // frame))
            self.assertEqual([r.seq for r in result.records], kept + list(range(21, 31)), cut_at)
            [damage] = result.damage
            self.assertEqual((damage.segment, damage.start, damage.end, damage.first_lost, damage.last_lost),
                             (11, len(kept) * frame, size, 11 + len(kept), 20), cut_at)
            limited = read_records(files, segments, ReadPosition(11, 0, 11), 100, 1 << 20, max_read=1)
            self.assertEqual([r.seq for r in limited.records][:len(kept)], kept, cut_at)

    def test_files_not_named_as_segments_are_left_alone(self) -> None:
        """A file whose name is digits and ``.seg`` but not a segment's (twenty digits: a copy
        named ``12.seg``) is no segment: the stream opens with its records. It failed to open,
        looking for ``00000000000000000012.seg``; one named ``².seg`` (a digit to
        ``str.isdigit``, no number to ``int``) stopped the open with a ValueError. Nor is one
        named for a seq no record holds (``99999999999999999999.seg``, past 2**64 - 1): the
        stream numbered on from it, and every append raised ``struct.error``."""
        files = _journal(5)
        for name in ("12.seg", "\u0661\u0662.seg", "copy.seg", "\u00b2.seg", "99999999999999999999.seg"):
            files.names[f"{DIR}/{name}"] = Inode(bytearray(b"x"))
        s = open_stream(files)
        self.assertEqual([r.seq for r in read_all(s)], [1, 2, 3, 4, 5])
        self.assertEqual(self.successResultOf(appended(s, record(6))), 6)
        self.assertIn(f"{DIR}/12.seg", files.names)


class CountedOnceTests(SynchronousTestCase):
    """A corrupt record is counted once in the ledger and the drops, across restarts and
    crashes: where each counted stretch is goes into losses.json with its entry."""

    frame = len(encode(record(1), 1))
    settings = StreamSettings(segment_bytes=10 * frame)

    def sealed_damage(self) -> PowerCutFiles:
        """Three sealed segments of 10 records and a tail; seq 15's frame damaged."""
        files = _journal(35, segment_bytes=10 * self.frame)
        inode = files.names[segment_path(DIR, 11)]
        inode.data[4 * self.frame + self.frame // 2] ^= 0xFF
        inode.synced = bytes(inode.data)  # (on the disk: a power cut keeps it)
        return files

    def test_a_corrupt_record_in_the_tail_is_counted_at_the_first_open_only(self) -> None:
        """The damage stays in the tail, found again at every open: counted once. It was
        counted again at every start, a clean one too."""
        files = _journal(6)
        files.names[segment_path(DIR, 1)].data[2 * self.frame + self.frame // 2] ^= 0xFF
        for n in range(3):
            clock = Clock()
            s = open_stream(files, clock=clock)
            clock.advance(0)  # (the ledger goes with the batch at the turn's end)
            [entry] = s.loss_report().entries
            self.assertEqual((entry.reason, entry.records, entry.first_seq), ("corrupt", 1, 3), n)
            self.assertEqual(s.stats().drops, {"corrupt": 1} if n == 0 else {}, n)
            s.close()
            clock.advance(0)

    def test_a_corrupt_record_read_before_a_crash_is_counted_once(self) -> None:
        """A reader finds the damage and the power goes before its cursor passes it: the
        restarted reader finds it again, and it is not counted again (it was: two entries)."""
        files = self.sealed_damage()
        clock = Clock()
        s = open_stream(files, self.settings, clock)
        s.cursor("link")
        got: list[Record] = []
        s.read("link", 20).addCallback(got.extend)
        self.assertNotIn(15, [r.seq for r in got])
        clock.advance(0)  # the ledger is written; the cursor never moves
        files.cut()
        again = open_stream(files, self.settings, Clock())
        self.assertEqual([r.seq for r in read_all(again, "link")], [i for i in range(1, 36) if i != 15])
        [entry] = again.loss_report().entries
        self.assertEqual((entry.reason, entry.records, entry.first_seq, entry.last_seq), ("corrupt", 1, 15, 15))
        self.assertEqual(again.stats().drops, {})

    def test_a_drop_does_not_count_again_the_seqs_a_damaged_stretch_cost(self) -> None:
        """A reader counts seq 15 ``corrupt`` and its cursor has not acknowledged past it (the
        cloud is away) when drop-oldest drops its segment: the drop counts the other nine records
        of the segment, and seq 15 is in the loss report once, after a restart too. The drop
        counted it again (``max-bytes`` 11-20, 10 records: 36 records lost of 35)."""
        files = self.sealed_damage()
        settings = StreamSettings(segment_bytes=10 * self.frame, max_bytes=36 * self.frame, min_free_bytes=0)
        clock = Clock()
        s = open_stream(files, settings, clock)
        self.assertEqual(len(read_all(s, "link")), 34)  # (no ack: the cloud is away)
        for i in range(36, 48):
            self.successResultOf(appended(s, record(i)))
        entries = [(e.reason, e.records, e.first_seq, e.last_seq) for e in s.loss_report().entries]
        self.assertEqual(entries, [("corrupt", 1, 15, 15), ("max-bytes", 10, 1, 10), ("max-bytes", 9, 11, 20)])
        self.assertEqual(s.stats().drops, {"corrupt": 1, "max-bytes": 19})
        self.successResultOf(s.close())
        again = open_stream(files, settings, Clock())
        self.assertEqual([(e.reason, e.records) for e in again.loss_report().entries],
                         [("corrupt", 1), ("max-bytes", 10), ("max-bytes", 9)])
        self.assertEqual([r.seq for r in read_all(again, "link")], list(range(21, 48)))

    def test_the_ledger_is_on_disk_before_a_cursor_passes_the_damage(self) -> None:
        """Found while a batch is in flight (the ledger waits for the next batch), then the
        cursor is acknowledged past it: the ledger is written before the cursor, so a power cut
        right after the cursor's write still finds the loss counted. The cursor went first, and
        the restarted reader, past the damage, never counted it."""
        files = self.sealed_damage()
        runner, clock = ManualRunner(), Clock()
        s = Stream("s", DIR, self.settings, files, runner, clock)
        s.open()
        runner.drain()
        s.cursor("link")
        runner.drain()
        got: list[Record] = []
        s.read("link", 20).addCallback(got.extend)
        s.append(record(36))
        clock.advance(0)  # its batch is queued behind the read
        runner.step()  # the read: the damage is found while the batch is in flight
        self.assertEqual(s.drops, {"corrupt": 1})
        s.ack("link", got[-1].seq)
        cursor = cursor_path(DIR, "link")
        while b'"acked": 21' not in files.read(cursor, 0, files.size(cursor)):
            self.assertTrue(runner.step(), "the cursor was never written")
        files.cut()
        again = open_stream(files, self.settings, Clock())
        self.assertEqual([r.seq for r in read_all(again, "link")][:1], [22])
        self.assertEqual(again.loss_report().totals, {"corrupt": 1})

    def older_ledger(self, files: PowerCutFiles, seq: int, times: int) -> None:
        """losses.json as a gateway before 0.1.0's broker core rewrite wrote it (it kept no
        ``damage``): ``times`` corrupt entries for the record ``seq``, as that gateway noted
        a damaged record in the tail at every open (seen upgrading its .deb)."""
        entry = {"reason": "corrupt", "records": 1, "bytes": self.frame, "first_seq": seq, "last_seq": seq,
                 "first_time": 0.0, "last_time": 0.0, "noted_at": 1796427585.6080077}
        write_ledger(files, DIR, json.dumps({"entries": [entry] * times}).encode())

    def test_damage_in_the_tail_an_older_gateway_counted_is_not_counted_again(self) -> None:
        """An older gateway counted a corrupt record in the tail (at every open: twice here)
        and kept no note of where it was. The upgraded gateway knows it by its entry, counts
        it no more (its first start counted it once again: a third entry, a drop) and keeps
        where it is from then on."""
        files = _journal(6)
        files.names[segment_path(DIR, 1)].data[2 * self.frame + self.frame // 2] ^= 0xFF
        self.older_ledger(files, 3, times=2)
        for n in range(2):
            s = open_stream(files)
            self.assertEqual([r.seq for r in read_all(s)], [1, 2, 4, 5, 6] + list(range(7, 7 + n)), n)
            self.assertEqual([(e.reason, e.first_seq) for e in s.loss_report().entries], [("corrupt", 3)] * 2, n)
            self.assertEqual(s.stats().drops, {}, n)
            appended(s, record(7 + n))  # the ledger goes with the next write
            s.close()
        self.assertEqual(saved_ledger(files).damage, {(1, 2 * self.frame)})

    def test_damage_in_a_sealed_segment_an_older_gateway_counted_is_not_counted_again(self) -> None:
        """A reader of an older gateway found a corrupt record in a sealed segment and counted it,
        and its cursor never passed it: the upgraded gateway's reader finds it again and knows
        it by its entry (it counted it again)."""
        files = self.sealed_damage()
        self.older_ledger(files, 15, times=1)
        s = open_stream(files, self.settings)
        self.assertEqual([r.seq for r in read_all(s, "link")], [i for i in range(1, 36) if i != 15])
        self.assertEqual([(e.reason, e.first_seq) for e in s.loss_report().entries], [("corrupt", 15)])
        self.assertEqual(s.stats().drops, {})
        appended(s, record(36))
        self.assertEqual(saved_ledger(files).damage, {(11, 4 * self.frame)})

    def test_damage_of_no_record_is_not_taken_for_an_older_gateway_entry(self) -> None:
        """Only a stretch that cost records is known by its entry (their seqs are its own): one
        between two records costs bytes alone, and an older entry of no record may be another
        stretch's, so it is counted."""
        files = _journal(3)
        path = segment_path(DIR, 1)
        files.names[path].data[self.frame:self.frame] = b"\xa5" * 10  # between records 1 and 2
        write_ledger(files, DIR, json.dumps({"entries": [
            {"reason": "corrupt", "records": 0, "bytes": 10, "first_seq": 0, "last_seq": 0,
             "first_time": 0.0, "last_time": 0.0, "noted_at": 1.0}]}).encode())
        s = open_stream(files)
        self.assertEqual([r.seq for r in read_all(s)], [1, 2, 3])
        self.assertEqual([(e.reason, e.records, e.bytes) for e in s.loss_report().entries],
                         [("corrupt", 0, 10)] * 2)

    def test_a_ledger_of_an_older_gateway_is_read(self) -> None:
        """losses.json written before it kept where the damage is: its entries load."""
        ledger = LossLedger.load(b'{"entries": [{"reason": "torn", "records": 0, "bytes": 3, "first_seq": 0,'
                                 b' "last_seq": 0, "first_time": 0.0, "last_time": 0.0, "noted_at": 1.0}],'
                                 b' "reported": "1 {}"}')
        self.assertEqual(([e.bytes for e in ledger.entries], ledger.reported, ledger.damage, ledger.steps),
                         ([3], "1 {}", set(), []))

    def test_the_clock_steps_are_kept_in_the_ledger(self) -> None:
        """The wall clock's steps go into losses.json and come back from it."""
        ledger = LossLedger()
        ledger.note_step(6, 3600.0)
        ledger.note_step(6, -1.5)
        ledger.note_step(9, 10.0)
        again = LossLedger.load(ledger.dump())
        self.assertEqual(again.steps, [(6, 3598.5), (9, 10.0)])
        self.assertEqual([again.stepped_since(seq) for seq in (5, 6, 8, 9)], [3608.5, 10.0, 10.0, 0.0])

    def test_a_step_from_a_seq_on_and_the_clock_are_kept_as_an_older_gateway_reads_them(self) -> None:
        """A step that moves the records from seq 4 on (those received on the clock before it)
        is kept as two plain steps, which an older build (that knows no first seq) reads the
        same; the clock the records were received on is one more key, which an older build
        ignores, and a damaged one is not known (the ledger's losses stay)."""
        ledger = LossLedger()
        ledger.note_step(9, 3600.0, since=4)
        ledger.note_clock("boot-1", 3600.5, 4)
        saved = json.loads(ledger.dump())
        self.assertEqual((saved["steps"], saved["clock"]), ([[4, -3600.0], [9, 3600.0]], ["boot-1", 3600.5, 4]))
        again = LossLedger.load(ledger.dump())
        self.assertEqual([again.stepped_since(seq) for seq in (3, 4, 8, 9)], [0.0, 3600.0, 3600.0, 0.0])
        self.assertEqual(again.clock, ("boot-1", 3600.5, 4))
        saved["clock"] = ["boot-1", "3600.5", 4]
        damaged = LossLedger.load(json.dumps(saved).encode())
        self.assertEqual((damaged.clock, damaged.unreadable, damaged.steps), (None, None, again.steps))


class PassedOnceTests(SynchronousTestCase):
    """A record a link counts as lost as it passes it (skipped: ``over-cloud-limit``; refused:
    ``refused-by-cloud``) is counted once, also when a crash comes between the ledger's write
    and the cursor's save: the seqs counted go into losses.json with their entries."""

    def crashed_after_the_count(self, reason: LossReason) -> tuple[PowerCutFiles, Stream]:
        """Records 1-6, a cursor at 0; seqs 3-4 counted lost for ``reason`` and the ledger
        written, then the power goes before the cursor's save: the stream reopened."""
        files = _journal(6)
        clock = Clock()
        s = open_stream(files, clock=clock)
        self.successResultOf(s.cursor("cloud"))
        s.note_loss(reason, 2, 200, 3, 4, 30.0, 40.0)
        clock.advance(0)  # the ledger is written; the cursor never moves
        files.cut()
        return files, open_stream(files, clock=Clock())

    def test_counted_again_after_a_crash_adds_nothing(self) -> None:
        """The restarted link meets 3-4 again and counts them again: one entry of 2 records,
        nothing in the drops; each reason alike. They were counted twice."""
        for reason in ("over-cloud-limit", "refused-by-cloud"):
            _, s = self.crashed_after_the_count(reason)
            self.assertEqual(s.reader.cursors["cloud"].acked, 0, reason)
            s.note_loss(reason, 2, 200, 3, 4, 30.0, 40.0)
            s.clock.advance(0)  # type: ignore[attr-defined]
            self.assertEqual(s.loss_report().totals, {reason: 2}, reason)
            self.assertEqual(s.stats().drops, {}, reason)
            self.assertEqual(saved_ledger(s.files).report("s").totals, {reason: 2}, reason)  # type: ignore[arg-type]

    def test_only_the_seqs_not_counted_before_count(self) -> None:
        """Counted again in a run that goes on (2-6, of 500 bytes): only 2 and 5-6 count, one
        entry each, with the bytes shared by records; a refusal of a seq counted as
        over-cloud-limit adds nothing either (a record is lost once)."""
        _, s = self.crashed_after_the_count("over-cloud-limit")
        s.note_loss("over-cloud-limit", 5, 500, 2, 6, 20.0, 60.0)
        s.note_loss("refused-by-cloud", 1, 100, 3, 3, 30.0, 30.0)
        self.assertEqual([(e.reason, e.records, e.bytes, e.first_seq, e.last_seq) for e in s.loss_report().entries],
                         [("over-cloud-limit", 2, 200, 3, 4), ("over-cloud-limit", 1, 100, 2, 2),
                          ("over-cloud-limit", 2, 200, 5, 6)])
        self.assertEqual(s.stats().drops, {"over-cloud-limit": 3})

    def test_forgotten_once_the_cursor_is_saved_past_them(self) -> None:
        """Once the cursor's save passes the seqs, the ledger forgets them (it stays small), and
        writes that with its next change; seqs the stream numbers again after a power cut
        took them are forgotten at the open."""
        files, s = self.crashed_after_the_count("over-cloud-limit")
        self.assertEqual(s.ledger.passed, [(3, 4)])
        self.successResultOf(s.ack("cloud", 3))
        self.assertEqual(s.ledger.passed, [(4, 4)])
        self.successResultOf(s.ack("cloud", 6))
        self.assertEqual(s.ledger.passed, [])
        s.note_loss("over-cloud-limit", 1, 100, 6, 6)  # (seen before the ack's save, say)
        s.clock.advance(0)  # type: ignore[attr-defined]
        self.assertEqual(saved_ledger(files).passed, [(6, 6)])
        s.ledger.passed.append((9, 12))  # a seq never written (a power cut took it, and the stream reuses it)
        s.ledger.dirty = True
        s.close()
        s.clock.advance(0)  # type: ignore[attr-defined]
        self.assertEqual(open_stream(files).ledger.passed, [(6, 6)])

    def test_the_format_stays_readable(self) -> None:
        """"passed" is one more key, which a ledger without it (an older build's) does without
        and an older build ignores (it reads entries, reported, damage and steps by name)."""
        ledger = LossLedger.load(b'{"entries": []}')
        self.assertEqual(ledger.passed, [])
        ledger.note(LossEntry("over-cloud-limit", 2, 200, 7, 8, 0.0, 0.0, 1.0))
        saved = json.loads(ledger.dump())
        self.assertEqual(saved["passed"], [[7, 8]])
        self.assertEqual(sorted(saved), ["entries", "passed"])
        self.assertEqual(LossLedger.load(json.dumps(saved).encode()).passed, [(7, 8)])


class DamagedStateFileTests(SynchronousTestCase):
    """A cursor file or loss ledger that holds no valid state reads as none, whatever is in
    it: opening the stream does not fail on it."""

    _ENTRY = ('{"reason": "corrupt", "records": 1, "bytes": 2, "first_seq": 1, "last_seq": 1,'
              ' "first_time": 0.0, "last_time": 0.0, "noted_at": 1.0')

    def test_a_cursor_file_of_no_usable_numbers_counts_as_acked_0(self) -> None:
        """JSON too deep to parse, a number too big for an int or no object: acked 0 (re-deliver)."""
        for text in (b'{"acked": 1e400}', b'{"acked": 3, "above": [[5, Infinity]]}', b"[" * 100000, b"[1]",
                     b'{"acked": 3, "above": 7}'):
            files = PowerCutFiles()
            files.makedirs(os.path.join(DIR, "cursors"))
            files.write(cursor_path(DIR, "link"), text)
            found, unreadable = load_cursors(files, DIR)
            self.assertEqual(found, {"link": (0, [])}, text[:40])
            self.assertEqual(list(unreadable), ["link"], text[:40])

    def test_a_ledger_that_is_no_ledger_loads_empty(self) -> None:
        """JSON too deep to parse, a number too big for an int, an entry of the wrong types or
        an unknown reason, a time or a step of the clock that is no finite number of seconds (a
        ``NaN`` step made every age NaN, and ``max_age_s`` expired nothing; a ``NaN`` time went
        upstream in the loss report, which JSON does not hold): an empty ledger whose report can be taken."""
        for text in ('[' * 100000, '{"entries": [], "damage": [[1e400, 0]]}', '{"entries": [], "steps": [[5, NaN]]}',
                     '{"entries": [], "steps": [[5, -Infinity]]}',
                     '{"entries": [' + self._ENTRY.replace('"records": 1', '"records": "1"') + '}]}',
                     '{"entries": [' + self._ENTRY.replace('"noted_at": 1.0', '"noted_at": null') + '}]}',
                     '{"entries": [' + self._ENTRY.replace('"first_time": 0.0', '"first_time": NaN') + '}]}',
                     '{"entries": [' + self._ENTRY.replace('"corrupt"', '"bogus"') + '}]}',
                     '{"entries": [7]}'):
            ledger = LossLedger.load(text.encode())
            self.assertEqual((ledger.entries, ledger.report("s").totals, ledger.steps), ([], {}, []), text[:60])
            self.assertIsNotNone(ledger.unreadable, text[:60])

    def test_an_unreadable_cursor_file_delivers_again_and_says_so(self) -> None:
        """A cursor file that holds no cursor (emptied, garbage) starts the cursor again at the
        oldest record kept, and a warning says so and why, not that records were deleted
        after its last save (docs/journal.md, Recovery)."""
        for text in (b"", b"{garbage"):
            files = _journal(3)
            s = open_stream(files)
            s.cursor("link")
            s.ack("link", 2)
            s.close()
            files.write(cursor_path(DIR, "link"), text)
            events = capture_log_events(self)
            s = open_stream(files)
            self.assertEqual([r.seq for r in read_all(s, "link")], [1, 2, 3], text)
            [warning] = warnings(events)
            self.assertIn("journal s: cursor link is unreadable (", warning)
            self.assertIn("): it starts again at the oldest record kept, seq 1 (what it had acknowledged"
                          " is delivered again)", warning)

    def test_a_tail_emptied_from_outside_is_told(self) -> None:
        """A tail segment emptied (or filled with garbage) from outside took records a cursor
        had acknowledged, and those after them: the start says so, naming the cursor and the
        seqs, rather than go on in silence; new records are read (docs/journal.md, Recovery)."""
        files = _journal(5)
        s = open_stream(files)
        s.cursor("link")
        s.ack("link", 3)
        s.close()
        files.write(segment_path(DIR, 1), b"")
        events = capture_log_events(self)
        s = open_stream(files)
        [warning] = warnings(events)
        self.assertEqual(warning, "journal s: cursor link had acknowledged up to seq 3, past the last record"
                                  " on disk (seq 0): the records at the stream's end are gone (its tail"
                                  " segment emptied or removed from outside, or not yet on disk at a power cut"
                                  " under sync none or interval); it goes on with new records")
        appended(s, record(1))
        self.assertEqual([r.seq for r in read_all(s, "link")], [1])

    def test_an_unreadable_ledger_says_so_and_is_replaced(self) -> None:
        """A losses.json that holds no ledger (emptied, garbage) reads as an empty ledger, a
        warning says that the losses it counted are gone, and a readable ledger replaces it
        at once: the next open finds one and says nothing (docs/journal.md, Recovery)."""
        for text in (b"", b"{garbage", b'{"entries": 7}'):
            files = _journal(3)
            write_ledger(files, DIR, text)
            events = capture_log_events(self)
            s = open_stream(files)
            [warning] = warnings(events)
            self.assertIn("journal s: losses.json holds no loss ledger (", warning)
            self.assertIn("): the losses it counted are gone from the loss report; a new ledger replaces it",
                          warning)
            s.clock.advance(0)  # type: ignore[attr-defined]
            self.assertIsNone(saved_ledger(files).unreadable, text)
            self.assertEqual([r.seq for r in read_all(s)], [1, 2, 3])
            s.close()
            events.clear()
            open_stream(files)
            self.assertEqual(warnings(events), [], text)

    def test_a_ledger_that_numbers_past_the_records_seq_field_is_unreadable(self) -> None:
        """A losses.json whose ``skipped`` or ``dropped_below`` names a seq no record can hold
        (the record's seq is 8 bytes: 2**64 and above) is no ledger (damage from outside): the
        stream numbers on from its segments, with the warning. The stream took its next seq from
        it, and every append raised ``struct.error: argument out of range`` from ``encode`` into
        its caller (the broker's publish), for good."""
        entry = self._ENTRY.replace('"last_seq": 1', '"last_seq": 18446744073709551620')
        for text in ('{"entries": [], "skipped": [[4, 18446744073709551616]]}',
                     '{"entries": [' + entry + '}], "dropped_below": 18446744073709551617}'):
            files = _journal(3)
            write_ledger(files, DIR, text.encode())
            events = capture_log_events(self)
            s = open_stream(files)
            [warning] = warnings(events)
            self.assertIn("journal s: losses.json holds no loss ledger (", warning, text)
            self.assertEqual(self.successResultOf(appended(s, record(4))), 4, text)
            self.assertEqual([r.seq for r in read_all(s)], [1, 2, 3, 4], text)

    def test_a_cursor_that_cannot_be_read_delivers_again_and_is_moved_aside(self) -> None:
        """A directory, a loop of symbolic links or a named pipe in a cursor file's place (the
        read fails, not the parse) starts the cursor again at the oldest record kept, with the
        warning, and is moved aside to ``<name>.json.damaged``, so the cursor's next save works.
        A named pipe made the stream's open wait for a writer for ever."""
        for damage in ("directory", "loop", "pipe"):
            directory = self.mktemp()
            files = OSFiles()
            s = open_stream(files, directory=directory)
            for i in range(1, 4):
                appended(s, record(i))
            s.cursor("link")
            s.ack("link", 2)
            s.close()
            path = cursor_path(directory, "link")
            os.remove(path)
            if damage == "directory":
                os.mkdir(path)
            elif damage == "pipe":
                os.mkfifo(path)
            else:
                os.symlink(os.path.basename(path), path)
            events = capture_log_events(self)
            s = open_stream(files, directory=directory)
            self.assertEqual([r.seq for r in read_all(s, "link")], [1, 2, 3], damage)
            [warning] = warnings(events)
            self.assertIn("journal s: cursor link is unreadable (", warning)
            self.assertIn(f"; moved to {path}.damaged): it starts again at the oldest record kept, seq 1", warning)
            self.assertTrue(os.path.lexists(path + ".damaged"), damage)
            s.ack("link", 3)
            s.close()
            self.assertEqual(json.loads(open(path).read()), {"acked": 3}, damage)
            events.clear()
            open_stream(files, directory=directory)
            self.assertEqual(warnings(events), [], damage)

    def test_a_ledger_that_cannot_be_read_is_moved_aside_and_replaced(self) -> None:
        """A directory in losses.json's place does not stop the stream from opening: the
        warning says the losses it counted are gone, it is moved aside to
        ``losses.json.damaged`` and a readable ledger replaces it."""
        directory = self.mktemp()
        files = OSFiles()
        s = open_stream(files, directory=directory)
        appended(s, record(1))
        s.close()
        path = os.path.join(directory, LEDGER_FILE)
        os.mkdir(path)
        events = capture_log_events(self)
        s = open_stream(files, directory=directory)
        [warning] = warnings(events)
        self.assertIn("journal s: losses.json holds no loss ledger (IsADirectoryError: ", warning)
        self.assertIn(f"; moved to {path}.damaged): the losses it counted are gone", warning)
        s.clock.advance(0)  # type: ignore[attr-defined]
        self.assertEqual(json.loads(open(path).read())["entries"], [])
        self.assertEqual([r.seq for r in read_all(s)], [1])
        s.close()

    def test_a_ledger_entry_of_the_right_types_loads(self) -> None:
        """The checks take a saved entry as it is (times saved as whole numbers too)."""
        ledger = LossLedger.load(('{"entries": [' + self._ENTRY.replace('0.0', '0') + '}]}').encode())
        self.assertEqual(ledger.report("s").totals, {"corrupt": 1})


def saved_ledger(files: PowerCutFiles) -> LossLedger:
    """The loss ledger on disk."""
    path = f"{DIR}/{LEDGER_FILE}"
    return LossLedger.load(files.read(path, 0, files.size(path)))


def warnings(events: list[dict[str, Any]]) -> list[str]:
    """The text of the warnings among log ``events``."""
    return [formatEvent(e) for e in events if e.get("log_level") == LogLevel.warn]


class OpenTimeTests(SynchronousTestCase):
    """Opening a journal of a million records is quick: only the tail is scanned."""

    def test_million_records_open_within_two_seconds(self) -> None:
        """1M records of 64 B payload in 16 MiB segments reopen in <= 2 s."""
        directory = self.mktemp()
        os.makedirs(directory)
        frames, first = bytearray(), 1
        for seq in range(1, 1_000_001):
            frame = encode(record(seq, 64), seq)
            if len(frames) + len(frame) > 16 * 2**20:
                with open(segment_path(directory, first), "wb") as out:
                    out.write(frames)
                frames, first = bytearray(), seq
            frames += frame
        with open(segment_path(directory, first), "wb") as out:
            out.write(frames)
        t0 = time.perf_counter()
        rec = recover(OSFiles(), directory)
        elapsed = time.perf_counter() - t0
        self.assertEqual(rec.next_seq, 1_000_001)
        self.assertLessEqual(elapsed, 2.0)
