"""A stream's segment files: recovery on open and reading records back.

The functions here block and run on the journal's I/O thread. A stream directory
holds ``<first seq, 20 digits>.seg`` segment files; only the newest (the tail) is
ever appended to. Opening scans only the tail (so a million records open fast);
damage in older segments is found, skipped and reported when a reader reaches it.
"""

from __future__ import annotations

import os
import time
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field

from gateway.asciidigits import ascii_digits
from gateway.filelayer import FileLayer, set_aside, write_atomic
from gateway.journal.record import MAX_SEQ, Damage, Frame, Record, scan

SUFFIX = ".seg"
#: Bytes read to find the first record of a sealed segment on open.
_HEAD_READ = 64 * 1024
#: Smallest read when replaying; bigger reads amortise the thread hop.
_MIN_CHUNK = 1024 * 1024


def segment_path(directory: str, first_seq: int) -> str:
    """The path of the segment whose first record has ``first_seq``."""
    return os.path.join(directory, f"{first_seq:020d}{SUFFIX}")


@dataclass
class Segment:
    """What the stream knows about one segment file.

    :param first_seq: seq of its first record (also its name).
    :param path: the file.
    :param size: bytes of whole frames written to it.
    :param first_time: received time of its first record (None while empty).
    """

    first_seq: int
    path: str
    size: int
    first_time: float | None


def segment_holding(segments: Sequence[Segment], seq: int) -> int:
    """Where seq ``seq`` is among ``segments`` (oldest first, as a stream keeps them): the
    index of the last segment whose first seq is at or below it (the one that holds it, if
    any does), or -1 when it is below every one (or there are none)."""
    return bisect_right(segments, seq, key=_first_seq) - 1


def has_segment(segments: Sequence[Segment], first_seq: int) -> bool:
    """Whether the segment that starts at ``first_seq`` is among ``segments`` (oldest first):
    a read position in it is still good (retention did not drop it)."""
    i = segment_holding(segments, first_seq)
    return i >= 0 and segments[i].first_seq == first_seq


def _first_seq(segment: Segment) -> int:
    return segment.first_seq


@dataclass
class DamageSeen:
    """A damaged stretch found in a segment, with the records it cost.

    :param segment: first seq of the segment holding it.
    :param start: offset of the first damaged byte.
    :param end: offset where good data resumes.
    :param first_lost: first seq lost (``last_lost < first_lost`` when no record was).
    :param last_lost: last seq lost.
    :param torn: a torn tail that recovery cut off.
    """

    segment: int
    start: int
    end: int
    first_lost: int
    last_lost: int
    torn: bool = False

    @property
    def lost(self) -> tuple[int, int] | None:
        """``(first_lost, last_lost)``, or None when the stretch cost no record."""
        return (self.first_lost, self.last_lost) if self.last_lost >= self.first_lost else None


@dataclass
class Recovered:
    """The state of a stream directory after recovery."""

    segments: list[Segment]
    next_seq: int
    last_time: float | None
    damage: list[DamageSeen] = field(default_factory=list)


def _first_time(files: FileLayer, path: str, size: int) -> float | None:
    head = files.read(path, 0, min(size, _HEAD_READ))
    for item in scan(head):
        if isinstance(item, Frame):
            return item.record.received
    return None


