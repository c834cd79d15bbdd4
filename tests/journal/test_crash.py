"""SIGKILL: a writer killed at random moments loses no append it reported durable."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from gateway.journal.files import OSFiles
from gateway.journal.record import Frame, scan
from gateway.journal.segments import SUFFIX, recover

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KILLS = 22


class CrashTests(SynchronousTestCase):
    """Kill a real writer process 22 times; every printed seq is there, in order, once."""

    timeout = 120

    def test_sigkill_loses_nothing_acknowledged(self) -> None:
        """After each kill, recovery keeps every reported append with its seq, exactly once."""
        state = os.path.abspath(self.mktemp())
        directory = os.path.join(state, "journal", "crash")
        rng = random.Random(4)
        reported: dict[str, int] = {}
        for run in range(KILLS):
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.journal.crash_writer", state, str(run)],
                stdout=subprocess.PIPE, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
            assert proc.stdout is not None
            lines: list[bytes] = []
            target = rng.randint(1, 4000)
            while len(lines) < target:
                line = proc.stdout.readline()
                if not line:
                    break
                lines.append(line)
            proc.send_signal(signal.SIGKILL)
            rest, _ = proc.communicate(timeout=30)
            self.assertEqual(proc.returncode, -signal.SIGKILL)
            lines += rest.splitlines(keepends=True)
            for line in lines:
                if line.endswith(b"\n"):  # a line cut by the kill was never fully reported
                    seq, payload = line.decode().split()
                    reported[payload] = int(seq)
            self.assertGreater(len(reported), run)
            recover(OSFiles(), directory)
            self._check(directory, reported)

    def _check(self, directory: str, reported: dict[str, int]) -> None:
        files = OSFiles()
        stored: list[tuple[int, str]] = []
        for name in sorted(n for n in os.listdir(directory) if n.endswith(SUFFIX)):
            path = os.path.join(directory, name)
            data = files.read(path, 0, files.size(path))
            stored += [(i.record.seq, i.record.payload.rstrip(b".").decode()) for i in scan(data)
                       if isinstance(i, Frame)]
        seqs = [s for s, _ in stored]
        self.assertEqual(seqs, list(range(1, len(seqs) + 1)))
        payloads = [p for _, p in stored]
        self.assertEqual(len(payloads), len(set(payloads)))
        where = dict((p, s) for s, p in stored)
        for payload, seq in reported.items():
            self.assertEqual(where.get(payload), seq, payload)
