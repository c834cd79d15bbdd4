"""Finding the segment that holds a seq (the one walk the stream, its reader and lookups share)."""

from __future__ import annotations

import errno

from twisted.trial.unittest import SynchronousTestCase

from gateway.journal.segments import (Segment, UndoFailedError, WriteGate, has_segment, segment_holding,
                                      write_batch)
from tests.journal.powercut import PowerCutFiles


def _segments(*firsts: int) -> list[Segment]:
    return [Segment(first, f"{first}.seg", 10, None) for first in firsts]


class SegmentHoldingTests(SynchronousTestCase):
    """``segment_holding`` gives the index of the last segment starting at or below a seq."""

    def test_a_seq_in_each_segment(self) -> None:
        """Each segment's first seq and the seqs up to the next one's are in that segment."""
        segments = _segments(1, 5, 9)
        self.assertEqual([segment_holding(segments, seq) for seq in range(1, 13)],
                         [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])

    def test_below_every_segment(self) -> None:
        """A seq below the first segment's first (dropped, or none kept) is in none: -1."""
        self.assertEqual(segment_holding(_segments(5, 9), 4), -1)
        self.assertEqual(segment_holding([], 7), -1)


class HasSegmentTests(SynchronousTestCase):
    """``has_segment`` tells whether the segment starting at a seq is still kept."""

    def test_kept_and_gone(self) -> None:
        """Only a segment's own first seq names it; a seq inside one or a dropped one does not."""
        segments = _segments(5, 9)
        self.assertEqual([has_segment(segments, first) for first in (1, 5, 7, 9, 12)],
                         [False, True, False, True, False])
        self.assertFalse(has_segment([], 1))


class CommittedThenFailed(PowerCutFiles):
    """A directory fsync that reaches the disk and then reports EIO, once."""

    failed = False

    def fsync_dir(self, path: str) -> None:
        super().fsync_dir(path)
        if not self.failed:
            self.failed = True
            raise OSError(errno.EIO, "Input/output error", path)


class WriteBatchUndoTests(SynchronousTestCase):
    """A failed batch's undo is durable."""

    def test_a_new_segment_undone_stays_gone_after_a_power_cut(self) -> None:
        """The batch that created a segment fails after the segment's name reached the disk:
        its undo removes the segment durably (the directory fsynced, as retention's deletions
        are), so a power cut does not bring back records whose appenders were told failed.
        It was unlinked without the directory's fsync, and came back."""
        files = CommittedThenFailed()
        files.dirs.add("s")
        with self.assertRaises(OSError):
            write_batch(files, "s", [("s/5.seg", b"refused", 0, True)], True, None, False, WriteGate(), 1)
        self.assertNotIn("s/5.seg", files.names)
        files.cut()
        self.assertNotIn("s/5.seg", files.names)

    def test_a_failed_cut_back_still_deletes_the_new_segment(self) -> None:
        """The undo of a batch that appended to one segment and created the next: the old
        segment's cut-back fails (its fsync: EIO), and the new segment is deleted all the same
        (durably), the error raised. It was left in place: the next batch, given the same
        seqs, would have appended its records behind the refused ones."""
        files = _FailsFsyncOf("s/1.seg")
        files.dirs.add("s")
        files.write("s/1.seg", b"old")
        files.fsync("s/1.seg")
        files.fsync_dir("s")
        files.fail = True
        ops = [("s/1.seg", b"refused", 3, False), ("s/5.seg", b"refused", 0, True)]
        with self.assertRaises(OSError) as raised:
            write_batch(files, "s", ops, True, None, False, WriteGate(), 1)
        self.assertEqual(raised.exception.errno, errno.EIO)
        self.assertNotIn("s/5.seg", files.names)
        files.cut()
        self.assertNotIn("s/5.seg", files.names)

    def test_a_failed_deletion_leaves_the_refused_records_in_order(self) -> None:
        """The undo of a batch that appended to one segment and created the next, whose new
        segment cannot be deleted (EIO): the old segment is not cut back either, so what stays
        holds the refused records with no seq missing between them (a start reads them as
        records, never acknowledged, rather than counting the seqs cut away as lost). The error
        carries the undo still to do; the next batch does it first, then writes."""
        files = _FailsUnlink()
        files.dirs.add("s")
        files.write("s/1.seg", b"old")
        files.fsync("s/1.seg")
        files.fsync_dir("s")
        ops = [("s/1.seg", b"refused", 3, False), ("s/5.seg", b"refused", 0, True)]
        with self.assertRaises(UndoFailedError) as raised:
            write_batch(files, "s", ops, True, None, False, WriteGate(), 1)
        self.assertEqual(raised.exception.errno, errno.EIO)
        self.assertEqual(raised.exception.undo, ops)
        self.assertEqual(bytes(files.names["s/1.seg"].data), b"oldrefused")
        self.assertIn("s/5.seg", files.names)
        gate = WriteGate()
        with self.assertRaises(UndoFailedError) as again:  # (still failing: nothing written)
            write_batch(files, "s", [("s/1.seg", b"next", 3, False)], True, None, False, gate, 2, ops)
        self.assertEqual(again.exception.undo, ops)
        self.assertEqual(gate.failed_epoch, 2)
        self.assertEqual(bytes(files.names["s/1.seg"].data), b"oldrefused")
        files.fail = False
        write_batch(files, "s", [("s/1.seg", b"next", 3, False)], True, None, False, WriteGate(), 3, ops)
        files.cut()
        self.assertEqual(bytes(files.names["s/1.seg"].data), b"oldnext")
        self.assertNotIn("s/5.seg", files.names)


class _FailsUnlink(PowerCutFiles):
    """A disk whose unlinks fail (EIO) while :attr:`fail` is set; ``s/5.seg`` refuses its data
    (ENOSPC) once it reached the file."""

    fail = True

    def append_sync(self, path: str, data: bytes) -> None:
        if path == "s/5.seg":
            self.append(path, data)
            raise OSError(errno.ENOSPC, "No space left on device", path)
        super().append_sync(path, data)

    def unlink(self, path: str) -> None:
        if self.fail:
            raise OSError(errno.EIO, "Input/output error", path)
        super().unlink(path)


class _FailsFsyncOf(PowerCutFiles):
    """A disk whose fsyncs of ``path`` fail (EIO) once :attr:`fail` is set; ``s/5.seg`` refuses
    its data (ENOSPC)."""

    fail = False

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def append_sync(self, path: str, data: bytes) -> None:
        if path == "s/5.seg":
            self.append(path, data)
            self.fsync_dir("s")  # (its name reached the disk)
            raise OSError(errno.ENOSPC, "No space left on device", path)
        super().append_sync(path, data)

    def fsync(self, path: str) -> None:
        if self.fail and path == self.path and len(self.names[path].data) == 3:
            raise OSError(errno.EIO, "Input/output error", path)
        super().fsync(path)