def recover(files: FileLayer, directory: str) -> Recovered:
    """Open a stream directory: list segments, scan the tail, cut a torn tail.

    Leftover temporary files are removed. Damage in the middle of the tail is
    skipped and reported; damage running to the end of the tail (a torn write or a
    zero-filled tail) is truncated away and reported with ``torn`` set.
    """
    files.makedirs(directory)
    firsts = []
    for name in files.listdir(directory):
        if name.endswith(".tmp"):
            files.unlink(os.path.join(directory, name))
        elif name.endswith(SUFFIX) and ascii_digits(name[: -len(SUFFIX)]):
            first = int(name[: -len(SUFFIX)])
            # Only the names segment_path gives: another (a copy named 12.seg, one past the
            # largest seq a record holds) is not one.
            if os.path.basename(segment_path(directory, first)) == name and first <= MAX_SEQ:
                firsts.append(first)
    firsts.sort()
    segments = []
    for first in firsts[:-1]:
        path = segment_path(directory, first)
        size = files.size(path)
        segments.append(Segment(first, path, size, _first_time(files, path, size)))
    if not firsts:
        return Recovered([], 1, None)
    tail_first = firsts[-1]
    tail_path = segment_path(directory, tail_first)
    data = files.read(tail_path, 0, files.size(tail_path))
    damage: list[DamageSeen] = []
    want = tail_first
    good_end = 0
    first_time = last_time = None
    pending: tuple[int, int] | None = None
    for item in scan(data):
        if isinstance(item, Frame) and item.record.seq >= want:
            rec = item.record
            if pending is not None:
                damage.append(DamageSeen(tail_first, *pending, want, rec.seq - 1))
                pending = None
            if first_time is None:
                first_time = rec.received
            last_time = rec.received
            want = rec.seq + 1
            good_end = item.offset + item.size
        elif isinstance(item, Damage):
            pending = (item.start, item.end) if pending is None else (pending[0], item.end)
        else:  # a valid frame out of sequence: an old record's bytes inside a payload
            pending = (item.offset, item.offset + item.size) if pending is None else pending
    if pending is not None or good_end < len(data):
        start = pending[0] if pending is not None else good_end
        damage.append(DamageSeen(tail_first, start, len(data), want, want - 1, torn=True))
        files.truncate(tail_path, good_end)
        files.fsync(tail_path)
    segments.append(Segment(tail_first, tail_path, good_end, first_time))
    if last_time is None and len(segments) > 1:
        last_time = segments[-2].first_time
    return Recovered(segments, want, last_time, damage)


@dataclass
class ReadPosition:
    """Where a reader is: the segment, the offset in it and the seq it wants next."""

    segment: int
    offset: int
    want: int


@dataclass
class ReadResult:
    """What one read returned: records, the new position and any damage found."""

    records: list[Record]
    position: ReadPosition
    damage: list[DamageSeen]


def read_records(
    files: FileLayer,
    segments: list[tuple[int, str, int]],
    position: ReadPosition,
    max_records: int,
    max_bytes: int,
    max_read: int | None = None,
) -> ReadResult:
    """Read records at or after ``position.want`` from a snapshot of the segments.

    :param segments: ``(first_seq, path, written size)`` of every live segment,
        oldest first; ``position.segment`` must be one of them.
    :param max_records: stop after this many records.
    :param max_bytes: stop once the payloads returned reach this many bytes (at
        least one record is returned when one is there).
    :param max_read: stop once this many bytes were read, records found or not (a read
        is at least :data:`_MIN_CHUNK`; the next call goes on from the position returned);
        a frame bigger than that is still read whole. None: no such limit.
    """
    records: list[Record] = []
    damage: list[DamageSeen] = []
    index = next(i for i, s in enumerate(segments) if s[0] == position.segment)
    offset, want, nbytes = position.offset, position.want, 0
    chunk = max(_MIN_CHUNK, 2 * max_bytes)
    scanned = 0
    bad: tuple[int, int] | None = None
    while len(records) < max_records and nbytes < max_bytes and (max_read is None or scanned < max_read):
        first, path, size = segments[index]
        if offset >= size:
            if bad is not None:
                nxt = segments[index + 1][0] if index + 1 < len(segments) else want
                damage.append(DamageSeen(first, *bad, want, nxt - 1))
                want = max(want, nxt)
                bad = None
            if index + 1 == len(segments):
                break
            index += 1
            offset = 0
            continue
        start = offset
        asked = min(size - start, chunk)
        data = files.read(path, start, asked)
        short = start + len(data) < size
        # The file ends before the size the journal wrote to it: cut short from outside while
        # the stream was open. What is missing is damage (below), or the same read would come
        # back the same, for ever, on the journal's thread.
        cut = len(data) < asked
        limited = False
        progressed = False
        for item in scan(data):
            if isinstance(item, Frame):
                rec = item.record
                if bad is not None and rec.seq >= want:
                    damage.append(DamageSeen(first, *bad, want, rec.seq - 1))
                    bad = None
                elif rec.seq > want:  # seqs missing, no bytes: a segment cut short or removed from outside
                    damage.append(DamageSeen(first, start + item.offset, start + item.offset, want, rec.seq - 1))
                offset = start + item.offset + item.size
                progressed = True
                if rec.seq < want:
                    continue
                records.append(rec)
                want = rec.seq + 1
                nbytes += len(rec.payload)
                if len(records) >= max_records or nbytes >= max_bytes:
                    limited = True
                    break
            elif item.at_end and short:
                break  # a frame cut by the read size, not damage: read on from it
            else:
                bad = (bad[0] if bad else start + item.start, start + item.end)
                offset = start + item.end
                progressed = True
        if cut and not limited and offset < size:
            bad = (bad[0] if bad else offset, size)
            offset = size
            progressed = True
        if progressed:
            scanned += len(data)
        else:
            chunk = 2 * chunk
    return ReadResult(records, ReadPosition(segments[index][0], offset, want), damage)


