"""Soak: a real ``twistd gateway`` with every feature on, in compressed time, while its clouds come and go.

Peers: mosquitto as the MQTT cloud (link ``cloud``), the Exosite fake server (HTTP link
``murano``, with a downlink), ministack as AWS IoT (link ``aws``, the twin's shadows over a
WebSocket), gooseBit behind nginx (fleet polling every 2 s), a small HTTP server taking
uploads. Load: local publishers at QoS 0/1/2, retained messages, persistent sessions that
connect, subscribe and leave, ingest writes, twin edits, remote commands (``ping``, ``report``,
``upload.trigger`` answered by an ``upload.start``), ``/metrics`` scraped, the admin API polled
and ``gatewayctl status`` run, a hosted program that exits every 20 s and is restarted. Reports
come every 5-20 s. Every ``--chaos-every`` seconds one cloud peer in turn is killed
(SIGKILL) and started again ``--down`` seconds later on the same port.

Every ``--sample-every`` seconds it records the gateway's RSS (and ``smaps_rollup``: Rss, Pss, Anonymous, Swap), the
CPU seconds it used so far, open descriptors (in all and
by kind: socket, pipe, each anon_inode, a file by its state dir folder), threads, the lines
and bytes of its log so far (and how many start a traceback or say ``Unhandled``), bytes and files
under its state dir (per top-level folder), and the admin API's numbers (flattened; a list
counts as its length). A ``PYTHONPATH`` given to the bench comes after the checkout's in the
gateway's (a probe's ``sitecustomize``, say). At the end: a table of each resource at start
and end with its growth per hour (from the second sample on: the first is start-up), the
progress of each activity in each quarter of the run (one at 0 in the last quarter has
stopped working), and JSON with every sample. The gateway runs from this checkout.

    .venv/bin/python bench/soak.py --minutes 35 [--chaos-every 180] [--down 20] [--sample-every 30] [--port-base N]
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import paho.mqtt.client as mqtt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from broker import BIN, ROOT, free_port, wait_for_port, write_json  # noqa: E402

sys.path.insert(0, str(ROOT))
import tests.fleet.goosebit as goosebit_module  # noqa: E402
from tests.fleet.goosebit import GooseBit, goosebit_available  # noqa: E402

TOOLS = ROOT / ".venv-tools" / "bin"
DEVICE = "gw1"
TOKEN = "soak-token"
#: What each activity counts (incremented by the load threads; reported per quarter).
progress: Counter[str] = Counter()
stop = threading.Event()

EXOSITE = """
import sys
from twisted.internet import reactor
from twisted.web.server import Site
sys.path.insert(0, sys.argv[2])
from tests.links.exositeserver import ExositeAPI
reactor.listenTCP(int(sys.argv[1]), Site(ExositeAPI(reactor, (("acme", "box", "gw1"),))), interface="127.0.0.1")
reactor.run()
"""


class Peer:
    """A cloud peer process restarted on demand with the same command line (same port)."""

    def __init__(self, name: str, port: int, start: Callable[[], subprocess.Popen[bytes]]) -> None:
        self.name, self.port, self._start = name, port, start
        self.process = start()
        self.kills = 0

    def kill(self) -> None:
        """SIGKILL it (its whole process group) and wait; counted in :attr:`kills`."""
        self.stop()
        self.kills += 1

    def stop(self) -> None:
        """SIGKILL it (its whole process group) and wait."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()

    def restart(self) -> None:
        """Start it again and wait for its port."""
        self.process = self._start()
        wait_for_port(self.port, 60)


