"""Power cuts: every append whose Deferred fired survives any cut, and the journal reopens."""

from __future__ import annotations

import errno
import os
import random

from twisted.trial.unittest import SynchronousTestCase

from gateway.journal.record import Frame, Record, encode, scan
from gateway.journal.segments import LEDGER_FILE, SUFFIX
from gateway.journal.settings import StreamSettings
from gateway.journal.stream import WRITE_BACKOFF_MAX_S, Stream
from tests.journal.helpers import ManualRunner, open_stream, read_all, record
from tests.journal.powercut import PowerCutFiles, PowerLost

FRAME = len(encode(record(1), 1))


def _on_disk(files: PowerCutFiles) -> list[tuple[int, bytes]]:
    """(seq, payload) of every valid frame in every segment, in file order."""
    out = []
    for path in sorted(p for p in files.names if p.endswith(SUFFIX)):
        out += [(i.record.seq, i.record.payload) for i in scan(bytes(files.names[path].data))
                if isinstance(i, Frame)]
    return out


def _opened_with_cursor(files: PowerCutFiles, settings: StreamSettings) -> tuple[ManualRunner, Stream]:
    """The stream in ``files`` opened, with its cursor ``link``, its I/O jobs run one by one."""
    runner = ManualRunner()
    stream = open_stream(files, settings, run=runner)
    runner.drain()
    stream.cursor("link")
    runner.drain()
    return runner, stream


def _append(stream: Stream, rec: Record, fired: dict[bytes, int]) -> None:
    """Append ``rec``; once its Deferred fires, ``fired`` maps its payload to its seq."""
    stream.append(rec).addCallbacks(lambda seq: fired.__setitem__(rec.payload, seq), lambda f: None)


def _write_out(stream: Stream, runner: ManualRunner, files: PowerCutFiles) -> None:
    """Unless the power is lost: end the reactor turn and run every I/O job left."""
    if not files.dead:
        stream.clock.advance(0)
        runner.drain()


class PowerCutTests(SynchronousTestCase):
    """Random appends, reads and acks, cut at a random file operation, many times over."""

    def _history(self, seed: int) -> None:
        rng = random.Random(seed)
        files = PowerCutFiles()
        settings = StreamSettings(segment_bytes=rng.choice([8, 30, 1000]) * FRAME, min_free_bytes=0)
        fired: dict[bytes, int] = {}
        counter = 0
        for _cut in range(3):
            runner, stream = _opened_with_cursor(files, settings)
            files.fail_after = rng.randint(0, 80)
            try:
                for _ in range(rng.randint(1, 120)):
                    action = rng.random()
                    if action < 0.45:
                        counter += 1
                        rec = record(counter)
                        _append(stream, rec, fired)
                    elif action < 0.55:
                        stream.clock.advance(0)  # the reactor turn ends: pending appends are handed over
                    elif action < 0.9:
                        runner.step()
                    else:
                        upto = stream.written_seq
                        stream.ack("link", upto).addCallbacks(lambda _, u=upto: self._note(u), lambda f: None)
                    if files.dead:
                        break
                _write_out(stream, runner, files)
            except PowerLost:
                pass
            files.cut(rng.choice(["drop", "zeros", "random"]), rng)
            reopened = open_stream(files, settings)
            seqs = _on_disk(files)
            self.assertEqual([s for s, _ in seqs], sorted(s for s, _ in seqs), seed)
            payloads = [p for _, p in seqs]
            self.assertEqual(len(payloads), len(set(payloads)), seed)
            present = dict((p, s) for s, p in seqs)
            for payload, seq in fired.items():
                if seq > reopened.reader.cursors["link"].acked:
                    self.assertEqual(present.get(payload), seq, (seed, payload))
            self.assertGreaterEqual(reopened.reader.cursors["link"].acked, self._acked, seed)
            reopened.close()
            self.flushLoggedErrors(PowerLost)
        self._fired += len(fired)

    _acked = 0  # highest seq whose ack fired
    _fired = 0  # appends that fired, over every history

    def _note(self, upto: int) -> None:
        self._acked = max(self._acked, upto)

    def test_cuts(self) -> None:
        """400 random histories, each cut three times (drop, zeros or random tails)."""
        for seed in range(400):
            self._acked = 0
            self._history(seed)
        # The histories must have stored a good many appends, or they proved nothing.
        self.assertGreater(self._fired, 400 * 20)


