"""The forwarder's bookkeeping taken a batch at a time gives what it gives record by record."""

from __future__ import annotations

import tracemalloc
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.journal.record import with_seq
from gateway.links.forwarder import Forwarder, _runs
from tests.journal.helpers import record


class _Cursor:
    """A stream that only records what the forwarder tells it of its cursor."""

    def __init__(self) -> None:
        self.noted: list[int] = []

    def note_ack(self, cursor: str, seq: int) -> None:
        self.noted.append(seq)

    def ack(self, cursor: str, seq: int, above: Any = ()) -> Deferred[None]:
        return succeed(None)


def _model(floor: int, done: set[int], seqs: list[int]) -> int:
    """Record by record: the floor moves over every seq done just above it."""
    for seq in seqs:
        if seq > floor:
            done.add(seq)
    while floor + 1 in done:
        floor += 1
        done.discard(floor)
    return floor


class MarkDoneTests(SynchronousTestCase):
    """Acknowledged seqs move the floor as one at a time would, whatever the batches."""

    @settings(max_examples=150, deadline=None)
    @given(st.lists(st.lists(st.integers(1, 40), max_size=12), max_size=12), st.booleans())
    def test_batches_in_any_order(self, batches: list[list[int]], in_order: bool) -> None:
        """Batches of seqs (in order or not, with repeats and gaps) leave the floor, the seqs
        done above it and what the stream is told as the record-by-record rule does."""
        stream = _Cursor()
        forwarder = Forwarder(stream, "cloud", 8, Clock())  # type: ignore[arg-type]
        floor, done = 0, set()
        for batch in batches:
            seqs = sorted(batch) if in_order else batch
            before = floor
            floor = _model(floor, done, seqs)
            forwarder._mark_done(seqs, sent=True)
            self.assertEqual((forwarder._floor, forwarder._done), (floor, done))
            self.assertEqual(stream.noted[-1:] if floor > before else [], [floor] if floor > before else [])

    @settings(max_examples=150, deadline=None)
    @given(st.lists(st.booleans(), max_size=40), st.data())
    def test_dropped_runs_among_acknowledgements(self, dropped_flags: list[bool], data: st.DataObject) -> None:
        """Runs the journal dropped (ascending ranges, as reads pass them) among batches of the
        other seqs acknowledged in any order leave the floor, what is done above it and what
        the cursor would save as the record-by-record rule does."""
        stream = _Cursor()
        forwarder = Forwarder(stream, "cloud", 8, Clock())  # type: ignore[arg-type]
        seqs = range(1, len(dropped_flags) + 1)
        runs: list[range] = []
        for seq, dropped in zip(seqs, dropped_flags):
            if dropped:
                if runs and runs[-1].stop == seq:
                    runs[-1] = range(runs[-1].start, seq + 1)
                else:
                    runs.append(range(seq, seq + 1))
        acked = data.draw(st.permutations([seq for seq, dropped in zip(seqs, dropped_flags) if not dropped]))
        floor, done = 0, set()
        while runs or acked:
            if runs and (not acked or data.draw(st.booleans())):
                batch: list[int] | range = runs.pop(0)
            else:
                cut = data.draw(st.integers(1, len(acked)))
                batch, acked = acked[:cut], acked[cut:]
            floor = _model(floor, done, list(batch))
            forwarder._mark_done(batch)
            self.assertEqual(forwarder._floor, floor)
            self.assertEqual(_runs(forwarder._done, forwarder._dropped), _runs(done))

    def test_a_run_just_above_the_floor(self) -> None:
        """A whole run above the floor, shuffled, moves the floor to its top at once; a run
        with a repeat in place of one of its seqs does not."""
        forwarder = Forwarder(_Cursor(), "cloud", 8, Clock())  # type: ignore[arg-type]
        forwarder._mark_done([3, 1, 2, 4])
        self.assertEqual((forwarder._floor, forwarder._done), (4, set()))
        forwarder._mark_done([5, 5, 7])
        self.assertEqual((forwarder._floor, forwarder._done), (5, {7}))


