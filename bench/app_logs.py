"""Program logs rotating: the writer's work per rotation as the number of logs grows.

Many programs' logs (``--logs`` of them, ``--backups`` rotated files each) rotating under the
cap on all logs (``apps.logs_max_total_bytes``, not reached): each log is written 1 KiB at a
time and rotates every 4 KiB, round the logs, ``--rotations`` rotations in all. The writer
writes inline (what its thread does, on this one). For each case: the stat calls per
rotation and the CPU per rotation. ``--before DIR`` measures the checkout at DIR too (its
``gateway`` package, through ``PYTHONPATH``) and prints both.

    .venv/bin/python bench/app_logs.py [--logs 50 200 800] [--backups 1 5] [--rotations 2000] [--before DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def measure(logs: int, backups: int, rotations: int) -> dict[str, float]:
    """One case, in this process: stat calls and CPU microseconds per rotation."""
    from gateway.apps.logs import AppLogWriter

    with tempfile.TemporaryDirectory(prefix="app-logs-") as tmp:
        writer = AppLogWriter(1 << 40)
        targets = [writer.open(Path(tmp) / f"p{index}.log", 4096, backups) for index in range(logs)]
        chunk = b"x" * 1023 + b"\n"
        for target in targets:  # every log there (and the first look at them, where there is one)
            for _ in range(4):
                writer.write(target, chunk)
        looked = 0
        lstat = Path.lstat

        def counting(path: Path) -> os.stat_result:
            nonlocal looked
            looked += 1
            return lstat(path)

        Path.lstat = counting  # type: ignore[method-assign]
        try:
            began = time.process_time()
            for index in range(rotations):
                target = targets[index % logs]
                for _ in range(4):
                    writer.write(target, chunk)
            cpu = time.process_time() - began
        finally:
            Path.lstat = lstat  # type: ignore[method-assign]
        for target in targets:
            writer.release(target)
    return {"logs": logs, "backups": backups, "rotations": rotations,
            "stat_per_rotation": looked / rotations, "cpu_us_per_rotation": cpu / rotations * 1e6}


def run(checkout: Path, args: argparse.Namespace) -> list[dict[str, float]]:
    """Every case, measured with the ``gateway`` package of ``checkout`` (a child process)."""
    argv = [sys.executable, __file__, "--child", "--rotations", str(args.rotations),
            "--logs", *map(str, args.logs), "--backups", *map(str, args.backups)]
    out = subprocess.run(argv, check=True, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(checkout)))
    return json.loads(out.stdout)


def main() -> int:
    """Print the table (before and after with ``--before``), write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logs", type=int, nargs="+", default=[50, 200, 800])
    parser.add_argument("--backups", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--rotations", type=int, default=2000)
    parser.add_argument("--before", default="", help="a checkout to compare with (its gateway package)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "app_logs.json"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps([measure(logs, backups, args.rotations) for logs in args.logs for backups in args.backups]))
        return 0
    results = {"before": run(Path(args.before), args)} if args.before else {}
    results["after"] = run(ROOT, args)
    print("\n| logs | backups | " + " | ".join(f"{side}: stat calls / rotation | {side}: CPU µs / rotation"
                                             for side in results) + " |")
    print("|---|---|" + "---|---|" * len(results))
    for index, case in enumerate(results["after"]):
        print(f"| {case['logs']} | {case['backups']} | " + " | ".join(
            f"{rows[index]['stat_per_rotation']:.1f} | {rows[index]['cpu_us_per_rotation']:.0f}"
            for rows in results.values()) + " |")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"rotations": args.rotations, **results}, indent=2))
    print(f"\nJSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
