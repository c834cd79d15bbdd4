"""The marks of an HTTP link's long-polled aliases on disk (:mod:`gateway.links.pollmarks`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase

from gateway.links.pollmarks import PollMarks

DEVICE = "vendor=v&model=m&sn=1"


def run_now(work: Callable[..., Any], *args: Any) -> Deferred[Any]:
    """Run blocking work at once (the reactor's thread pool, in a test)."""
    return succeed(work(*args))


class ThreadPool:
    """Blocking work that runs when the test says so, in any order: the reactor's thread pool,
    whose threads may finish two writes in the other order."""

    def __init__(self) -> None:
        self.pending: list[tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]] = []

    def __call__(self, work: Callable[..., Any], *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.pending.append((work, args, d))
        return d

    def run_newest(self) -> None:
        """Finish the work handed over last."""
        work, args, d = self.pending.pop()
        d.callback(work(*args))


class PollMarksTests(SynchronousTestCase):
    def test_marks_of_two_aliases_written_at_once_are_both_kept(self) -> None:
        """Two aliases' values published at once (a cloud app writing both) had their marks
        written by two threads at once, to the same temporary file: the write holding one
        alias's mark only could land last (or rename the other's half-written file), and after
        a restart the other alias's value came down, and its command ran, again. The writes go
        one at a time now, each with every mark made so far."""
        path = Path(self.mktemp())
        pool = ThreadPool()
        marks = PollMarks("cloud", path, DEVICE, pool)
        written = [marks.mark("a", b"Mon, 07 Dec 2026 10:00:00 GMT"), marks.mark("b", b"Mon, 07 Dec 2026 10:00:01 GMT")]
        self.assertEqual(len(pool.pending), 1)  # (one write at a time)
        while pool.pending:
            pool.run_newest()
        for d in written:
            self.successResultOf(d)
        again = PollMarks("cloud", path, DEVICE, run_now)
        self.successResultOf(again.load())
        self.assertEqual((again.since("a"), again.since("b")),
                         (b"Mon, 07 Dec 2026 10:00:00 GMT", b"Mon, 07 Dec 2026 10:00:01 GMT"))
