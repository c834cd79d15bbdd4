"""Which writes of a stream's loss ledger reached the disk (:class:`LedgerWrites`)."""

from __future__ import annotations

import errno

from twisted.trial.unittest import SynchronousTestCase

from gateway.journal.ledgerwrites import LedgerWrites

FULL = OSError(errno.ENOSPC, "No space left on device")


class LedgerWritesTests(SynchronousTestCase):
    """What waits for the ledger's write hears of that write's outcome, not of another's."""

    def test_a_later_write_refused_first_leaves_the_needed_one_pending(self) -> None:
        """A batch's ledger write is refused as soon as a batch before it fails (it never ran),
        while a write of the ledger on its own, handed over before it, is still on the I/O
        thread: what waits for that one keeps waiting, and hears that it worked. (Before, it
        failed with the later write's error: a cursor's save failed, and a disk-full error
        deleted a dropped segment to make room while the ledger that counted it was on its
        way to the disk.)"""
        writes = LedgerWrites()
        writes.handed_over()
        writes.need()  # write 1: on its own, for a drop
        writes.handed_over()  # write 2: with a batch queued behind one that fails
        waited = writes.on_disk()
        writes.refused(2, FULL)
        self.assertNoResult(waited)
        writes.written(1)
        self.assertIsNone(self.successResultOf(waited))

    def test_the_needed_write_refused_fails_what_waits(self) -> None:
        """The write needed refused: what waits for it fails with its error, and so does a
        wait that starts before another write is handed over; the next write is the one
        needed then."""
        writes = LedgerWrites()
        writes.handed_over()
        writes.need()
        waited = writes.on_disk()
        writes.refused(1, FULL)
        self.assertIs(self.failureResultOf(waited, OSError).value, FULL)
        self.assertIs(self.failureResultOf(writes.on_disk(), OSError).value, FULL)
        writes.handed_over()
        again = writes.on_disk()
        self.assertNoResult(again)
        writes.written(2)
        self.successResultOf(again)

    def test_the_needed_write_refused_before_a_later_one_still_fails_what_waits(self) -> None:
        """The write needed refused, then one handed over after it: a wait that starts then
        fails with the needed one's error (it does not wait for a write already refused), and
        the next write handed over is the one needed."""
        writes = LedgerWrites()
        writes.handed_over()
        writes.need()
        writes.handed_over()
        writes.refused(1, FULL)
        writes.refused(2, OSError(errno.EIO, "Input/output error"))
        self.assertIs(self.failureResultOf(writes.on_disk(), OSError).value, FULL)
        writes.handed_over()
        again = writes.on_disk()
        writes.refused(3, FULL)
        self.assertIs(self.failureResultOf(again, OSError).value, FULL)
