"""Power cuts under ``sync: interval`` and ``none``: what the loss ledger counts is never read,
never counted twice, and never given to another record."""

from __future__ import annotations

import errno
import random
from collections.abc import Callable

from twisted.trial.unittest import SynchronousTestCase

from gateway.journal.record import Frame, Record, scan
from gateway.journal.segments import SUFFIX
from gateway.journal.settings import StreamSettings
from gateway.journal.stream import WRITE_BACKOFF_MAX_S, Stream
from tests.journal.helpers import ManualRunner, open_stream, read_all, record
from tests.journal.powercut import PowerLost
from tests.journal.test_powercut import (FRAME, _DyingFiles, _LedgerRefusingFiles, _opened_with_cursor,
                                         _RefusingFiles)


def _counted(stream: Stream) -> tuple[set[int], int]:
    """The seqs the loss ledger's entries span, and the records they count."""
    entries = [e for e in stream.ledger.entries if e.records and e.first_seq]
    return ({seq for e in entries for seq in range(e.first_seq, e.last_seq + 1)},
            sum(e.records for e in entries))


def _durable(files: _RefusingFiles) -> set[tuple[int, bytes]]:
    """(seq, payload) of every record fsynced in a segment: what a power cut keeps."""
    return {(i.record.seq, i.record.payload) for path, inode in files.durable.items() if path.endswith(SUFFIX)
            for i in scan(bytes(inode.synced)) if isinstance(i, Frame)}


class LazySyncPowerCutTests(SynchronousTestCase):
    """Random histories under ``sync: interval`` or ``none`` on a disk that refuses new segments,
    fails writes and their undos, or refuses the loss ledger, at the size and age bounds, each cut
    by power four times (a stop, sometimes, before the cut): a record is read back under the seq
    its append fired with, or counted lost, or was not fsynced yet (the loss the docs allow);
    no record counted lost is read; no seq is counted twice; an append never fires with a seq the
    ledger counts lost, nor with one below the last that fired before it."""

    def _files(self, rng: random.Random, kind: int) -> _RefusingFiles:
        if kind == 0:
            return _DyingFiles(rng)
        if kind == 1:
            return _RefusingFiles()
        return _LedgerRefusingFiles(rng, rng.choice([0.3, 0.7]), rng.choice([errno.ENOSPC, errno.EIO]))

    def _append(self, stream: Stream, rec: Record, fired: dict[bytes, int], last: list[int], where: object) -> None:
        def done(seq: int) -> None:
            self.assertGreater(seq, last[0], where)
            self.assertNotIn(seq, _counted(stream)[0], where)
            last[0] = fired[rec.payload] = seq
        stream.append(rec).addCallbacks(done, lambda f: None)

    def _steps(self, rng: random.Random, files: _RefusingFiles, stream: Stream, runner: ManualRunner,
               fired: dict[bytes, int], acked: list[int], counter: list[int], where: object) -> None:
        """Up to 160 random steps, each picked by a random number below its bound, until the power
        is lost; else a stop, sometimes, and everything left is written. ``acked[0]`` is the
        highest seq acknowledged (the cloud has it), ``counter[0]`` the last record appended."""
        last = [0]

        def append(_: float) -> None:
            counter[0] += 1
            self._append(stream, record(counter[0], rng.choice([32, 32, 32, 120])), fired, last, where)

        def acknowledge(action: float) -> None:  # (the cloud has them)
            acked[0] = max(acked[0], stream.written_seq)
            if action < 0.96:
                stream.note_ack("link", stream.written_seq)
            else:
                stream.ack("link", stream.written_seq).addErrback(lambda f: None)

        steps: list[tuple[float, Callable[[float], object]]] = [
            (0.45, append),
            (0.55, lambda _: stream.clock.advance(0)),  # (the turn ends)
            (0.8, lambda _: runner.step()),
            (0.85, lambda _: setattr(files, "refuse", True)),
            (0.88, lambda _: stream.clock.advance(WRITE_BACKOFF_MAX_S)),
            (0.9, lambda _: stream.clock.advance(rng.choice([0.05, 0.2, 1.0]))),  # (the interval's fsync; max_age_s)
            (0.92, lambda _: stream.enforce_limits()),
            (1.0, acknowledge),
        ]
        try:
            for _ in range(rng.randint(1, 160)):
                action = rng.random()
                next(step for bound, step in steps if action < bound)(action)
                if files.dead:
                    return
            if rng.random() < 0.3:
                stream.close().addErrback(lambda f: None)
            stream.clock.advance(0)
            runner.drain()
        except PowerLost:
            pass

    def _history(self, seed: int) -> int:
        rng = random.Random(seed)
        files = self._files(rng, seed % 3)
        fired: dict[bytes, int] = {}
        acked, counter = [0], [0]
        sync = rng.choice(["interval", "none"])
        for cut in range(4):
            where = (seed, cut)
            settings = StreamSettings(sync=sync, sync_interval_ms=50, segment_bytes=rng.choice([3, 4, 8]) * FRAME,
                                      max_bytes=rng.choice([10, 16, 40, 1000]) * FRAME, min_free_bytes=0,
                                      max_age_s=rng.choice([0, 0, 1]))
            runner, stream = _opened_with_cursor(files, settings)
            files.fail_after = rng.randint(0, 160)
            self._steps(rng, files, stream, runner, fired, acked, counter, where)
            files.refuse = False
            if isinstance(files, _DyingFiles):
                files.failures = 0
            if isinstance(files, _LedgerRefusingFiles):
                files.odds, files.full = 0.0, False
            durable = _durable(files)
            files.cut(rng.choice(["drop", "zeros", "random"]), rng)
            reopened = open_stream(files, settings)
            counted, records = _counted(reopened)
            self.assertLessEqual(records, len(counted), (where, "counted twice"))
            read = [(r.seq, r.payload) for r in read_all(reopened, "link")]
            seqs = [seq for seq, _ in read]
            self.assertEqual(seqs, sorted(set(seqs)), (where, "read twice or out of order"))
            self.assertEqual(set(seqs) & counted, set(), (where, "counted lost and read"))
            for seq, payload in read:
                self.assertEqual(fired.get(payload, seq), seq, (where, "read under another seq"))
            for payload, seq in fired.items():
                if seq > acked[0] and (seq, payload) in durable and seq not in counted:
                    self.assertIn((seq, payload), read, (where, "lost"))
            reopened.close()
            self.flushLoggedErrors(PowerLost)
            self.flushLoggedErrors(OSError)
        return len(fired)

    def test_cuts_under_lazy_syncs(self) -> None:
        """75 random histories, each cut four times. (Seeds 0, 5, 7 and 8: a damaged stretch a
        power cut left in a sealed segment not fsynced yet was counted ``corrupt``, then
        drop-oldest dropped the segment and counted its seqs again as ``max-bytes``.)"""
        fired = sum(self._history(seed) for seed in range(75))
        self.assertGreater(fired, 75 * 60)