class _RefusingFiles(PowerCutFiles):
    """Power cuts, and a disk that refuses the next new segment's first write (ENOSPC) when
    :attr:`refuse` is set (a batch's write to the segment before it is durable then)."""

    refuse = False

    def append_sync(self, path: str, data: bytes) -> None:
        if self.refuse and path.endswith(SUFFIX) and path not in self.names:
            self.refuse = False
            self.append(path, data[:len(data) // 2])  # (a part reached the file)
            raise OSError(errno.ENOSPC, "No space left on device", path)
        super().append_sync(path, data)


_DROPS = ("max-bytes", "max-age", "min-free-disk")


def _run_until_cut(rng: random.Random, files: _RefusingFiles, stream: Stream, runner: ManualRunner,
                   fired: dict[bytes, int], acked: list[int], counter: list[int]) -> None:
    """Up to 160 random steps (appends of two sizes, turn ends, I/O jobs, refused writes, back-offs
    waited out, acknowledgements saved or in memory), until the power is lost; else everything
    left is written. ``acked[0]`` is the highest seq acknowledged (the cloud has it), ``counter[0]``
    the last record appended."""
    try:
        for _ in range(rng.randint(1, 160)):
            action = rng.random()
            if action < 0.45:
                counter[0] += 1
                rec = record(counter[0], rng.choice([32, 32, 32, 120]))
                _append(stream, rec, fired)
            elif action < 0.55:
                stream.clock.advance(0)
            elif action < 0.85:
                runner.step()
            elif action < 0.9:
                files.refuse = True
            elif action < 0.93:
                stream.clock.advance(WRITE_BACKOFF_MAX_S)
            else:  # (the cloud has them: a drop may let them go uncounted)
                acked[0] = max(acked[0], stream.written_seq)
                if action < 0.96:
                    stream.note_ack("link", stream.written_seq)
                else:
                    stream.ack("link", stream.written_seq).addErrback(lambda f: None)
            if files.dead:
                break
        _write_out(stream, runner, files)
    except PowerLost:
        pass


class _BoundHistories(SynchronousTestCase):
    """Random histories at the stream's size bound (drop-oldest dropping all along, a lowered
    max_bytes at some starts, failed writes), cut at a random file operation: every append
    whose Deferred fired and that the cursor had not acknowledged is read back or counted
    dropped, no seq is counted dropped twice, and no record counted dropped is read again."""

    #: Each history's runs end with a power cut within this many file operations.
    fail_after = 120

    def _files(self, rng: random.Random) -> _RefusingFiles:
        """The disk a history runs on."""
        return _RefusingFiles()

    def _reopened(self, files: _RefusingFiles, settings: StreamSettings) -> Stream:
        """The stream opened again after a cut, for the checks."""
        return open_stream(files, settings)

    def _spared(self, files: _RefusingFiles) -> set[int]:
        """Seqs the checks let go missing and uncounted (a loss the docs allow)."""
        return set()

    def _history(self, seed: int) -> int:
        rng = random.Random(seed)
        files = self._files(rng)
        fired: dict[bytes, int] = {}
        acked, counter = [0], [0]
        for _cut in range(4):
            settings = StreamSettings(segment_bytes=rng.choice([4, 8]) * FRAME,
                                      max_bytes=rng.choice([10, 16, 40]) * FRAME, min_free_bytes=0)
            runner, stream = _opened_with_cursor(files, settings)
            files.fail_after = rng.randint(0, self.fail_after)
            _run_until_cut(rng, files, stream, runner, fired, acked, counter)
            files.refuse = False
            files.cut(rng.choice(["drop", "zeros", "random"]), rng)
            reopened = self._reopened(files, settings)
            counted = [seq for e in reopened.loss_report().entries if e.reason in _DROPS
                       for seq in range(e.first_seq, e.last_seq + 1)]
            self.assertEqual(len(counted), len(set(counted)), (seed, _cut, "counted twice"))
            read = {r.seq: r.payload for r in read_all(reopened, "link")}
            self.assertFalse(set(read) & set(counted), (seed, _cut, "counted dropped, read again"))
            spared = self._spared(files)
            for payload, seq in fired.items():
                if seq > acked[0] and seq not in counted and seq not in spared:
                    self.assertEqual(read.get(seq), payload, (seed, _cut, seq))
            reopened.close()
            self.flushLoggedErrors(PowerLost)
            self.flushLoggedErrors(OSError)
        return len(fired)


class BoundedPowerCutTests(_BoundHistories):
    """:class:`_BoundHistories` on a disk that refuses some new segments (ENOSPC)."""

    def test_cuts_at_the_bound(self) -> None:
        """150 random histories at the bound, each cut four times. (Seed 457 cuts after a failed
        batch whose cut-back of the segment before its new one was not fsynced: the refused
        record came back in place of the acknowledged one stored under its seq.)"""
        fired = sum(self._history(seed) for seed in range(320, 470))
        self.assertGreater(fired, 150 * 20)


class _DyingFiles(_RefusingFiles):
    """Power cuts, and a dying disk: when :attr:`refuse` is set, the next segment write fails
    (EIO) after half or all of its bytes reached the file, and so do the next one to three
    truncates, fsyncs, unlinks and directory fsyncs (the failed batch's undo among them)."""

    refuse = False
    failures = 0

    def __init__(self, rng: random.Random) -> None:
        super().__init__()
        self.rng = rng

    def append_sync(self, path: str, data: bytes) -> None:
        if self.refuse and path.endswith(SUFFIX):
            self.refuse = False
            self.failures = self.rng.randint(1, 3)
            self.append(path, data[:self.rng.choice([len(data) // 2, len(data)])])
            raise OSError(errno.EIO, "Input/output error", path)
        super().append_sync(path, data)

    def _dying(self, path: str) -> None:
        if self.failures and not self.dead:
            self.failures -= 1
            raise OSError(errno.EIO, "Input/output error", path)

    def truncate(self, path: str, size: int) -> None:
        self._dying(path)
        super().truncate(path, size)

    def fsync(self, path: str) -> None:
        self._dying(path)
        super().fsync(path)

    def unlink(self, path: str) -> None:
        self._dying(path)
        super().unlink(path)

    def fsync_dir(self, path: str) -> None:
        self._dying(path)
        super().fsync_dir(path)


class FailedUndoPowerCutTests(SynchronousTestCase):
    """Random histories on a dying disk: segment writes fail and so does the undo of the failed
    batch (cutting the segment back, deleting a segment it created), then power cuts at a random
    file operation. Every append whose Deferred fired and that the cursor had not acknowledged
    is read back under its seq, and no record is counted lost: the refused records a failed undo
    leaves never stand for acknowledged ones."""

    def _history(self, seed: int) -> int:
        rng = random.Random(seed)
        files = _DyingFiles(rng)
        settings = StreamSettings(segment_bytes=rng.choice([3, 6]) * FRAME, min_free_bytes=0)
        fired: dict[bytes, int] = {}
        acked, counter = [0], [0]
        for _cut in range(3):
            runner, stream = _opened_with_cursor(files, settings)
            files.fail_after = rng.randint(0, 150)
            _run_until_cut(rng, files, stream, runner, fired, acked, counter)
            files.refuse = False
            files.failures = 0
            files.cut(rng.choice(["drop", "zeros", "random"]), rng)
            reopened = open_stream(files, settings)
            read = {r.seq: r.payload for r in read_all(reopened, "link")}
            for payload, seq in fired.items():
                if seq > acked[0]:
                    self.assertEqual(read.get(seq), payload, (seed, _cut, seq))
            self.assertEqual([e for e in reopened.loss_report().entries if e.records], [], (seed, _cut))
            reopened.close()
            self.flushLoggedErrors(PowerLost)
            self.flushLoggedErrors(OSError)
        return len(fired)

    def test_cuts_after_failed_undos(self) -> None:
        """150 random histories on a dying disk, each cut three times (about 800 failed undos,
        185 of them failing again when the next write tried them). Before the stream kept the
        undo to do, the next batch took the refused records' seqs: 20 histories read a refused
        record in place of an acknowledged one (none does without the failed undos)."""
        fired = sum(self._history(seed) for seed in range(150))
        self.assertGreater(fired, 150 * 12)  # (appends are refused while an undo fails)


class _LedgerRefusingFiles(_RefusingFiles):
    """Power cuts, refused new segments (:class:`_RefusingFiles`), and a disk that refuses
    writes of the loss ledger's temporary file: a failing one (EIO) refuses each with
    probability :attr:`odds`; a full one (ENOSPC) fills up at a write with that probability and
    refuses every write until a segment is deleted (the next write then works: the room is
    the ledger's). :attr:`made_room` holds the seqs of the segments deleted until then: the journal
    deletes one dropped segment to make room for its ledger on a full disk, and a power cut
    before the ledger is on disk loses its records uncounted (docs/journal.md says so)."""

    def __init__(self, rng: random.Random, odds: float, errno_: int) -> None:
        super().__init__()
        self.rng, self.odds, self.errno = rng, odds, errno_
        self.full = self.room = False
        self.refused = 0
        self.made_room: set[int] = set()

    def write(self, path: str, data: bytes) -> None:
        if path.endswith(LEDGER_FILE + ".tmp") and not self.dead:
            refuse = self.rng.random() < self.odds and not self.room
            if self.errno == errno.ENOSPC:
                self.full = refuse = self.full or refuse
            self.room = False
            if refuse:
                self.refused += 1
                raise OSError(self.errno, os.strerror(self.errno), path)
        super().write(path, data)

    def unlink(self, path: str) -> None:
        if path.endswith(SUFFIX) and (self.full or self.room) and path in self.names and not self.dead:
            self.full, self.room = False, True
            self.made_room.update(i.record.seq for i in scan(bytes(self.names[path].data)) if isinstance(i, Frame))
        super().unlink(path)


class LedgerRefusedPowerCutTests(_BoundHistories):
    """:class:`_BoundHistories` on a disk that also refuses many writes of the loss ledger (full,
    or failing): a dropped segment stays until a ledger that counts it is on disk, so nothing is
    lost uncounted, save a segment deleted to make room for the ledger on a full disk."""

    fail_after = 160
    refused = 0  # ledger writes refused, over every history

    def _files(self, rng: random.Random) -> _LedgerRefusingFiles:
        return _LedgerRefusingFiles(rng, rng.choice([0.3, 0.7, 0.95]), rng.choice([errno.ENOSPC, errno.EIO]))

    def _reopened(self, files: _RefusingFiles, settings: StreamSettings) -> Stream:
        assert isinstance(files, _LedgerRefusingFiles)
        odds, files.odds, files.full = files.odds, 0.0, False  # (the checks read what the cut left)
        reopened = open_stream(files, settings)
        files.odds = odds
        self.refused += files.refused
        files.refused = 0
        return reopened

    def _spared(self, files: _RefusingFiles) -> set[int]:
        assert isinstance(files, _LedgerRefusingFiles)
        return files.made_room

    def test_cuts_with_ledger_refused(self) -> None:
        """120 random histories at the bound on a disk refusing loss-ledger writes, each cut
        four times. (Seed 1413: a batch carrying the ledger failed on its segment write, ENOSPC,
        taken for the ledger's own refusal; the oldest dropped segment was deleted to make room
        while the ledger itself, EIO, was never written: its records lost, counted nowhere.)"""
        fired = sum(self._history(seed) for seed in range(1400, 1520))
        self.assertGreater(fired, 120 * 20)
        self.assertGreater(self.refused, 120 * 3)  # (the ledger was refused, often)
