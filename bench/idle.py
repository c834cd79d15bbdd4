"""Idle gateway: what a real ``twistd gateway`` does while nothing happens (wake-ups, disk writes, CPU).

Three windows, each ``--duration`` seconds after ``--settle`` seconds of quiet:

- **default**: the embedded default config (conf/gateway.yaml, its own state dir and ports), no client;
- **typical**: an MQTT link to a local mosquitto (the cloud), 20 idle MQTT clients (keep-alive 60;
  10 with persistent sessions, 3 of those then gone, holding offline sessions), 30 retained
  messages, the admin API on TCP too (asked for /status once), one write to the ingest, the twin,
  one hosted program (``sleep``), reports on their default intervals;
- **after burst**: the same gateway once 1,000 QoS 1 messages went up the link.

For each window: CPU seconds (user + system), voluntary context switches per second of all
its threads (each is a thread going back to sleep after a wake-up), bytes written to disk
(``/proc/PID/io`` write_bytes), the files under the state dir whose mtime changed, threads.
Needs mosquitto and mosquitto-clients. The gateway runs from this checkout (PYTHONPATH).

    .venv/bin/python bench/idle.py [--duration 120] [--settle 15]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from broker import BIN, ROOT, free_port, start_mosquitto, wait_for_port, write_json  # noqa: E402


def counters(pid: int, state: Path) -> dict[str, object]:
    """CPU seconds, voluntary context switches (all threads), disk bytes written, threads, state-dir mtimes."""
    switches = 0
    tasks = os.listdir(f"/proc/{pid}/task")
    for task in tasks:
        try:
            status = Path(f"/proc/{pid}/task/{task}/status").read_text()
        except FileNotFoundError:
            continue
        switches += sum(int(line.split()[1]) for line in status.splitlines()
                        if line.startswith("voluntary_ctxt_switches"))
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    io = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    mtimes = {str(p.relative_to(state)): p.stat().st_mtime_ns for p in state.rglob("*") if p.is_file()}
    return {"cpu": (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), "switches": switches,
            "write_bytes": int(io["write_bytes"]), "threads": len(tasks), "mtimes": mtimes}


def measure(pid: int, state: Path, settle: float, duration: float) -> dict[str, object]:
    """One idle window: the counters' differences over ``duration`` after ``settle`` seconds."""
    time.sleep(settle)
    before = counters(pid, state)
    time.sleep(duration)
    after = counters(pid, state)
    changed = sorted(p for p, m in after["mtimes"].items() if before["mtimes"].get(p) != m)  # type: ignore[union-attr]
    return {"seconds": duration, "cpu_s": round(after["cpu"] - before["cpu"], 3),  # type: ignore[operator]
            "wakeups_per_s": round((after["switches"] - before["switches"]) / duration, 2),  # type: ignore[operator]
            "write_bytes": after["write_bytes"] - before["write_bytes"],  # type: ignore[operator]
            "files_changed": changed, "threads": after["threads"]}


def start_gateway(work: Path, config: str) -> subprocess.Popen[bytes]:
    """``twistd gateway`` of this checkout on ``config``."""
    (work / "gateway.yaml").write_text(config)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([str(BIN / "twistd"), "--nodaemon", "--pidfile=", f"--logfile={work / 'gw.log'}",
                             "gateway", "--config", str(work / "gateway.yaml")], cwd=work, env=env)


def default_config(work: Path, mqtt: int) -> str:
    """conf/gateway.yaml with its own state dir and ports."""
    text = (ROOT / "conf" / "gateway.yaml").read_text().replace("state_dir: ./var", f"state_dir: {work / 'state'}")
    for old in ("tcp:1883:", "tcp:8090:", "tcp:9883:"):
        text = text.replace(old, f"tcp:{mqtt if old == 'tcp:1883:' else free_port()}:")
    return text


def typical_config(work: Path, mqtt: int, ingest: int, admin: int, cloud: int) -> str:
    """A link to the local cloud, the admin API on TCP, a hosted program; the rest by default."""
    return f"""gateway: {{state_dir: {work / 'state'}, device_id: gw1, tenant_id: t1}}
broker:
  listeners: {{default: {{endpoint: "tcp:{mqtt}:interface=127.0.0.1"}}}}
  plugins: {{amqtt.plugins.authentication.AnonymousAuthPlugin: {{allow_anonymous: true}}}}
apps: {{programs: {{sleeper: {{command: /bin/sleep 1000000}}}}}}
links: {{links: {{cloud: {{endpoint: "tcp:host=127.0.0.1:port={cloud}", client_id: "{{device}}", clean_session: false}}}}}}
ingest: {{endpoint: "tcp:{ingest}:interface=127.0.0.1"}}
telemetry: {{metrics_endpoint: "tcp:{free_port()}:interface=127.0.0.1"}}
admin: {{tcp: "tcp:{admin}:interface=127.0.0.1"}}
"""