class WriteGate:
    """Stops the I/O thread from writing a batch that was queued behind a failed one.

    A stream keeps up to two batches on the I/O thread. The second was planned on
    top of the first: its frames follow the first's in the file, and its seqs follow
    the first's. When the first fails, :func:`write_batch` undoes it, and the stream
    hands those seqs out again; the second must then not be written at all. Each
    batch carries the stream's *epoch* (bumped each time the stream has dealt with a
    failure); the gate, touched only on the I/O thread, refuses every batch of an
    epoch in which a write failed.
    """

    def __init__(self) -> None:
        self.failed_epoch = -1


class BatchRefusedError(OSError):
    """The batch was not written: one queued before it failed (see :class:`WriteGate`)."""


#: One segment a batch touches: ``(segment path, data, size before, new file)``.
BatchOp = tuple[str, bytes, int, bool]


class UndoFailedError(OSError):
    """A failed batch could not be undone (the disk failed the cut-back or the deletion too):
    its refused records may still be in the segment, past the size the stream knows, or in a
    segment it created. Their seqs must not be given to other records until :attr:`undo` is
    done: the stream hands it to its next batch of records, which does it before writing
    anything (:func:`write_batch`), and fails without writing if it fails again.

    :param undo: the ops of the batch whose undo is still to do.
    """

    def __init__(self, undo: list[BatchOp], error: OSError, what: str) -> None:
        super().__init__(error.errno, f"{what}, and undoing it failed: {error.strerror or error}"
                                      " (appends are refused until it is undone)", error.filename)
        self.undo = undo


def delete_segments(files: FileLayer, directory: str, paths: list[str]) -> None:
    """Delete segment files of ``directory`` durably (blocking): unlink each, then fsync the
    directory once, so that a power cut cannot bring one back.

    :param paths: the segments' files (a missing one is not an error).
    :raises OSError: the first unlink that failed (the others are done, and the directory is
        fsynced all the same), or the directory's fsync.
    """
    error: OSError | None = None
    for path in paths:
        try:
            files.unlink(path)
        except OSError as e:
            error = error or e
    files.fsync_dir(directory)
    if error is not None:
        raise error


#: The loss ledger's file in a stream directory (:class:`gateway.journal.losses.LossLedger`).
LEDGER_FILE = "losses.json"


def write_batch(
    files: FileLayer, directory: str, ops: list[BatchOp], sync: bool,
    ledger: bytes | None, check_free: bool, gate: WriteGate, epoch: int, undo: list[BatchOp] | None = None,
) -> tuple[float, int | None, OSError | None]:
    """Write (and fsync) one batch; on failure undo it so stored data stays whole.

    :param ops: ``(segment path, data, size before, new file)`` per segment touched.
    :param undo: the ops of an earlier failed batch whose undo failed (:class:`UndoFailedError`):
        undone first; nothing is written unless that works.
    :param ledger: the loss ledger to replace ``losses.json`` with, if it changed.
    :param check_free: also measure the filesystem's free space.
    :param gate: the stream's gate; ``epoch`` is the stream's epoch for this batch.
    :returns: seconds spent writing and syncing, free bytes (None if not measured, or if
        measuring failed), and
        the error that kept the ledger from being written (the records are durable then:
        the stream keeps the ledger to write with a later batch).
    :raises BatchRefusedError: a batch queued before this one failed; nothing written.
    :raises UndoFailedError: the write failed and so did its undo, or ``undo`` failed again
        (then nothing was written).
    """
    if epoch <= gate.failed_epoch:
        raise BatchRefusedError("not written: a batch queued before it failed")
    t0 = time.monotonic()
    if undo is not None:
        try:
            _undo_batch(files, directory, undo)
        except OSError as e:
            gate.failed_epoch = epoch
            raise UndoFailedError(undo, e, "not written: a write failed earlier") from e
    try:
        for path, data, _, _ in ops:
            if sync and data:
                files.append_sync(path, data)
            elif data:
                files.append(path, data)
            elif sync:  # written earlier by sync: none
                files.fsync(path)
        if sync and any(new for _, _, _, new in ops):
            files.fsync_dir(directory)
    except BaseException as failed:
        gate.failed_epoch = epoch
        try:
            _undo_batch(files, directory, ops)
        except OSError as e:
            raise UndoFailedError(ops, e, f"the write failed ({failed})") from e
        raise
    ledger_error = None
    if ledger is not None:
        try:
            write_ledger(files, directory, ledger)
        except OSError as e:
            ledger_error = e
    return time.monotonic() - t0, _free_bytes(files, directory) if check_free else None, ledger_error


