"""Reactor-side cost of an append: closed-loop producers (64; 8 in the many mode) on one journal ``Stream``.

The I/O thread is collapsed into a runner called by hand and the files are in memory
(``tests.journal``'s ``ManualRunner`` and ``PowerCutFiles``), so what is left is the
Python the reactor runs per record. Meant for an instruction counter, which this shared
machine does not blur (wall-clock is printed too, for what it is worth)::

    for n in 6400 19200; do
        valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
            .venv/bin/python bench/journal_cpu.py then $n 2>&1 | grep Collected
    done
    # instructions per record = (second - first) / 12800

``then`` appends with ``Stream.append_then`` (the bus's path), ``deferred`` with
``Stream.append`` and a callback on its Deferred, ``many`` with ``Stream.append_many``,
:data:`READ` records at a time from :data:`MANY_PRODUCERS` producers (the broker's path:
a socket read's PUBLISHes, one call).
``--tmpfs`` writes real files under ``/dev/shm`` (``OSFiles``) instead: the in-memory
files copy what they hold at every fsync, which grows with the run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from typing import Any

from gateway.filelayer import FileLayer, OSFiles
from tests.journal.helpers import DIR, ManualRunner, open_stream, record
from tests.journal.powercut import PowerCutFiles

PRODUCERS = 64
#: The ``many`` mode's producers (connections, as ``bench/e2e.py --publishers 8``), and the
#: records each hands to one ``append_many`` (a socket read's PUBLISHes).
MANY_PRODUCERS = 8
READ = 10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", nargs="?", default="then", choices=("then", "deferred", "many"))
    parser.add_argument("records", nargs="?", type=int, default=6400)
    parser.add_argument("--tmpfs", action="store_true", help="real files under /dev/shm")
    args = parser.parse_args()
    scratch = tempfile.TemporaryDirectory(dir="/dev/shm") if args.tmpfs else None
    files: FileLayer = OSFiles() if scratch else PowerCutFiles()
    runner = ManualRunner()
    stream = open_stream(files, run=runner, directory=scratch.name if scratch else DIR)
    runner.drain()
    fired = 0
    rec = record(1, 256)

    per_call = READ if args.mode == "many" else 1

    def again(_: int) -> None:
        nonlocal fired
        fired += per_call
        if fired <= args.records:
            append(rec)

    def failed(failure: Any) -> None:
        raise SystemExit(f"append failed: {failure}")

    def append(r: Any) -> None:
        if args.mode == "then":
            stream.append_then(r, again, failed)
        elif args.mode == "many":
            stream.append_many([r] * READ, again, failed)
        else:
            stream.append(r).addCallbacks(again, failed)

    t0 = time.perf_counter()
    for _ in range(MANY_PRODUCERS if args.mode == "many" else PRODUCERS):
        append(rec)
    while fired < args.records:
        stream.clock.advance(0)  # type: ignore[attr-defined]
        if not runner.step():
            stream.clock.advance(0)  # type: ignore[attr-defined]
    elapsed = time.perf_counter() - t0
    print(f"{args.mode}: {fired} records, {elapsed / fired * 1e6:.1f} µs per record (wall clock)")
    if scratch:
        scratch.cleanup()


if __name__ == "__main__":
    main()
