"""The records a stream wrote last, kept in memory so a caught-up reader skips the disk.

A consumer that keeps up with its producers (a link forwarding live data) asks for the
records that were written a moment ago. Reading them back costs a hop to the journal's
I/O thread, where they queue behind the next batch's fsync. The stream already had those
records in hand when it wrote them, so it keeps the latest ones here (bounded by count
and bytes) and a read that starts inside this window is answered at once.
"""

from __future__ import annotations

from bisect import bisect_left
from itertools import accumulate

from gateway.journal.record import Record, with_seq
from gateway.journal.segments import ReadPosition

#: At most this many records are kept.
TAIL_RECORDS = 16384
#: At most this many payload bytes are kept.
TAIL_BYTES = 8 << 20


#: One record as written: ``(record, seq, segment, end)``: the record as appended (its
#: ``seq`` field not set yet), its seq, its segment's first seq, where its frame ends.
Written = tuple[Record, int, int, int]


class RecentTail:
    """The last written records of one stream, oldest first, with contiguous seqs.

    :param max_records: how many records to keep at most.
    :param max_bytes: how many payload bytes to keep at most.
    """

    def __init__(self, max_records: int = TAIL_RECORDS, max_bytes: int = TAIL_BYTES) -> None:
        self.max_records = max_records
        self.max_bytes = max_bytes
        self._items: list[Written] = []
        self._ends: list[int] = []  # payload bytes from the list's start through each item
        self._start = 0  # items before this index are forgotten (compacted now and then)

    def __len__(self) -> int:
        return len(self._items) - self._start

    def add(self, written: list[Written]) -> None:
        """Keep a batch that is now written (its seqs follow the kept ones without a gap)."""
        if not written:
            return
        if len(self) and written[0][1] != self._items[-1][1] + 1:
            self.clear()  # never serve a window with a hole in it
        items, ends = self._items, self._ends
        items.extend(written)
        ends.extend(accumulate([len(w[0].payload) for w in written], initial=ends[-1] if ends else 0))
        del ends[len(ends) - len(written) - 1]  # accumulate repeats the initial value first
        # The oldest items go until at most max_records and max_bytes remain.
        start = max(self._start, len(items) - self.max_records,
                    bisect_left(ends, ends[-1] - self.max_bytes) + 1 if ends[-1] > self.max_bytes else 0)
        if start > self.max_records:  # compact
            del items[:start]
            dropped = ends[start - 1]
            self._ends = [end - dropped for end in ends[start:]]
            start = 0
        self._start = start

    def clear(self) -> None:
        """Forget everything (the records on disk stay the truth)."""
        self._items = []
        self._ends = []
        self._start = 0

    def take(self, want: int, oldest_segment: int, max_records: int,
             max_bytes: int) -> tuple[list[Record], ReadPosition] | None:
        """Records from seq ``want`` on, and the read position after them.

        :param oldest_segment: the first seq of the oldest segment still on disk; records
            in segments dropped since they were written are not served.
        :return: ``None`` when ``want`` is not in the window (read the disk instead).
        """
        items, start = self._items, self._start
        if start == len(items):
            return None
        index = start + want - items[start][1]
        if index < start or index >= len(items) or items[index][2] < oldest_segment:
            return None
        records: list[Record] = []
        nbytes = 0
        last = items[index]
        for last in items[index:index + max_records]:
            record = with_seq(last[0], last[1])
            records.append(record)
            nbytes += len(record.payload)
            if nbytes >= max_bytes:
                break
        return records, ReadPosition(last[2], last[3], last[1] + 1)
