"""Power cuts: every append whose Deferred fired survives any cut, and the journal reopens."""

from __future__ import annotations

import random

from twisted.trial.unittest import SynchronousTestCase

from gateway.journal.record import Frame, encode, scan
from gateway.journal.segments import SUFFIX
from gateway.journal.settings import StreamSettings
from tests.journal.helpers import ManualRunner, open_stream, record
from tests.journal.powercut import PowerCutFiles, PowerLost

FRAME = len(encode(record(1), 1))


def _on_disk(files: PowerCutFiles) -> list[tuple[int, bytes]]:
    """(seq, payload) of every valid frame in every segment, in file order."""
    out = []
    for path in sorted(p for p in files.names if p.endswith(SUFFIX)):
        out += [(i.record.seq, i.record.payload) for i in scan(bytes(files.names[path].data))
                if isinstance(i, Frame)]
    return out


class PowerCutTests(SynchronousTestCase):
    """Random appends, reads and acks, cut at a random file operation, many times over."""

    def _history(self, seed: int) -> None:
        rng = random.Random(seed)
        files = PowerCutFiles()
        settings = StreamSettings(segment_bytes=rng.choice([8, 30, 1000]) * FRAME, min_free_bytes=0)
        fired: dict[bytes, int] = {}
        counter = 0
        for _cut in range(3):
            runner = ManualRunner()
            stream = open_stream(files, settings, run=runner)
            runner.drain()
            stream.cursor("link")
            runner.drain()
            files.fail_after = rng.randint(0, 80)
            try:
                for _ in range(rng.randint(1, 120)):
                    action = rng.random()
                    if action < 0.45:
                        counter += 1
                        rec = record(counter)
                        stream.append(rec).addCallbacks(
                            lambda seq, p=rec.payload: fired.__setitem__(p, seq), lambda f: None)
                    elif action < 0.55:
                        stream.clock.advance(0)  # the reactor turn ends: pending appends are handed over
                    elif action < 0.9:
                        runner.step()
                    else:
                        upto = stream.written_seq
                        stream.ack("link", upto).addCallbacks(lambda _, u=upto: self._note(u), lambda f: None)
                    if files.dead:
                        break
                if not files.dead:
                    stream.clock.advance(0)
                    runner.drain()
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
