"""A big gateway: many programs, links, persistent sessions, retained topics, twin things.

A real ``twistd gateway`` of this checkout with ``--programs`` hosted programs (shell loops
writing a line to stdout and stderr every ``--print-every`` seconds, their logs rotating at
``--log-bytes`` with one backup: four log files each), ``--links`` MQTT links to one
mosquitto (each with three routes), ``--sessions`` persistent sessions of ``--filters``
subscriptions each (offline), ``--retained`` retained topics and ``--things`` twin things.

It measures: start to ready (the ``gateway started`` line) on an empty state directory and
again with all of that kept, the log lines of each start, the answer time and size of
``gatewayctl status``, the admin API's reads and ``/metrics``, RSS, descriptors and threads,
CPU and wake-ups (voluntary context switches) over ``--idle`` seconds of quiet, the time a
configuration change takes (``POST /config/apply``, restarting the services), and the
time SIGTERM takes to stop it (against ``gateway.shutdown_timeout``). It prints a table and
writes JSON. Needs mosquitto.

    .venv/bin/python bench/scale.py [--programs 50] [--links 20] [--sessions 2000] [--filters 10]
        [--retained 5000] [--things 500] [--idle 20] [--profile DIR]

``--profile DIR`` runs the gateway under twistd's cProfile (``--profile``): one stats file
per run of the gateway in DIR. ``--checkout DIR`` runs the gateway of another checkout (its
``gateway`` package, through ``PYTHONPATH``): the code before a change.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from broker import BIN, ROOT, free_port, start_mosquitto, wait_for_port, write_json  # noqa: E402
from idle import counters  # noqa: E402

from gateway.mqtt import packets  # noqa: E402  (the gateway's one MQTT codec)

#: Connections opened at once while the sessions are made.
CONCURRENCY = 100
READS = ("/status", "/apps", "/links", "/journal", "/broker", "/twin", "/reports", "/metrics", "/")


def gateway_config(work: Path, ports: dict[str, int], args: argparse.Namespace) -> str:
    """The big configuration."""
    programs = "\n".join(
        f"    p{i:03}: {{command: \"/bin/sh -c 'while :; do echo out {i} {'x' * 60}; "
        f"echo err {i} {'y' * 60} >&2; sleep {args.print_every}; done'\", autorestart: true, startsecs: 1, "
        f"stdout_logfile_maxbytes: {args.log_bytes}, stdout_logfile_backups: 1}}"
        for i in range(args.programs)) or "    {}"
    links = "\n".join(
        f"    l{i:02}: {{endpoint: \"tcp:host=127.0.0.1:port={ports['cloud']}\", client_id: \"gw1-l{i:02}\", "
        f"clean_session: false, routes: [{{filter: \"telemetry/l{i:02}/#\"}}, {{filter: \"event/#\", qos: 1}}, "
        f"{{filter: \"t/+/l{i:02}/#\", topic: \"telemetry/{{1}}/{{#}}\"}}]}}"
        for i in range(args.links)) or "    {}"
    return f"""gateway: {{state_dir: {work / 'state'}, device_id: gw1, tenant_id: acme, log_level: info,
          shutdown_timeout: {args.shutdown_timeout}}}
broker:
  listeners: {{default: {{endpoint: "tcp:{ports['mqtt']}:interface=127.0.0.1"}}}}
  plugins: {{amqtt.plugins.authentication.AnonymousAuthPlugin: {{allow_anonymous: true}}}}
  max_offline_sessions: {max(1000, args.sessions)}
apps:
  programs:
{programs}
links:
  links:
{links}
ingest: {{endpoint: "tcp:{ports['ingest']}:interface=127.0.0.1"}}
telemetry: {{metrics_endpoint: "tcp:{ports['metrics']}:interface=127.0.0.1"}}
admin: {{tcp: "tcp:{ports['admin']}:interface=127.0.0.1"}}
"""


class Pinger(threading.Thread):
    """A client of the broker on ``port`` that sends a PINGREQ every 5 ms and notes the longest
    round trip: how long the gateway's event loop was held up in one turn (connecting again
    whenever its connection ends: a configuration change restarts the broker)."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port, self.done, self.longest, self.pings = port, threading.Event(), 0.0, 0

    def run(self) -> None:
        while not self.done.is_set():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=30) as sock:
                    sock.sendall(packets.connect("scale-pinger", 600, True))
                    sock.recv(4)
                    while not self.done.wait(0.005):
                        began = time.monotonic()
                        sock.sendall(b"\xc0\x00")
                        if len(sock.recv(2)) < 2:
                            break
                        self.longest = max(self.longest, time.monotonic() - began)
                        self.pings += 1
            except OSError:
                self.done.wait(0.01)

    def stop(self) -> dict[str, float]:
        """End it; the longest round trip (ms) and the pings answered."""
        self.done.set()
        self.join(60)
        return {"longest_ping_ms": self.longest * 1000, "pings": self.pings}


