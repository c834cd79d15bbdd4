"""Benchmark: how long one durable journal write takes, back to back and spaced out.

A journal batch is acknowledged when its write is durable, so the write's latency is on
every producer's round trip. Under a single closed-loop publisher the gateway makes one
durable write every few hundred microseconds, not back to back; some storage (virtual
disks in particular) answers a spaced write much more slowly than one that follows the
previous at once. This measures both, in the same run and on the same filesystem:

- ``journal``: the journal's own write, :meth:`OSFiles.append_sync` (an appending
  ``pwritev(RWF_DSYNC)``, or ``write`` + ``fsync`` where the flag is missing);
- ``overwrite``: a ``pwritev(RWF_DSYNC)`` over blocks written and synced beforehand, so
  the file's size and block map never change (what preallocating segments would buy).

Each row is ``--writes`` writes of ``--size`` bytes, with ``gap`` microseconds of sleep
between one write's end and the next one's start. Run:
``.venv/bin/python bench/fsync_latency.py [--dir var/bench] [--writes 2000] [--size 1000]
[--gaps 0,150,400,800]``. Prints a table (mean against the back-to-back mean) and writes
``bench/results/fsync_latency.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from broker import ROOT, write_json  # noqa: E402  (bench/broker.py)

sys.path.insert(0, str(ROOT))
from gateway.filelayer import OSFiles  # noqa: E402


def journal_writer(path: str, size: int, writes: int) -> tuple[Callable[[bytes], None], Callable[[], None]]:
    """The journal's durable append to a fresh file; returns ``(write, close)``."""
    files = OSFiles()
    return (lambda data: files.append_sync(path, data)), (lambda: files.close(path))


def overwrite_writer(path: str, size: int, writes: int) -> tuple[Callable[[bytes], None], Callable[[], None]]:
    """Durable writes over a file written in full (zeros) and synced first."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    os.pwrite(fd, bytes(size * writes + 4096), 0)
    os.fsync(fd)
    offset = 0

    def write(data: bytes) -> None:
        nonlocal offset
        if hasattr(os, "RWF_DSYNC"):
            os.pwritev(fd, [data], offset, os.RWF_DSYNC)
        else:
            os.pwrite(fd, data, offset)
            os.fdatasync(fd)
        offset += len(data)

    return write, lambda: os.close(fd)


WRITERS = {"journal": journal_writer, "overwrite": overwrite_writer}


def measure(directory: str, mode: str, gap_us: float, size: int, writes: int) -> dict[str, object]:
    """Latency figures (µs) of ``writes`` durable writes with ``gap_us`` of sleep between them."""
    path = os.path.join(directory, f"{mode}-{gap_us:g}.dat")
    write, close = WRITERS[mode](path, size, writes)
    data = b"r" * size
    latencies = []
    try:
        for _ in range(writes):
            started = time.perf_counter()
            write(data)
            latencies.append((time.perf_counter() - started) * 1e6)
            if gap_us:
                time.sleep(gap_us / 1e6)
    finally:
        close()
        os.unlink(path)
    latencies.sort()
    return {"mode": mode, "gap_us": gap_us, "writes": writes, "size": size,
            "median_us": statistics.median(latencies), "mean_us": statistics.mean(latencies),
            "p90_us": latencies[int(0.9 * writes)], "p99_us": latencies[int(0.99 * writes)]}


def main() -> int:
    """Measure every mode at every gap and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=str(ROOT / "var" / "bench"),
                        help="where to write (put it on the journal's filesystem)")
    parser.add_argument("--writes", type=int, default=2000)
    parser.add_argument("--size", type=int, default=1000, help="bytes per write (about one batch of 10 records)")
    parser.add_argument("--gaps", default="0,150,400,800", help="microseconds between writes, comma-separated")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "fsync_latency.json"))
    args = parser.parse_args()
    gaps = [float(g) for g in args.gaps.split(",")]
    if args.writes < 100 or args.size < 1 or any(g < 0 for g in gaps):
        parser.error("--writes must be at least 100, --size positive, gaps not negative")
    os.makedirs(args.dir, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(dir=args.dir) as directory:
        for gap in gaps:
            for mode in WRITERS:
                rows.append(measure(directory, mode, gap, args.size, args.writes))
    base = {r["mode"]: r["mean_us"] for r in rows if r["gap_us"] == min(gaps)}
    print(f"\n{'mode':<10} {'gap us':>7} {'median us':>10} {'mean us':>8} {'p90 us':>7} {'p99 us':>7}"
          f" {'mean vs gap ' + format(min(gaps), 'g'):>16}")
    for r in rows:
        r["mean_vs_smallest_gap"] = float(r["mean_us"]) / float(base[r["mode"]])  # type: ignore[arg-type]
        print(f"{r['mode']:<10} {r['gap_us']:>7g} {r['median_us']:>10.0f} {r['mean_us']:>8.0f} {r['p90_us']:>7.0f}"
              f" {r['p99_us']:>7.0f} {r['mean_vs_smallest_gap']:>16.2f}")
    write_json(args.json, {"results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
