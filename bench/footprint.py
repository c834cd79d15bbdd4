"""Idle footprint: RSS and CPU of an idle gateway with reports and /metrics on, beside one with them off.

Both run the embedded default configuration (conf/gateway.yaml: a local broker, no cloud
link, no apps), side by side in one run, each its own ``twistd gateway`` process with its
own state directory and ports. "on" is the default telemetry section (reports on their
intervals, /metrics served) and is scraped like Prometheus would (every ``--scrape`` s);
"off" has /metrics off and every report interval 0. After ``--settle`` seconds, CPU
(user + system of the process) is measured over ``--duration`` seconds and RSS at the end.

The gateway's modules are byte-compiled first (``compileall`` into their ``__pycache__``),
as the .deb's postinst does on the target: a checkout run with PYTHONDONTWRITEBYTECODE=1
would otherwise compile every module at each start, and the compiler's garbage stays in
the process's heap. ``--no-compile`` measures that cold start instead.

    .venv/bin/python bench/footprint.py [--duration 60] [--settle 10] [--scrape 15] [--no-compile]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from broker import BIN, ROOT, free_port, wait_for_port, write_json  # noqa: E402

#: The goals of issue 20, for everything on.
GOAL_RSS_MB = 60.0
GOAL_CPU_PERCENT = 0.5


def start(work: Path, telemetry: bool) -> tuple[subprocess.Popen[bytes], int, int | None]:
    """The default config with its own state dir and ports; reports and metrics on or off."""
    work.mkdir(parents=True)
    mqtt = free_port()
    metrics = free_port() if telemetry else None
    text = (ROOT / "conf" / "gateway.yaml").read_text()
    text = text.replace("state_dir: ./var", f"state_dir: {work / 'state'}")
    text = text.replace('endpoint: "tcp:1883:interface=127.0.0.1"', f'endpoint: "tcp:{mqtt}:interface=127.0.0.1"')
    if telemetry:
        text = text.replace('metrics_endpoint: "tcp:9883:interface=127.0.0.1"',
                            f'metrics_endpoint: "tcp:{metrics}:interface=127.0.0.1"')
    else:
        text = text.replace('metrics_endpoint: "tcp:9883:interface=127.0.0.1"', 'metrics_endpoint: ""')
        for key in ("device_info_interval", "usage_report_interval", "engine_report_interval"):
            text = "\n".join(f"  {key}: 0" if line.strip().startswith(f"{key}:") else line
                             for line in text.splitlines()) + "\n"
    config = work / "gateway.yaml"
    config.write_text(text)
    process = subprocess.Popen([str(BIN / "twistd"), "--nodaemon", "--pidfile=", f"--logfile={work / 'gw.log'}",
                                "gateway", "--config", str(config)], cwd=work)
    return process, mqtt, metrics


def scrape(port: int) -> int:
    """GET /metrics; the page's size."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return len(response.read())


def main() -> int:
    """Run both gateways side by side, print the table, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds CPU is measured over")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds after start before measuring")
    parser.add_argument("--scrape", type=float, default=15.0, help="seconds between scrapes of 'on' (0: none)")
    parser.add_argument("--no-compile", action="store_true",
                        help="do not byte-compile the gateway first (each start compiles its sources)")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "footprint.json"))
    args = parser.parse_args()
    if not args.no_compile:  # as debian/gateway.postinst does on the target
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "gateway"),
                        str(ROOT / "twisted" / "plugins")], check=True, stdout=subprocess.DEVNULL)
    with tempfile.TemporaryDirectory(prefix="footprint-") as tmp:
        runs = {name: start(Path(tmp) / name, name == "on") for name in ("on", "off")}
        try:
            for process, mqtt, metrics in runs.values():
                wait_for_port(mqtt, 60)
                if metrics is not None:
                    wait_for_port(metrics, 60)
            page = scrape(runs["on"][2]) if runs["on"][2] else 0  # type: ignore[arg-type]
            time.sleep(args.settle)
            procs = {name: psutil.Process(p.pid) for name, (p, _, _) in runs.items()}
            before = {name: sum(proc.cpu_times()[:2]) for name, proc in procs.items()}
            started = time.monotonic()
            scrapes = 0
            next_scrape = started
            while time.monotonic() - started < args.duration:
                if args.scrape and time.monotonic() >= next_scrape:
                    scrape(runs["on"][2])  # type: ignore[arg-type]
                    scrapes += 1
                    next_scrape += args.scrape
                time.sleep(0.2)
            elapsed = time.monotonic() - started
            results = {}
            for name, proc in procs.items():
                cpu = sum(proc.cpu_times()[:2]) - before[name]
                results[name] = {"rss_mb": round(proc.memory_info().rss / 2**20, 1),
                                 "cpu_percent": round(100 * cpu / elapsed, 3), "cpu_s": round(cpu, 3)}
        finally:
            for process, _, _ in runs.values():
                process.terminate()
            for process, _, _ in runs.values():
                process.wait(30)
    on, off = results["on"], results["off"]
    print(f"\nidle {args.duration:.0f} s after {args.settle:.0f} s; 'on' scraped {scrapes} times "
          f"(page {page} bytes); {'sources compiled at start' if args.no_compile else 'byte-compiled'}\n")
    print(f"{'telemetry':<10} {'RSS MB':>8} {'CPU %':>7}")
    for name in ("on", "off"):
        print(f"{name:<10} {results[name]['rss_mb']:>8.1f} {results[name]['cpu_percent']:>7.3f}")
    rss_ratio = on["rss_mb"] / off["rss_mb"]
    cpu_ratio = on["cpu_percent"] / off["cpu_percent"] if off["cpu_percent"] else None
    print(f"{'on/off':<10} {rss_ratio:>8.2f} {cpu_ratio if cpu_ratio is None else round(cpu_ratio, 2)!s:>7}")
    met = on["rss_mb"] <= GOAL_RSS_MB and on["cpu_percent"] <= GOAL_CPU_PERCENT
    print(f"goal (on: RSS <= {GOAL_RSS_MB:.0f} MB, CPU <= {GOAL_CPU_PERCENT} %): {'met' if met else 'NOT met'}")
    write_json(args.json, {"duration_s": args.duration, "settle_s": args.settle, "scrape_interval_s": args.scrape,
                           "byte_compiled": not args.no_compile,
                           "scrapes": scrapes, "page_bytes": page, "results": results,
                           "ratio_on_off": {"rss": round(rss_ratio, 3),
                                            "cpu": round(cpu_ratio, 3) if cpu_ratio else None},
                           "goal": {"rss_mb": GOAL_RSS_MB, "cpu_percent": GOAL_CPU_PERCENT, "met": met}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