class Gateway:
    """The ``twistd gateway`` process, started and stopped with timings."""

    def __init__(self, work: Path, args: argparse.Namespace, mqtt_port: int) -> None:
        self.work, self.args, self.mqtt_port = work, args, mqtt_port
        self.log = work / "gateway.log"
        self.runs = 0
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> dict[str, float]:
        """Start it; wait for ``gateway started``; the seconds that took and the log lines it wrote."""
        offset = self.log.stat().st_size if self.log.exists() else 0
        self.runs += 1
        profile = []
        if self.args.profile:
            Path(self.args.profile).mkdir(parents=True, exist_ok=True)
            profile = ["--profiler=cprofile", "--savestats",
                       f"--profile={Path(self.args.profile).resolve() / f'run{self.runs}.pstats'}"]
        env = dict(os.environ, PYTHONPATH=str(Path(self.args.checkout).resolve()))
        began = time.monotonic()
        pinger = Pinger(self.mqtt_port)
        pinger.start()
        self.process = subprocess.Popen(
            [sys.executable, str(BIN / "twistd"), "--nodaemon", "--pidfile=", f"--logfile={self.log}", *profile,
             "gateway", "--config", str(self.work / "gateway.yaml")], cwd=self.work, env=env)
        while True:
            text = self.log.read_bytes()[offset:] if self.log.exists() else b""
            if b"gateway started" in text:
                seconds = time.monotonic() - began
                time.sleep(1)  # (what the start left to do once it says so)
                return {"seconds": seconds, "cpu_s": cpu_seconds(self.process.pid, self.work / "state"),
                        "log_lines": text.count(b"\n"), **pinger.stop()}
            if self.process.poll() is not None or time.monotonic() - began > 300:
                pinger.stop()
                raise RuntimeError(f"the gateway did not start: {text[-2000:].decode(errors='replace')}")
            time.sleep(0.02)

    def stop(self) -> float:
        """SIGTERM; the seconds until it exited."""
        assert self.process is not None
        began = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(120)
        return time.monotonic() - began


def cpu_seconds(pid: int, state: Path) -> float:
    """The CPU time (user and system) the gateway ``pid`` has used: a measure the other work
    on a shared machine moves less than wall time."""
    return float(counters(pid, state)["cpu"])  # type: ignore[arg-type]


def admin(port: int, token: str, path: str, body: dict[str, object] | None = None) -> tuple[float, int, bytes]:
    """One admin API request over TCP: seconds, status, body."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data,
                                     headers={"Authorization": f"Bearer {token}"})
    began = time.monotonic()
    with urllib.request.urlopen(request, timeout=120) as response:
        answer = response.read()
        return time.monotonic() - began, response.status, answer


async def session(port: int, index: int, filters: int, limit: asyncio.Semaphore) -> None:
    """A persistent session (CleanSession=0) with ``filters`` subscriptions, left offline."""
    async with limit:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        subscriptions = [(f"site/{index}/{n}/+/value" if n % 2 else f"site/{index}/{n}/#", 1) for n in range(filters)]
        writer.write(packets.connect(f"s{index:05}", 600, False) + packets.subscribe(1, subscriptions))
        await reader.readexactly(4 + 4 + filters)  # CONNACK, SUBACK
        writer.write(b"\xe0\x00")
        await writer.drain()
        writer.close()
        await writer.wait_closed()


async def publisher(port: int, messages: list[tuple[str, bytes, bool]]) -> None:
    """Publish ``messages`` (topic, payload, retain) at QoS 0 on one connection, then a PINGREQ
    round trip (the broker has taken them all)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(packets.connect("scale-publisher", 600, True))
    await reader.readexactly(4)
    for start in range(0, len(messages), 500):
        writer.write(b"".join(packets.publish(topic, payload, 0, retain=retain)
                              for topic, payload, retain in messages[start:start + 500]))
        await writer.drain()
    writer.write(b"\xc0\x00")
    await reader.readexactly(2)
    writer.write(b"\xe0\x00")
    writer.close()


