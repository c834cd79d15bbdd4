"""The marks of an HTTP link's long-polled aliases on disk (:mod:`gateway.links.pollmarks`)."""

from __future__ import annotations

from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from gateway.links.pollmarks import PollMarks
from tests.twin.fakes import HeldRunner, run_now

DEVICE = "vendor=v&model=m&sn=1"


class PollMarksTests(SynchronousTestCase):
    def test_marks_of_two_aliases_written_at_once_are_both_kept(self) -> None:
        """Two aliases' values published at once (a cloud app writing both) had their marks
        written by two threads at once, to the same temporary file: the write holding one
        alias's mark only could land last (or rename the other's half-written file), and after
        a restart the other alias's value came down, and its command ran, again. The writes go
        one at a time now, each with every mark made so far."""
        path = Path(self.mktemp())
        pool = HeldRunner()  # (the reactor's thread pool: its threads may finish two writes in the other order)
        marks = PollMarks("cloud", path, DEVICE, pool)
        written = [marks.mark("a", b"Mon, 07 Dec 2026 10:00:00 GMT"), marks.mark("b", b"Mon, 07 Dec 2026 10:00:01 GMT")]
        self.assertEqual(len(pool.pending), 1)  # (one write at a time)
        while pool.pending:
            work, args, d = pool.pending.pop()  # (the newest first)
            d.callback(work(*args))
        for d in written:
            self.successResultOf(d)
        again = PollMarks("cloud", path, DEVICE, run_now)
        self.successResultOf(again.load())
        self.assertEqual((again.since("a"), again.since("b")),
                         (b"Mon, 07 Dec 2026 10:00:00 GMT", b"Mon, 07 Dec 2026 10:00:01 GMT"))
