"""Crash loop: an app that exits at once, supervised for N seconds (default 120).

Runs, side by side and at the same time:
  * the gateway's AppsService with its default backoff (1 s doubling to a 60 s cap),
  * the same with the cap forced down to 1 s (the worst a config can ask for),
  * supervisord (when installed), the comparison GWE uses, with the same program.
Each supervisor runs in its own process; CPU is that process's own user+system time
(the crashing children are not counted). Prints a table and writes
bench/results/apps_crashloop.json.

    .venv/bin/python bench/apps_crashloop.py [--duration 120]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

COMMAND = "/bin/false"
RESULTS = Path(__file__).parent / "results" / "apps_crashloop.json"


def child(duration: float, backoff_max: float, out: Path) -> None:
    """Run AppsService with one crashing program; record spawn times and own CPU."""
    from twisted.internet import asyncioreactor

    asyncioreactor.install()
    from twisted.internet import reactor

    from gateway.apps.process import ProgramState
    from gateway.apps.service import AppsService
    from gateway.apps.settings import AppsSettings, ProgramSettings

    settings = AppsSettings(backoff_max=backoff_max, programs={"crash": ProgramSettings(
        command=COMMAND, startsecs=1, startretries=10**6, autorestart="true")})
    state = Path(tempfile.mkdtemp(prefix="apps-bench-"))
    service = AppsService(settings, state, reactor, "tcp:127.0.0.1:1883")
    spawns: list[float] = []
    service.supervisor.observers.append(
        lambda p: spawns.append(time.monotonic()) if p.state is ProgramState.STARTING else None)
    cpu0, wall0 = time.process_time(), time.monotonic()

    def finish() -> None:
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
        out.write_text(json.dumps({"cpu_s": cpu, "wall_s": wall,
                                   "spawns": [t - wall0 for t in spawns]}))
        service.stopService().addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(service.startService)
    reactor.callLater(duration, finish)
    reactor.run()
    shutil.rmtree(state, ignore_errors=True)


def start_supervisord(work: Path) -> subprocess.Popen[bytes] | None:
    """supervisord with the same program, or None when it is not installed."""
    binary = shutil.which("supervisord")
    if binary is None:
        return None
    conf = work / "supervisord.conf"
    conf.write_text(f"""[supervisord]
nodaemon=true
logfile={work}/supervisord.log
pidfile={work}/supervisord.pid
loglevel=info

[program:crash]
command={COMMAND}
startsecs=1
startretries=1000000
autorestart=true
""")
    return subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def supervisord_spawns(log: Path, start: float) -> list[float]:
    """Seconds after ``start`` (epoch) of each "spawned:" line of supervisord's log."""
    times = []
    for line in log.read_text().splitlines():
        match = re.match(r"(\S+ \S+),(\d+) INFO spawned: 'crash'", line)
        if match:
            stamp = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S").timestamp()
            times.append(stamp + int(match.group(2)) / 1000 - start)
    return times


def gaps(spawns: list[float]) -> list[float]:
    """Seconds between consecutive spawns."""
    return [round(b - a, 2) for a, b in zip(spawns, spawns[1:])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=120.0)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--backoff-max", type=float, default=60.0, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.duration, args.backoff_max, args.out)
        return
    work = Path(tempfile.mkdtemp(prefix="apps-crashloop-"))
    runs = {"gateway (cap 60 s)": 60.0, "gateway (cap 1 s)": 1.0}
    procs = {name: subprocess.Popen(
        [sys.executable, __file__, "--child", "--duration", str(args.duration),
         "--backoff-max", str(cap), "--out", str(work / f"{cap}.json")])
        for name, cap in runs.items()}
    started = time.time()
    supervisord = start_supervisord(work)
    import psutil

    sup_proc = psutil.Process(supervisord.pid) if supervisord else None
    time.sleep(args.duration)
    results: dict[str, dict[str, object]] = {}
    if supervisord is not None and sup_proc is not None:
        times = sup_proc.cpu_times()
        cpu = times.user + times.system
        supervisord.terminate()
        supervisord.wait(30)
        spawns = supervisord_spawns(work / "supervisord.log", started)
        results["supervisord 4.x"] = {"cpu_s": cpu, "wall_s": args.duration, "spawns": spawns}
    for name, proc in procs.items():
        proc.wait(60)
        results[name] = json.loads((work / f"{runs[name]}.json").read_text())
    shutil.rmtree(work, ignore_errors=True)
    base = results.get("supervisord 4.x")
    print(f"crash loop of {COMMAND} for {args.duration:.0f} s (startsecs=1, autorestart)")
    print(f"{'supervisor':<22}{'restarts':>9}{'CPU %':>8}{'CPU/restart ms':>16}{'vs supervisord':>16}"
          "  first gaps (s)")
    for name, r in results.items():
        spawns = r["spawns"]  # type: ignore[assignment]
        restarts = max(0, len(spawns) - 1)  # type: ignore[arg-type]
        cpu_pct = 100 * float(r["cpu_s"]) / float(r["wall_s"])  # type: ignore[arg-type]
        per = 1000 * float(r["cpu_s"]) / restarts if restarts else 0.0  # type: ignore[arg-type]
        ratio = (f"{cpu_pct / (100 * float(base['cpu_s']) / float(base['wall_s'])):.2f}x"
                 if base else "-")
        r.update(restarts=restarts, cpu_percent=round(cpu_pct, 3),
                 gaps=gaps(spawns))  # type: ignore[arg-type]
        print(f"{name:<22}{restarts:>9}{cpu_pct:>8.2f}{per:>16.2f}{ratio:>16}  "
              f"{gaps(spawns)[:8]}")  # type: ignore[arg-type]
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"duration_s": args.duration, "command": COMMAND,
                                   "results": results}, indent=1))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