class ReadSortingTests(SynchronousTestCase):
    """A read's records go to the backlog or the live queue as they would one by one."""

    def _forwarder(self, live_from: int, interleave: bool = True) -> Forwarder:
        forwarder = Forwarder(_Cursor(), "cloud", 8, Clock(), interleave=interleave)  # type: ignore[arg-type]
        forwarder._live_from = live_from  # (no connection: nothing is sent)
        return forwarder

    def test_reads_either_side_of_the_connection(self) -> None:
        """Records appended before the link connected are backlog, later ones live; a read
        across the line splits; without interleaving everything is backlog; seqs skipped by
        the journal are done."""
        forwarder = self._forwarder(8)
        forwarder._got([with_seq(record(i), i) for i in range(3, 6)])  # the first read: the floor follows it
        forwarder._got([with_seq(record(i), i) for i in range(7, 10)])  # 6 dropped, 8 on live
        forwarder._got([with_seq(record(i), i) for i in range(10, 12)])
        self.assertEqual([r.seq for r in forwarder.backlog], [3, 4, 5, 7])
        self.assertEqual([r.seq for r in forwarder.live], [8, 9, 10, 11])
        self.assertEqual((forwarder._floor, _runs(forwarder._done, forwarder._dropped), forwarder._next_read),
                         (2, [(6, 6)], 12))
        plain = self._forwarder(8, interleave=False)
        plain._got([with_seq(record(i), i) for i in range(1, 12)])
        self.assertEqual(([r.seq for r in plain.backlog], len(plain.live)), (list(range(1, 12)), 0))

    def test_records_offered_live_are_not_taken_twice(self) -> None:
        """A record already offered live is skipped when the cursor brings it."""
        forwarder = self._forwarder(1)
        forwarder._got([with_seq(record(i), i) for i in range(1, 3)])
        forwarder._behind = True
        forwarder.protocol = object()  # type: ignore[assignment]
        forwarder.pump = lambda: None  # type: ignore[method-assign]
        forwarder.offer(with_seq(record(4), 4))
        forwarder._got([with_seq(record(i), i) for i in range(3, 6)])
        self.assertEqual([r.seq for r in forwarder.live], [1, 2, 4, 3, 5])


class DroppedRunTests(SynchronousTestCase):
    """Seqs the journal dropped between two reads are passed over without a pass over each."""

    def read_past_dropped(self, acked: list[int], dropped: int) -> tuple[Forwarder, _Cursor]:
        """A forwarder that read seqs 1-3 (``acked`` of them acknowledged), then a read past
        ``dropped`` seqs the journal dropped; that read's peak of traced memory stays under
        1 MiB."""
        stream = _Cursor()
        forwarder = Forwarder(stream, "cloud", 8, Clock(), interleave=False)  # type: ignore[arg-type]
        forwarder._got([with_seq(record(i), i) for i in range(1, 4)])
        forwarder._mark_done(acked, sent=True)
        forwarder.backlog.clear()
        tracemalloc.start()
        try:
            forwarder._got([with_seq(record(4 + dropped), 4 + dropped)])
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        self.assertLess(peak, 1 << 20)
        return forwarder, stream

    def test_a_long_dropped_run_costs_no_memory_per_seq(self) -> None:
        """A read past a million seqs dropped (``max_bytes`` while the cloud was away, nothing
        in flight) moves the floor over them at once: no set of a million seqs built to check
        the run (hundreds of MB for the tens of millions a large stream drops)."""
        dropped = 1_000_000
        forwarder, stream = self.read_past_dropped([1, 2, 3], dropped)
        self.assertEqual((forwarder._floor, forwarder._done, stream.noted[-1]), (3 + dropped, set(), 3 + dropped))

    def test_a_long_dropped_run_above_records_in_flight_costs_no_memory_per_seq(self) -> None:
        """The usual case: records were in flight when the cloud went away, so the floor waits
        below them while the journal drops a million seqs above. The run is kept whole, not a
        seq at a time (70 MB a million seqs), and the floor passes it once those records are
        acknowledged; the cursor saved meanwhile names it as one run."""
        dropped = 1_000_000
        forwarder, stream = self.read_past_dropped([2], dropped)  # 1 and 3 still in flight
        self.assertEqual(forwarder._floor, 0)
        self.assertEqual(_runs(forwarder._done, forwarder._dropped), [(2, 2), (4, 3 + dropped)])
        forwarder._mark_done([3], sent=True)
        self.assertEqual((forwarder._floor, forwarder._done), (0, {2, 3}))
        forwarder._mark_done([1], sent=True)
        self.assertEqual((forwarder._floor, forwarder._done, stream.noted[-1]), (3 + dropped, set(), 3 + dropped))
        forwarder._mark_done([4 + dropped], sent=True)
        self.assertEqual((forwarder._floor, forwarder._done), (4 + dropped, set()))