async def load(port: int, args: argparse.Namespace) -> dict[str, float]:
    """Make the sessions, the retained topics and the twin's things; seconds each took."""
    timings = {}
    began = time.monotonic()
    limit = asyncio.Semaphore(CONCURRENCY)
    await asyncio.gather(*(session(port, i, args.filters, limit) for i in range(args.sessions)))
    timings["sessions"] = time.monotonic() - began
    began = time.monotonic()
    await publisher(port, [(f"retained/{i // 100}/{i}", b"%d" % i * 10, True) for i in range(args.retained)])
    timings["retained"] = time.monotonic() - began
    began = time.monotonic()
    creates = [("e", json.dumps({"topic": f"acme/gw1:thing{i}/things/twin/commands/create", "path": "/",
                                 "value": {"attributes": {"n": i, "site": "plant"},
                                           "features": {"temp": {"properties": {"value": 20.5}}}},
                                 "headers": {"response-required": False}}).encode(), False)
               for i in range(args.things)]
    await publisher(port, creates)
    timings["things"] = time.monotonic() - began
    return timings


def reads(gateway_pid: int, ports: dict[str, int], token: str, state: Path) -> dict[str, dict[str, float]]:
    """Each read's seconds and bytes: the admin API's, /metrics, ``gatewayctl status``."""
    result = {}
    for path in READS:
        seconds, status, body = admin(ports["admin"], token, path)
        result[f"GET {path}"] = {"seconds": seconds, "bytes": len(body), "status": status}
    began = time.monotonic()
    with urllib.request.urlopen(f"http://127.0.0.1:{ports['metrics']}/metrics", timeout=60) as response:
        body = response.read()
    result["/metrics"] = {"seconds": time.monotonic() - began, "bytes": len(body), "status": response.status}
    began = time.monotonic()
    out = subprocess.run([str(BIN / "gatewayctl"), "--socket", str(state / "run" / "admin.sock"), "status"],
                         capture_output=True, timeout=60)
    result["gatewayctl status"] = {"seconds": time.monotonic() - began, "bytes": len(out.stdout),
                                   "status": out.returncode}
    return result


def held(port: int, token: str) -> dict[str, object]:
    """What the gateway says it holds: twin things, broker sessions and retained messages."""
    twin = json.loads(admin(port, token, "/twin")[2])
    broker = json.loads(admin(port, token, "/broker")[2])
    return {"twin things": twin.get("things"),
            **{key: value for key, value in broker.items() if isinstance(value, (int, float)) and "session" in key
               or "retained" in key}}


def footprint(pid: int) -> dict[str, float]:
    """RSS (MiB), open descriptors, threads of ``pid``; its child processes."""
    rss = int(next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                   if line.startswith("VmRSS")).split()[1]) / 1024
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return {"rss_mib": rss, "fds": len(os.listdir(f"/proc/{pid}/fd")), "threads": len(os.listdir(f"/proc/{pid}/task")),
            "children": len(children)}


def quiet(pid: int, state: Path, seconds: float) -> dict[str, float]:
    """CPU seconds and voluntary context switches per second over ``seconds``."""
    before = counters(pid, state)
    time.sleep(seconds)
    after = counters(pid, state)
    return {"cpu_percent": 100 * (after["cpu"] - before["cpu"]) / seconds,  # type: ignore[operator]
            "wakeups_per_s": (after["switches"] - before["switches"]) / seconds}  # type: ignore[operator]