def mqtt(*args: str) -> list[str]:
    """A mosquitto client command line."""
    return [shutil.which(args[0]) or args[0], "-h", "127.0.0.1", *args[1:]]


def main() -> int:
    """Run the three windows, print the table, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=120.0, help="seconds each window is measured over")
    parser.add_argument("--settle", type=float, default=15.0, help="seconds of quiet before each window")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "idle.json"))
    args = parser.parse_args()
    results: dict[str, dict[str, object]] = {}
    with tempfile.TemporaryDirectory(prefix="idle-") as tmp:
        work = Path(tmp)
        (work / "default").mkdir()
        port = free_port()
        gateway = start_gateway(work / "default", default_config(work / "default", port))
        try:
            wait_for_port(port, 60)
            results["default"] = measure(gateway.pid, work / "default" / "state", args.settle, args.duration)
        finally:
            gateway.terminate()
            gateway.wait(60)
        (work / "typical").mkdir()
        ports = {name: free_port() for name in ("mqtt", "ingest", "admin", "cloud")}
        cloud = start_mosquitto(ports["cloud"], work)
        helpers: list[subprocess.Popen[bytes]] = [cloud]
        gateway = start_gateway(work / "typical", typical_config(work / "typical", **ports))
        try:
            wait_for_port(ports["cloud"], 20)
            wait_for_port(ports["mqtt"], 60)
            received = open(work / "cloud.txt", "wb")
            helpers.append(subprocess.Popen(mqtt("mosquitto_sub", "-p", str(ports["cloud"]), "-t", "#", "-q", "1"),
                                            stdout=received))
            for i in range(20):
                persistent = ["-c", "-i", f"persist{i}", "-q", "1", "-t", "telemetry/#"] if i < 10 else ["-i", f"c{i}"]
                helpers.append(subprocess.Popen(mqtt("mosquitto_sub", "-p", str(ports["mqtt"]), "-k", "60",
                                                     "-t", "state/#", *persistent), stdout=subprocess.DEVNULL))
            for i in range(30):
                subprocess.run(mqtt("mosquitto_pub", "-p", str(ports["mqtt"]), "-r", "-q", "1",
                                    "-t", f"state/dev{i}/door", "-m", f"open {i}"), check=True, timeout=30)
            time.sleep(2)
            for helper in helpers[2:5]:  # three persistent sessions go offline
                helper.terminate()
            token = (work / "typical" / "state" / "admin" / "token").read_text().strip()
            urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{ports['admin']}/status",
                                                          headers={"Authorization": f"Bearer {token}"}), timeout=10).read()
            urllib.request.urlopen(urllib.request.Request(
                f"http://127.0.0.1:{ports['ingest']}/onep:v1/stack/alias", data=b"temp=21.5",
                headers={"X-Exosite-VMS": "acme box sn1"}), timeout=10).read()
            results["typical"] = measure(gateway.pid, work / "typical" / "state", args.settle, args.duration)
            started = time.monotonic()
            subprocess.run(mqtt("mosquitto_pub", "-p", str(ports["mqtt"]), "-q", "1", "-t", "telemetry/burst", "-l"),
                           input=b"x\n" * 1000, check=True, timeout=120)
            while (work / "cloud.txt").read_bytes().count(b"x\n") < 1000 and time.monotonic() - started < 60:
                time.sleep(0.2)
            burst_s = round(time.monotonic() - started, 2)
            results["after burst"] = measure(gateway.pid, work / "typical" / "state", args.settle, args.duration)
            results["after burst"]["burst_s"] = burst_s
        finally:
            for process in [gateway, *helpers]:
                process.terminate()
            for process in [gateway, *helpers]:
                process.wait(60)
    print(f"\nidle windows of {args.duration:.0f} s, each after {args.settle:.0f} s of quiet\n")
    print(f"{'window':<12} {'CPU s':>6} {'CPU %':>6} {'wake-ups/s':>10} {'disk bytes':>10} {'threads':>7}  files changed")
    for name, r in results.items():
        print(f"{name:<12} {r['cpu_s']:>6.2f} {100 * r['cpu_s'] / args.duration:>6.3f} {r['wakeups_per_s']:>10.2f}"  # type: ignore[operator]
              f" {r['write_bytes']:>10} {r['threads']:>7}  {', '.join(r['files_changed']) or '-'}")  # type: ignore[arg-type]
    write_json(args.json, {"duration_s": args.duration, "settle_s": args.settle, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
