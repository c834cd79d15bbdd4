"""Reactor-side cost of an append: 64 closed-loop producers on one journal ``Stream``.

The I/O thread is collapsed into a runner called by hand and the files are in memory
(``tests.journal``'s ``ManualRunner`` and ``PowerCutFiles``), so what is left is the
Python the reactor runs per record. Meant for an instruction counter, which this shared
machine does not blur (wall-clock is printed too, for what it is worth)::

    for n in 6400 19200; do
        valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
            .venv/bin/python bench/journal_cpu.py then $n 2>&1 | grep Collected
    done
    # instructions per record = (second - first) / 12800

``then`` appends with ``Stream.append_then`` (the broker's path), ``deferred`` with
``Stream.append`` and a callback on its Deferred.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from tests.journal.helpers import ManualRunner, open_stream, record
from tests.journal.powercut import PowerCutFiles

PRODUCERS = 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", nargs="?", default="then", choices=("then", "deferred"))
    parser.add_argument("records", nargs="?", type=int, default=6400)
    args = parser.parse_args()
    files, runner = PowerCutFiles(), ManualRunner()
    stream = open_stream(files, run=runner)
    runner.drain()
    fired = 0
    rec = record(1, 256)

    def again(_: int) -> None:
        nonlocal fired
        fired += 1
        if fired <= args.records:
            append(rec)

    def failed(failure: Any) -> None:
        raise SystemExit(f"append failed: {failure}")

    def append(r: Any) -> None:
        if args.mode == "then":
            stream.append_then(r, again, failed)
        else:
            stream.append(r).addCallbacks(again, failed)

    t0 = time.perf_counter()
    for _ in range(PRODUCERS):
        append(rec)
    while fired < args.records:
        stream.clock.advance(0)  # type: ignore[attr-defined]
        if not runner.step():
            stream.clock.advance(0)  # type: ignore[attr-defined]
    elapsed = time.perf_counter() - t0
    print(f"{args.mode}: {fired} records, {elapsed / fired * 1e6:.1f} µs per record (wall clock)")


if __name__ == "__main__":
    main()
