"""The records a stream wrote last, kept in memory so a caught-up reader skips the disk.

A consumer that keeps up with its producers (a link forwarding live data) asks for the
records that were written a moment ago. Reading them back costs a hop to the journal's
I/O thread, where they queue behind the next batch's fsync. The stream already had those
records in hand when it wrote them, so it keeps the latest ones here (bounded by count
and bytes) and a read that starts inside this window is answered at once.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from itertools import accumulate
from operator import itemgetter

from gateway.journal.record import Record
from gateway.journal.segments import ReadPosition

#: At most this many records are kept.
TAIL_RECORDS = 16384
#: At most about this many bytes of frames are kept (whole batches go, oldest first).
TAIL_BYTES = 8 << 20


#: One record as written: ``(record, seq, segment, end)``: the record (carrying its seq),
#: its seq, its segment's first seq, where its frame ends.
Written = tuple[Record, int, int, int]
_record = itemgetter(0)
_payload = itemgetter(1)


class RecentTail:
    """The last written records of one stream, oldest first, with contiguous seqs.

    Kept batch by batch, so adding a batch costs the same whatever its size (it runs on
    the reactor for every write).

    :param max_records: how many records to keep at most (0: none, for a stream that no
        reader follows live).
    :param max_bytes: the frame bytes to keep at most; the newest batch always stays.
    """

    def __init__(self, max_records: int = TAIL_RECORDS, max_bytes: int = TAIL_BYTES) -> None:
        self.max_records = max_records
        self.max_bytes = max_bytes
        self._items: list[Written] = []
        self._start = 0  # items before this index are forgotten (compacted now and then)
        self._batches: deque[tuple[int, int]] = deque()  # (end index in _items, frame bytes) of each kept batch
        self._bytes = 0  # frame bytes of the kept batches

    def __len__(self) -> int:
        return len(self._items) - self._start

    def add(self, written: list[Written], nbytes: int) -> None:
        """Keep a batch that is now written (its seqs follow the kept ones without a gap).

        :param nbytes: the bytes of the batch's frames.
        """
        if not written or not self.max_records:
            return
        if len(self) and written[0][1] != self._items[-1][1] + 1:
            self.clear()  # never serve a window with a hole in it
        items = self._items
        items.extend(written)
        batches = self._batches
        batches.append((len(items), nbytes))
        self._bytes += nbytes
        start = max(self._start, len(items) - self.max_records)
        # The oldest batches go until at most max_bytes remain (or only the newest is left).
        while len(batches) > 1 and (self._bytes > self.max_bytes or batches[0][0] <= start):
            end, dropped = batches.popleft()
            self._bytes -= dropped
            start = max(start, end)
        # Compact once a quarter of max_records is forgotten: forgotten records stay referenced
        # until then (compacting only past max_records held up to twice that many).
        if start > self.max_records // 4:
            del items[:start]
            self._batches = deque((end - start, b) for end, b in batches)
            start = 0
        self._start = start

    def clear(self) -> None:
        """Forget everything (the records on disk stay the truth)."""
        self._items = []
        self._start = 0
        self._batches = deque()
        self._bytes = 0

    def received_at(self, seq: int) -> float | None:
        """When the record ``seq`` was received, if it is in the window (else ``None``)."""
        items, start = self._items, self._start
        if start == len(items):
            return None
        index = start + seq - items[start][1]
        if index < start or index >= len(items):
            return None
        return items[index][0].received

    def take(self, want: int, oldest_segment: int, max_records: int,
             max_bytes: int) -> tuple[list[Record], ReadPosition] | None:
        """Records from seq ``want`` on, and the read position after them.

        :param oldest_segment: the first seq of the oldest segment still on disk; records
            in segments dropped since they were written are not served.
        :return: ``None`` when ``want`` is not in the window, or no record is asked for
            (``max_records`` below 1): read the disk instead.
        """
        items, start = self._items, self._start
        if start == len(items) or max_records < 1:
            return None
        index = start + want - items[start][1]
        if index < start or index >= len(items) or items[index][2] < oldest_segment:
            return None
        chosen = items[index:index + max_records]
        records = list(map(_record, chosen))
        # Up to the record whose payload reaches max_bytes, that one included (in C: a read
        # takes hundreds of records).
        cut = bisect_left(list(accumulate(map(len, map(_payload, records)))), max_bytes) + 1
        if cut < len(records):
            del records[cut:]
        last = chosen[len(records) - 1]
        return records, ReadPosition(last[2], last[3], last[1] + 1)