def run(args: argparse.Namespace, work: Path) -> dict[str, object]:
    """Every measurement, in order."""
    ports = {name: free_port() for name in ("mqtt", "cloud", "ingest", "metrics", "admin")}
    (work / "gateway.yaml").write_text(gateway_config(work, ports, args))
    cloud = start_mosquitto(ports["cloud"], work)
    gateway = Gateway(work, args, ports["mqtt"])
    result: dict[str, object] = {}
    try:
        wait_for_port(ports["cloud"])
        result["start (empty state)"] = gateway.start()
        assert gateway.process is not None
        pid, state = gateway.process.pid, work / "state"
        token = (state / "admin" / "token").read_text().strip()
        result["load"] = asyncio.run(load(ports["mqtt"], args))
        time.sleep(args.settle)
        result["footprint"] = footprint(pid)
        result["held"] = held(ports["admin"], token)
        result["reactor_lag_s after the load"] = json.loads(admin(ports["admin"], token, "/status")[2])["reactor_lag_s"]
        result["reads"] = reads(pid, ports, token, state)
        result["quiet"] = quiet(pid, state, args.idle)
        logs = list((state / "logs" / "apps").glob("*.log*"))
        result["app log files"] = len(logs)
        cpu = cpu_seconds(pid, state)
        pinger = Pinger(ports["mqtt"])
        pinger.start()
        seconds, status, body = admin(ports["admin"], token, "/config/apply",
                                      {"changes": {"telemetry.usage_report_interval": 1234}, "confirm_within": None})
        result["config change"] = {"seconds": seconds, "cpu_s": cpu_seconds(pid, state) - cpu, "status": status,
                                   "outcome": json.loads(body).get("outcome"),
                                   "reactor_lag_s": json.loads(admin(ports["admin"], token, "/status")[2])["reactor_lag_s"]}
        time.sleep(1)
        result["config change"].update(pinger.stop())
        time.sleep(args.settle)
        result["stop"] = {"seconds": gateway.stop(), "shutdown_timeout": args.shutdown_timeout}
        result["start (kept state)"] = gateway.start()
        pid = gateway.process.pid
        result["reactor_lag_s after the restart"] = json.loads(admin(ports["admin"], token, "/status")[2])["reactor_lag_s"]
        time.sleep(args.settle)
        result["footprint after restart"] = footprint(pid)
        result["reads after restart"] = reads(pid, ports, token, state)
        result["stop after restart"] = {"seconds": gateway.stop(), "shutdown_timeout": args.shutdown_timeout}
    finally:
        if gateway.process is not None and gateway.process.poll() is None:
            gateway.process.kill()
            gateway.process.wait()
        cloud.terminate()
        cloud.wait(30)
    return result


def table(result: dict[str, object]) -> None:
    """Print the results as a Markdown table."""
    print("\n| measurement | value |\n|---|---|")
    for key, value in result.items():
        if isinstance(value, dict) and all(isinstance(v, dict) for v in value.values()):
            for name, figures in value.items():
                print(f"| {key}: {name} | " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                                                       for k, v in figures.items()) + " |")
        elif isinstance(value, dict):
            print(f"| {key} | " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                                           for k, v in value.items()) + " |")
        else:
            print(f"| {key} | {value} |")


def main() -> int:
    """Run, print the table, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--programs", type=int, default=50)
    parser.add_argument("--links", type=int, default=20)
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--filters", type=int, default=10)
    parser.add_argument("--retained", type=int, default=5000)
    parser.add_argument("--things", type=int, default=500)
    parser.add_argument("--print-every", type=float, default=1.0, help="seconds between a program's lines")
    parser.add_argument("--log-bytes", type=int, default=1024, help="a program's log rotates at this size")
    parser.add_argument("--shutdown-timeout", type=float, default=4.0)
    parser.add_argument("--settle", type=float, default=5.0, help="seconds after the load before measuring")
    parser.add_argument("--idle", type=float, default=20.0, help="seconds of quiet measured")
    parser.add_argument("--profile", default="", help="a folder for twistd's cProfile stats, one file per run")
    parser.add_argument("--checkout", default=str(ROOT), help="run the gateway of this checkout (default: this one)")
    parser.add_argument("--work", default="", help="a folder to run in and keep (default: a temporary one)")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "scale.json"))
    args = parser.parse_args()
    if args.work:
        Path(args.work).mkdir(parents=True)
        result = run(args, Path(args.work))
    else:
        with tempfile.TemporaryDirectory(prefix="scale-") as tmp:
            result = run(args, Path(tmp))
    table(result)
    write_json(args.json, {"args": vars(args), "result": result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