def spawn(argv: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """A peer in its own process group (killed whole), its output appended to ``log``."""
    return subprocess.Popen(argv, stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env, cwd=cwd,
                            start_new_session=True)


def gateway_config(work: Path, ports: dict[str, int], goosebit_url: str) -> str:
    """Every feature on, intervals short."""
    state = work / "state"
    (work / "aws-credentials").write_text("[default]\naws_access_key_id = test\naws_secret_access_key = test\n")
    (work / "uploadme").mkdir(exist_ok=True)
    (work / "uploadme" / "data.bin").write_bytes(os.urandom(200_000))
    (work / "token").write_text(TOKEN + "\n")
    return f"""gateway: {{state_dir: {state}, device_id: {DEVICE}, tenant_id: acme, log_level: info}}
broker:
  listeners: {{default: {{endpoint: "tcp:{ports['mqtt']}:interface=127.0.0.1"}}}}
  plugins: {{amqtt.plugins.authentication.AnonymousAuthPlugin: {{allow_anonymous: true}}}}
apps:
  programs:
    flaky: {{command: "/bin/sh -c 'echo up; sleep 20; echo down; exit 3'", autorestart: true, startsecs: 1,
             stdout_logfile_maxbytes: 20000, stdout_logfile_backups: 2}}
  backoff_initial: 1.0
  backoff_max: 4.0
links:
  links:
    cloud: {{endpoint: "tcp:host=127.0.0.1:port={ports['cloud']}", client_id: "{{device}}", clean_session: false,
             backoff_initial: 0.5, backoff_max: 5.0}}
    aws:
      endpoint: "tcp:host=127.0.0.1:port={ports['ministack']}"
      clean_session: true
      backoff_initial: 0.5
      backoff_max: 5.0
      aws: {{websocket: true, credentials_file: "{work / 'aws-credentials'}", region: us-east-1,
             host: data-ats.iot.us-east-1.localhost}}
http_links:
  links:
    murano:
      mode: exosite
      url: "http://127.0.0.1:{ports['exosite']}"
      vendor: acme
      model: box
      serial: "{{device}}"
      routes: [{{filter: "telemetry/#", topic: "{{#}}"}}]
      downlink: [{{alias: report}}]
ingest: {{endpoint: "tcp:{ports['ingest']}:interface=127.0.0.1"}}
twin: {{shadow_link: aws, request_timeout: 5}}
journal: {{defaults: {{segment_bytes: 1048576, max_bytes: 16777216}}}}
telemetry:
  metrics_endpoint: "tcp:{ports['metrics']}:interface=127.0.0.1"
  device_info_interval: 20
  usage_report_interval: 5
  engine_report_interval: 15
  engine_report_min_interval: 2
admin: {{tcp: "tcp:{ports['admin']}:interface=127.0.0.1"}}
updates: {{download: {{allow_http: true}}}}
fleet: {{enabled: true, base_url: "{goosebit_url}", allow_http: true, tenant: DEFAULT, token_file: "{work / 'token'}",
         poll_interval: 2, min_poll_interval: 1}}
uploads: {{files: ["{work / 'uploadme' / '*.bin'}"], allow_http: true, idle_timeout: 20, retry_initial_delay: 1,
           retry_max_delay: 5}}
"""


def client(port: int, client_id: str = "", clean: bool = True, subscribe: list[tuple[str, int]] | None = None,
           on_message: Callable[..., None] | None = None) -> mqtt.Client:
    """A paho client connected (its network loop in a thread) to 127.0.0.1:``port``; it reconnects,
    and subscribes to ``subscribe`` at each connect."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean)
    if subscribe:
        c.on_connect = lambda c, *a: c.subscribe(subscribe)
    if on_message is not None:
        c.on_message = on_message
    c.reconnect_delay_set(1, 5)
    c.connect_async("127.0.0.1", port, keepalive=30)
    c.loop_start()
    return c


def every(seconds: float, action: Callable[[int], None], name: str) -> threading.Thread:
    """Run ``action(n)`` every ``seconds`` until the end; an error counts as ``<name> errors``."""
    def loop() -> None:
        n = 0
        while not stop.wait(seconds):
            n += 1
            try:
                action(n)
            except Exception as e:  # noqa: BLE001  (a soak goes on; the error is counted and kept)
                progress[f"{name} errors"] += 1
                progress[f"{name} error: {type(e).__name__}: {str(e)[:80]}"] += 1
    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    return thread


class UploadTarget(http.server.BaseHTTPRequestHandler):
    """Takes PUTs (the generic upload provider) and counts them."""

    def do_PUT(self) -> None:  # noqa: N802  (http.server's name)
        remaining = int(self.headers.get("Content-Length", 0))
        while remaining > 0:
            remaining -= len(self.rfile.read(min(remaining, 65536)))
        progress["uploads received"] += 1
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def admin_get(ports: dict[str, int], token: str, path: str) -> Any:
    """One admin API read."""
    request = urllib.request.Request(f"http://127.0.0.1:{ports['admin']}{path}",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


def flatten(prefix: str, value: Any, out: dict[str, float]) -> None:
    """Numbers of a JSON document by path; a list as its length (``path#``) and its items by index
    or by their ``name``."""
    if isinstance(value, bool) or "latency" in prefix or "cumulative" in prefix:
        return  # (histograms: many numbers that only grow, by design)
    if isinstance(value, (int, float)):
        out[prefix] = value
    elif isinstance(value, dict):
        for key, item in value.items():
            flatten(f"{prefix}.{key}", item, out)
    elif isinstance(value, list):
        out[prefix + "#"] = len(value)
        for i, item in enumerate(value):
            name = item.get("name", item.get("correlation_id", i)) if isinstance(item, dict) else i
            flatten(f"{prefix}[{name}]", item, out)


def disk(state: Path) -> dict[str, float]:
    """Bytes and files under the state dir, per top-level entry and in all."""
    out: dict[str, float] = {}
    total = files = 0
    for top in sorted(state.iterdir()):
        size = count = 0
        for path in [top] if top.is_file() else top.rglob("*"):
            try:
                if path.is_file() and not path.is_symlink():
                    size += path.stat().st_size
                    count += 1
            except OSError:
                continue
        out[f"disk {top.name} bytes"], out[f"disk {top.name} files"] = size, count
        total, files = total + size, files + count
    out["disk total bytes"], out["disk total files"] = total, files
    return out


def descriptors(pid: int) -> dict[str, float]:
    """Open descriptors in all and by kind (what ``/proc/PID/fd`` points at: socket, pipe, anon_inode:[eventpoll],
    a file by its folder under the state dir or else ``file``)."""
    kinds: Counter[str] = Counter()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(("socket:", "pipe:")):
            kinds[target.split(":")[0]] += 1
        elif target.startswith("anon_inode:"):
            kinds[target] += 1
        elif "/state/" in target:
            kinds["file state/" + target.split("/state/", 1)[1].split("/")[0]] += 1
        else:
            kinds["file"] += 1
    out: dict[str, float] = {"fds": sum(kinds.values())}
    out.update({f"fds {kind}": n for kind, n in kinds.items()})
    return out


def log_lines(work: Path) -> dict[str, float]:
    """Lines and bytes the gateway has logged so far (``gw.log`` and its rotated files) and the lines among them that
    start a traceback or say ``Unhandled`` (an error nobody handled)."""
    lines = tracebacks = unhandled = size = 0
    for path in work.glob("gw.log*"):
        try:
            text = path.read_bytes()
        except OSError:
            continue
        size += len(text)
        lines += text.count(b"\n")
        tracebacks += text.count(b"Traceback (most recent call last)")
        unhandled += text.count(b"Unhandled")
    return {"log lines": lines, "log bytes": size, "log tracebacks": tracebacks, "log unhandled": unhandled}


def memory_and_cpu(pid: int) -> dict[str, float]:
    """The process's memory from ``/proc/PID/smaps_rollup`` (KiB: ``Rss``, ``Pss``, ``Anonymous``, ``Swap``) and the
    CPU seconds it has used so far (user and system, from ``/proc/PID/stat``)."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss", "Anonymous", "Swap"):
            out[f"smaps {key} KiB"] = int(rest.split()[0])
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    out["cpu s"] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # (utime, stime: fields 14, 15)
    return out


def sample(pid: int, state: Path, ports: dict[str, int], token: str) -> dict[str, float]:
    """One sample of the process, its state dir and its admin API."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
    out: dict[str, float] = {"rss KiB": rss, "threads": len(os.listdir(f"/proc/{pid}/task"))}
    out.update(memory_and_cpu(pid))
    out.update(descriptors(pid))
    out.update(log_lines(state.parent))
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    out["child processes"] = len(children)
    out.update(disk(state))
    for path in ("/status", "/broker", "/links", "/journal", "/apps", "/operations", "/ingest", "/twin",
                 "/reports", "/uploads"):
        try:
            flatten(path, admin_get(ports, token, path), out)
        except Exception:  # noqa: BLE001
            progress["admin errors"] += 1
    return out


def start_load(work: Path, ports: dict[str, int], state: Path) -> None:
    """Every load and probe thread."""
    # the cloud side: counts what comes up, answers upload requests, sends commands
    replies: dict[str, int] = {}

    def on_cloud(c: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        topic = message.topic
        if topic.startswith(f"command//{DEVICE}/res/"):
            progress["command replies"] += 1
            status = topic.rsplit("/", 1)[1]
            replies[status] = replies.get(status, 0) + 1
            progress[f"command replies {status}"] += 1
        elif topic.endswith("gateway/uploads/request"):
            progress["upload requests"] += 1
            value = json.loads(message.payload).get("value", {})
            start = {"correlationId": value["correlationId"],
                     "options": {"https.url": f"http://127.0.0.1:{ports['upload']}/f", "https.method": "PUT"}}
            c.publish(f"command//{DEVICE}/req/start-{progress['upload requests']}/upload.start", json.dumps(start), 1)
        elif topic.startswith("telemetry/") and "/soak/" in topic:
            progress["cloud telemetry"] += 1
        elif "/gateway/" in topic:
            progress["cloud reports"] += 1

    cloud = client(ports["cloud"], "soak-cloud", True, [("#", 1)], on_cloud)

    # local publishers, QoS 0/1/2 (each reconnects; its own persistent session for QoS 1 and 2)
    publishers = [client(ports["mqtt"], f"pub{q}", clean=(q == 0)) for q in (0, 1, 2)]

    def publish(n: int) -> None:
        for qos, pub in enumerate(publishers):
            if pub.is_connected():
                info = pub.publish(f"telemetry/soak/q{qos}", f"{n} {time.time():.3f}", qos)
                if info.rc == mqtt.MQTT_ERR_SUCCESS:
                    progress[f"published q{qos}"] += 1
        if n % 8 == 0:
            publishers[1].publish(f"state/dev{n % 50}/door", f"open {n}", 1, retain=True)
            progress["retained"] += 1
    every(0.25, publish, "publish")

    # persistent sessions coming and going (a fixed set of ids: what they leave is bounded)
    def session(n: int) -> None:
        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"sess{n % 8}", clean_session=False)
        got = Counter[str]()
        sub.on_message = lambda c, u, m: got.update(["m"])
        sub.connect("127.0.0.1", ports["mqtt"], keepalive=30)
        sub.subscribe([("telemetry/soak/#", 1), ("state/#", 1)])
        sub.loop_start()
        stop.wait(3)
        sub.disconnect()
        sub.loop_stop()
        progress["sessions"] += 1
        progress["session messages"] += got["m"]
    every(5, session, "sessions")

    # a local subscriber that stays
    client(ports["mqtt"], "soak-local", True, [("edge/#", 1), ("command//+/res/#", 0)],
           lambda c, u, m: progress.update(["local edge messages"]))

    def ingest(n: int) -> None:
        urllib.request.urlopen(urllib.request.Request(
            f"http://127.0.0.1:{ports['ingest']}/onep:v1/stack/alias", data=f"temp={n}&hum={n % 100}".encode(),
            headers={"X-Exosite-VMS": "acme box sn1"}), timeout=30).read()
        progress["ingest writes"] += 1
    every(2, ingest, "ingest")

    twin = client(ports["mqtt"], "soak-twin", True, [("command///req//#", 0)],
                  lambda c, u, m: progress.update(["twin answers"]))

    def twin_edit(n: int) -> None:
        envelope = {"topic": "acme/gw1/things/twin/commands/modify", "path": f"/features/soak{n % 5}/properties/n",
                    "value": n, "headers": {"correlation-id": f"t{n}", "response-required": True}}
        twin.publish("e", json.dumps(envelope), 1)
        progress["twin edits"] += 1
    every(3, twin_edit, "twin")

    def command(n: int) -> None:
        name = ["ping", "apps", "report"][n % 3]
        body = {"name": "usage_report"} if name == "report" else {}
        cloud.publish(f"command//{DEVICE}/req/c{n}/{name}", json.dumps(body), 1)
        progress["commands sent"] += 1
        if n % 20 == 0:
            cloud.publish(f"command//{DEVICE}/req/u{n}/upload.trigger", json.dumps({"correlationId": f"soak-{n}"}), 1)
            progress["upload triggers"] += 1
    every(3, command, "commands")

    def metrics(n: int) -> None:
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['metrics']}/metrics", timeout=10) as answer:
            progress["metrics bytes"] += len(answer.read())
        progress["metrics scrapes"] += 1
    every(5, metrics, "metrics")

    def gatewayctl(n: int) -> None:
        subprocess.run([str(BIN / "gatewayctl"), "--socket", str(state / "run" / "admin.sock"), "status"],
                       check=True, capture_output=True, timeout=30, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        progress["gatewayctl status"] += 1
    every(15, gatewayctl, "gatewayctl")


def chaos(peers: list[Peer], period: float, down: float) -> None:
    """Every ``period`` s, one peer in turn is killed and ``down`` s later started again."""
    n = 0
    while not stop.wait(period):
        peer = peers[n % len(peers)]
        n += 1
        peer.kill()
        progress[f"killed {peer.name}"] += 1
        stop.wait(down)
        try:
            peer.restart()
        except Exception:  # noqa: BLE001
            progress[f"restart failed {peer.name}"] += 1


def report(samples: list[tuple[float, dict[str, float]]], quarters: list[dict[str, int]], minutes: float) -> dict[str, Any]:
    """Print the tables; return what the JSON keeps besides the samples."""
    (t0, first), (t1, last) = samples[1] if len(samples) > 2 else samples[0], samples[-1]
    hours = max((t1 - t0) / 3600, 1e-9)
    print(f"\nsoak of {minutes:.0f} min; growth per hour from sample 2 (t={t0:.0f} s) to the last (t={t1:.0f} s)\n")
    print(f"{'resource':<60} {'start':>12} {'end':>12} {'max':>12} {'per hour':>12}")
    growth: dict[str, dict[str, float]] = {}
    for key in last:
        if key not in first:
            continue
        top = max(s.get(key, 0) for _, s in samples)
        per_hour = (last[key] - first[key]) / hours
        growth[key] = {"start": first[key], "end": last[key], "max": top, "per_hour": per_hour}
        plain = key.split(".")[0] == key or key.startswith("disk")
        if plain or (key.endswith("#") and last[key] != first[key]):
            print(f"{key:<60} {first[key]:>12.0f} {last[key]:>12.0f} {top:>12.0f} {per_hour:>12.1f}")
    by_quarter = quarter_samples(samples)
    stalled = [key for key in sorted(last) if len(by_quarter) == 4 and all(
        q[-1].get(key, 0) > q[0].get(key, 0) for q in by_quarter[:3]) and by_quarter[3][-1].get(key) == by_quarter[3][0].get(key)]
    rising = [key for key in sorted(last) if len(by_quarter) == 4 and is_level(key) and all(
        q[-1].get(key, 0) > q[0].get(key, 0) for q in by_quarter)]
    print("\nadmin API numbers that rose in each of the first three quarters and not in the last (stopped?):")
    print("  " + ("\n  ".join(stalled) or "none"))
    print("\nlevels (sizes, counts of things held) that rose in every quarter (growing without bound?):")
    print("  " + ("\n  ".join(f"{key}: {first.get(key, 0):.0f} -> {last[key]:.0f}" for key in rising) or "none"))
    print("\nactivity per quarter of the run (0 in the last quarter: stopped working)\n")
    names = sorted({k for q in quarters for k in q})
    print(f"{'activity':<70} " + " ".join(f"{'Q' + str(i + 1):>8}" for i in range(len(quarters))))
    for name in names:
        print(f"{name[:70]:<70} " + " ".join(f"{q.get(name, 0):>8}" for q in quarters))
    return {"growth": growth, "quarters": quarters, "stalled": stalled, "rising": rising}


def quarter_samples(samples: list[tuple[float, dict[str, float]]]) -> list[list[dict[str, float]]]:
    """The samples in four groups by time, each group starting with the previous one's last sample."""
    if len(samples) < 5:
        return []
    end = samples[-1][0]
    groups: list[list[dict[str, float]]] = [[] for _ in range(4)]
    for t, values in samples:
        groups[min(3, int(4 * t / end))].append(values)
    for i in range(1, 4):
        if groups[i - 1]:
            groups[i].insert(0, groups[i - 1][-1])
    return [g for g in groups if len(g) >= 2] if all(len(g) >= 2 for g in groups) else []


def is_level(key: str) -> bool:  # noqa: N802
    """Whether a sampled number is a level (what is held now) rather than a counter of events."""
    words = ("#", "bytes", "files", "sessions", "subscriptions", "retained", "backlog", "records", "rss",
             "fds", "threads", "processes", "connections", "offline", "unacked", "queued", "pending")
    return any(key.endswith(w) or key.split(".")[-1].startswith(w) for w in words) and "since" not in key and \
        "_out" not in key and "_in" not in key and "bytes_up" not in key and "bytes_down" not in key


def main() -> int:
    """Start the peers and the gateway, load it for ``--minutes``, sample, print, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=35.0)
    parser.add_argument("--chaos-every", type=float, default=180.0, help="seconds between peer kills")
    parser.add_argument("--down", type=float, default=20.0, help="seconds a killed peer stays down")
    parser.add_argument("--sample-every", type=float, default=30.0)
    parser.add_argument("--keep", help="work in this directory (kept) instead of a temporary one")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "soak.json"))
    parser.add_argument("--port-base", type=int, help="the ten ports every server of the run listens on (gateway,"
                        " peers, upload target, gooseBit and its nginx) from this one up, instead of free ones")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # (the peers and the gateway are stopped on the way out)
    if not goosebit_available() or not (TOOLS / "ministack").exists():
        print("needs make tools (gooseBit, ministack), nginx and mosquitto", file=sys.stderr)
        return 2
    work = Path(args.keep or tempfile.mkdtemp(prefix="soak-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    fixed = iter(range(args.port_base, args.port_base + 10)) if args.port_base else None
    port = (lambda: next(fixed)) if fixed else free_port
    goosebit_module.free_port = port  # (gooseBit and its nginx take theirs from the same place)
    ports = {name: port() for name in ("mqtt", "cloud", "exosite", "ministack", "ingest", "metrics", "admin")}
    upload = http.server.ThreadingHTTPServer(("127.0.0.1", port() if fixed else 0), UploadTarget)
    ports["upload"] = upload.server_address[1]
    threading.Thread(target=upload.serve_forever, daemon=True).start()
    mosquitto_conf = work / "cloud.conf"
    mosquitto_conf.write_text(f"listener {ports['cloud']} 127.0.0.1\nallow_anonymous true\npersistence true\nuser root\n"
                              f"persistence_location {work}/\nautosave_interval 5\n")
    goosebit = GooseBit(work / "goosebit", rate="2m")
    goosebit.add_device(DEVICE, TOKEN)
    nginx_conf = work / "goosebit" / "nginx" / "nginx.conf"
    ministack_env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"),
                     "BIND_HOST": "127.0.0.1", "GATEWAY_PORT": str(ports["ministack"]), "IOT_MTLS_ENABLED": "0",
                     "LOG_LEVEL": "WARNING", "AUTH": "false"}
    peers = [
        Peer("mosquitto", ports["cloud"], lambda: spawn([shutil.which("mosquitto") or "mosquitto", "-c",
                                                         str(mosquitto_conf)], work / "cloud.log")),
        Peer("exosite", ports["exosite"], lambda: spawn([sys.executable, "-c", EXOSITE, str(ports["exosite"]),
                                                         str(ROOT)], work / "exosite.log")),
        Peer("ministack", ports["ministack"], lambda: spawn([str(TOOLS / "ministack")], work / "ministack.log",
                                                            ministack_env)),
    ]
    # gooseBit's nginx front (what the gateway polls) is the fleet peer that goes away
    assert goosebit.proxy is not None
    goosebit.proxy.kill()
    goosebit.proxy.wait()
    peers.append(Peer("goosebit-nginx", goosebit.proxy_port, lambda: spawn(
        ["nginx", "-c", str(nginx_conf), "-p", str(nginx_conf.parent)], work / "nginx.log")))
    for peer in peers:
        wait_for_port(peer.port, 60)
    (work / "gateway.yaml").write_text(gateway_config(work, ports, goosebit.url))
    # (a PYTHONPATH given to the bench comes after the checkout: a probe's sitecustomize, say)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    gateway = subprocess.Popen([str(BIN / "twistd"), "--nodaemon", "--pidfile=", f"--logfile={work / 'gw.log'}",
                                "gateway", "--config", str(work / "gateway.yaml")], cwd=work, env=env)
    samples: list[tuple[float, dict[str, float]]] = []
    quarters: list[dict[str, int]] = []
    try:
        wait_for_port(ports["admin"], 60)
        state = work / "state"
        token = (state / "admin" / "token").read_text().strip()
        start_load(work, ports, state)
        threading.Thread(target=chaos, args=(peers, args.chaos_every, args.down), daemon=True).start()
        began = time.monotonic()
        end = began + args.minutes * 60
        quarter_ends = [began + args.minutes * 60 * (i + 1) / 4 for i in range(4)]
        seen: Counter[str] = Counter()
        while time.monotonic() < end and gateway.poll() is None:
            now = time.monotonic()
            access = nginx_conf.parent / "access.log"
            progress["fleet requests (nginx)"] = len(access.read_bytes().splitlines()) if access.exists() else 0
            samples.append((now - began, sample(gateway.pid, state, ports, token)))
            last = samples[-1][1]
            print(f"t={now - began:6.0f}s rss={last['rss KiB']:.0f}KiB fds={last['fds']:.0f}"
                  f" threads={last['threads']:.0f} log={last['log lines']:.0f} disk={last['disk total bytes']:.0f}",
                  flush=True)
            if quarter_ends and now >= quarter_ends[0]:
                quarter_ends.pop(0)
                quarters.append(dict(progress - seen))
                seen = Counter(progress)
            time.sleep(max(0.0, min(args.sample_every, end - time.monotonic())))
        samples.append((time.monotonic() - began, sample(gateway.pid, state, ports, token)))
        quarters.append(dict(progress - seen))
    finally:
        stop.set()
        alive = gateway.poll() is None
        gateway.terminate()
        gateway.wait(90)
        for peer in peers:
            peer.stop()
        goosebit.stop()
        upload.shutdown()
    result = report(samples, quarters, args.minutes)
    result.update({"command": " ".join(sys.argv), "minutes": args.minutes, "gateway_alive_at_end": alive,
                   "gateway_exit": gateway.returncode, "kills": {p.name: p.kills for p in peers},
                   "progress": dict(progress), "samples": samples, "work": str(work)})
    write_json(args.json, result)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
