"""Parts of a big gateway, in process: program logs rotating, topics routed to many links.

**Logs** (``--logs`` counts, ``--backups``): many programs' logs (``--logs`` of them, ``--backups`` rotated files each) rotating under the
cap on all logs (``apps.logs_max_total_bytes``, not reached): each log is written 1 KiB at a
time and rotates every 4 KiB, round the logs, ``--rotations`` rotations in all. The writer
writes inline (what its thread does, on this one). For each case: the stat calls per
rotation and the CPU per rotation.

**Link routes** (``--links`` counts): the links' router (``gateway.links.router``) with that
many links of three routes each (``telemetry/l<n>/#``, ``event/#``, ``t/+/l<n>/#``), routing
``--topics`` topics it has not seen (half to one link, half to none): µs per topic.

``--before DIR`` measures the checkout at DIR too (its ``gateway`` package, through
``PYTHONPATH``) and prints both.

    .venv/bin/python bench/scale_parts.py [--logs 50 200 800] [--backups 1 5] [--rotations 2000]
        [--links 1 5 20 50] [--topics 40000] [--before DIR]
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


def route(links: int, topics: int) -> dict[str, float]:
    """One case, in this process: µs per topic the router has not seen."""
    from gateway.links.router import Router, Rule

    rules = [Rule.compile(f"l{i:02}", topic_filter, template, 1) for i in range(links)
             for topic_filter, template in ((f"telemetry/l{i:02}/#", "{topic}"), ("event/#", "{topic}"),
                                            (f"t/+/l{i:02}/#", "telemetry/{1}/{#}"))]
    router = Router(rules, "acme", "gw1")
    names = [f"telemetry/l{i % links:02}/dev{i}/temp" if i % 2 else f"plant/{i}/value" for i in range(topics)]
    began = time.process_time()
    for name in names:
        router.route(name)
    return {"links": links, "routes": len(rules), "topics": topics,
            "us_per_topic": (time.process_time() - began) / topics * 1e6}


def run(checkout: Path, args: argparse.Namespace) -> dict[str, list[dict[str, float]]]:
    """Every case, measured with the ``gateway`` package of ``checkout`` (a child process)."""
    argv = [sys.executable, __file__, "--child", "--rotations", str(args.rotations), "--topics", str(args.topics),
            "--logs", *map(str, args.logs), "--backups", *map(str, args.backups), "--links", *map(str, args.links)]
    out = subprocess.run(argv, check=True, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(checkout)))
    return json.loads(out.stdout)


def main() -> int:
    """Print the table (before and after with ``--before``), write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logs", type=int, nargs="+", default=[50, 200, 800])
    parser.add_argument("--backups", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--rotations", type=int, default=2000)
    parser.add_argument("--links", type=int, nargs="+", default=[1, 5, 20, 50])
    parser.add_argument("--topics", type=int, default=40000)
    parser.add_argument("--before", default="", help="a checkout to compare with (its gateway package)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "scale_parts.json"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps({"logs": [measure(logs, backups, args.rotations) for logs in args.logs
                                   for backups in args.backups],
                          "routes": [route(links, args.topics) for links in args.links]}))
        return 0
    results = {"before": run(Path(args.before), args)} if args.before else {}
    results["after"] = run(ROOT, args)
    print("\n| logs | backups | " + " | ".join(f"{side}: stat calls / rotation | {side}: CPU µs / rotation"
                                             for side in results) + " |")
    print("|---|---|" + "---|---|" * len(results))
    for index, case in enumerate(results["after"]["logs"]):
        print(f"| {case['logs']} | {case['backups']} | " + " | ".join(
            f"{rows['logs'][index]['stat_per_rotation']:.1f} | {rows['logs'][index]['cpu_us_per_rotation']:.0f}"
            for rows in results.values()) + " |")
    print("\n| links | routes | " + " | ".join(f"{side}: µs / new topic" for side in results) + " |")
    print("|---|---|" + "---|" * len(results))
    for index, case in enumerate(results["after"]["routes"]):
        print(f"| {case['links']} | {case['routes']} | " + " | ".join(
            f"{rows['routes'][index]['us_per_topic']:.1f}" for rows in results.values()) + " |")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"rotations": args.rotations, **results}, indent=2))
    print(f"\nJSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