def mark_next_seq(files: FileLayer, directory: str, path: str, replaced: str | None) -> None:
    """Durably create the empty segment ``path``, named for the seq a stream gives next past
    seqs it skipped at its tail (blocking): recovery, this version's and older builds', which
    read the next seq from the tail segment alone, then number past them even without the
    loss ledger's ``skipped``. Then delete ``replaced``, an empty tail such a mark left before
    (a missing one is not an error).

    :raises OSError: a step that failed (the stream's next batch creates ``path`` then).
    """
    files.append(path, b"")
    files.fsync(path)
    files.fsync_dir(directory)
    if replaced is not None:
        if files.exists(replaced):
            files.unlink(replaced)
        files.fsync_dir(directory)


def _free_bytes(files: FileLayer, directory: str) -> int | None:
    """The free space of ``directory``'s filesystem, None when it cannot be measured (statvfs
    failed): measured again with a later write. The batch is written by then: a failure here
    is no failed write (its records are durable, not to be undone nor counted lost)."""
    try:
        return files.free_bytes(directory)
    except OSError:
        return None


def _undo_batch(files: FileLayer, directory: str, ops: list[BatchOp]) -> None:
    """Undo a failed batch of :func:`write_batch` durably (blocking): its seqs go to the next
    batch, maybe in a new segment, so a power cut must not bring back its refused records
    (read in place of the acknowledged ones of the same seqs). Done again until it works
    (:class:`UndoFailedError`): every step may be done already.

    The segments it created go first, newest first, and only once they are gone (the
    directory fsynced) are the segments it appended to cut back: a step that fails stops
    it, so what stays on disk holds the refused records with their seqs in order, no gap
    among them (a start after a crash reads them as records, never acknowledged, rather
    than counting the seqs of a deleted segment between them as lost).

    :raises OSError: the step that failed.
    """
    created = [path for path, _, _, new in reversed(ops) if new]
    for path in created:
        files.unlink(path)
    if created:
        # (a segment this batch created may already be in the directory on disk, when its fsync
        # or the directory's got that far)
        files.fsync_dir(directory)
    for path, _, before, new in ops:
        if not new and files.exists(path):
            # (fsynced: this batch's part of it may be durable already)
            files.truncate(path, before)
            files.fsync(path)


def write_ledger(files: FileLayer, directory: str, ledger: bytes) -> None:
    """Replace a stream directory's loss ledger with ``ledger``, atomically (blocking)."""
    write_atomic(files, os.path.join(directory, LEDGER_FILE), (ledger,))


def open_directory(files: FileLayer, directory: str) -> tuple[Recovered, bytes | str | None, int]:
    """Recover a stream directory and load its loss ledger and the free space (blocking).

    The ledger is its bytes, None when there is none, or why it cannot be read (a directory
    in its place, moved aside to ``losses.json.damaged``: see :func:`~gateway.filelayer.set_aside`).
    """
    rec = recover(files, directory)
    ledger_path = os.path.join(directory, LEDGER_FILE)
    ledger: bytes | str | None = None
    if files.exists(ledger_path):
        try:
            ledger = files.read(ledger_path, 0, 1 << 26)
        except OSError as exc:
            ledger = f"{type(exc).__name__}: {exc}; {set_aside(files, ledger_path)}"
    return rec, ledger, files.free_bytes(directory)
