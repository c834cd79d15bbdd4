"""Flood: a local publisher floods a real gateway while its clouds are away, under each overflow policy.

For each policy (``drop-oldest``, ``reject-new``): a ``twistd gateway`` from this checkout with an
MQTT link (``cloud``, to a mosquitto not started yet) and an Exosite HTTP link (``murano``, to the
fake Exosite server, not started yet either), both streams limited to ``--max-bytes`` (so that
days of outage take seconds), telemetry reports every 5 s, the admin API and ``/metrics``. One
paho client publishes numbered messages as fast as it can (``--qos``, 50 in flight) for
``--flood`` seconds, optionally killing the gateway (``--kill SIGKILL`` or ``SIGTERM``) halfway
and starting it again. Then: the gateway's CPU over 5 s idle, RSS, descriptors and log lines;
the stream's counts (appended, lost by reason, kept); the clouds come back, a ``ping`` command is
sent from the cloud as soon as the link is up, and the bench follows both links until their
backlogs are sent: what the MQTT cloud got (in order? duplicates? every acknowledged message not
dropped by the policy?), how fast, and when the reply to the ping came.

    .venv/bin/python bench/flood.py [--flood 20] [--max-bytes 1048576] [--qos 1] [--kill SIGKILL]
"""

from __future__ import annotations

import argparse
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
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from broker import BIN, ROOT, free_port, wait_for_port, write_json  # noqa: E402
from soak import EXOSITE  # noqa: E402

DEVICE = "gw1"


def config(work: Path, ports: dict[str, int], policy: str, max_bytes: int) -> str:
    """Both links, small streams under ``policy``, reports every 5 s."""
    stream = f"{{segment_bytes: 65536, max_bytes: {max_bytes}, overflow: {policy}}}"
    return f"""gateway: {{state_dir: {work / 'state'}, device_id: {DEVICE}, tenant_id: acme, log_level: info}}
broker:
  listeners: {{default: {{endpoint: "tcp:{ports['mqtt']}:interface=127.0.0.1"}}}}
  plugins: {{amqtt.plugins.authentication.AnonymousAuthPlugin: {{allow_anonymous: true}}}}
links:
  links:
    cloud: {{endpoint: "tcp:host=127.0.0.1:port={ports['cloud']}", client_id: "{{device}}", clean_session: false,
             backoff_initial: 0.5, backoff_max: 2.0}}
http_links:
  links:
    murano: {{mode: exosite, url: "http://127.0.0.1:{ports['exosite']}", vendor: acme, model: box,
              serial: "{{device}}", routes: [{{filter: "telemetry/#", topic: "{{#}}"}}], backoff_max: 2.0}}
ingest: {{endpoint: "tcp:{ports['ingest']}:interface=127.0.0.1"}}
journal: {{streams: {{link-cloud: {stream}, link-murano: {stream}}}}}
telemetry:
  metrics_endpoint: "tcp:{ports['metrics']}:interface=127.0.0.1"
  usage_report_interval: 5
admin: {{tcp: "tcp:{ports['admin']}:interface=127.0.0.1"}}
"""


class Gateway:
    """The gateway process, its admin API and what /proc says of it."""

    def __init__(self, work: Path, ports: dict[str, int]) -> None:
        self.work, self.ports = work, ports
        self.process = self._start()
        self.token = (work / "state" / "admin" / "token").read_text().strip()

    def _start(self) -> subprocess.Popen[bytes]:
        process = subprocess.Popen([str(BIN / "twistd"), "--nodaemon", "--pidfile=", f"--logfile={self.work / 'gw.log'}",
                                    "gateway", "--config", str(self.work / "gateway.yaml")],
                                   cwd=self.work, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        wait_for_port(self.ports["admin"], 60)
        return process

    def restart_after(self, sig: signal.Signals) -> None:
        """Send ``sig``, wait for the end, start again."""
        self.process.send_signal(sig)
        self.process.wait()
        self.process = self._start()

    def admin(self, path: str) -> Any:
        """One admin API read."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.ports['admin']}{path}",
                                         headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.loads(answer.read())

    def cpu(self) -> float:
        """User + system CPU seconds so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def resources(self) -> dict[str, float]:
        """RSS (KiB), open descriptors, log lines."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
        return {"rss_kib": rss, "fds": len(os.listdir(f"/proc/{self.process.pid}/fd")),
                "log_lines": len((self.work / "gw.log").read_bytes().splitlines())}

    def stream(self, name: str) -> Any:
        """The journal's snapshot of one stream."""
        return next(x for x in self.admin("/journal")["streams"] if x["name"] == name)


class Flooder:
    """A paho client publishing numbered messages as fast as it may; remembers which were acknowledged."""

    def __init__(self, port: int, qos: int) -> None:
        self.port, self.qos = port, qos
        self.acked: set[int] = set()
        self.sent = self.disconnects = 0
        self._mids: dict[int, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="flooder", clean_session=False)
        client.max_inflight_messages_set(50)
        client.max_queued_messages_set(200)
        client.on_publish = self._published
        client.on_disconnect = lambda *_: setattr(self, "disconnects", self.disconnects + 1)
        client.reconnect_delay_set(0.2, 1)
        client.connect("127.0.0.1", self.port, 30)
        client.loop_start()
        n = 0
        while not self._stop.is_set():
            info = client.publish("telemetry/dev/flood", f"{n + 1:09d}".encode() + b"x" * 150, self.qos)
            if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
                time.sleep(0.001)
                continue
            n += 1
            with self._lock:
                self._mids[info.mid] = n
            self.sent = n
        time.sleep(1)
        client.disconnect()
        client.loop_stop()

    def _published(self, client: Any, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        with self._lock:
            n = self._mids.pop(mid, None)
        if n is not None:
            self.acked.add(n)

    def stop(self) -> None:
        """Stop publishing, disconnect."""
        self._stop.set()
        self._thread.join()


def run(policy: str, args: argparse.Namespace) -> dict[str, Any]:
    """One flood under ``policy``; the numbers."""
    work = Path(tempfile.mkdtemp(prefix=f"flood-{policy}-"))
    ports = {name: free_port() for name in ("mqtt", "cloud", "exosite", "metrics", "admin", "ingest")}
    (work / "gateway.yaml").write_text(config(work, ports, policy, args.max_bytes))
    gateway = Gateway(work, ports)
    out: dict[str, Any] = {"policy": policy, "start": gateway.resources()}
    flooder = Flooder(ports["mqtt"], args.qos)
    began, killed = time.monotonic(), not args.kill
    peak = 0.0
    while time.monotonic() - began < args.flood:
        time.sleep(1)
        peak = max(peak, gateway.resources()["rss_kib"])
        if not killed and time.monotonic() - began > args.flood / 2:
            gateway.restart_after(getattr(signal, args.kill))
            killed = True
    flooder.stop()
    before = gateway.cpu()
    time.sleep(5)
    out.update(idle_cpu_s=gateway.cpu() - before, after_flood=gateway.resources(), rss_peak_kib=peak,
               sent=flooder.sent, acked=len(flooder.acked), disconnects=flooder.disconnects)
    cloud = gateway.stream("link-cloud")
    out["stream"] = {k: cloud[k] for k in ("records", "appends", "losses", "refused_appends")}
    out["queue"] = subprocess.run([str(BIN / "gatewayctl"), "--socket", str(work / "state" / "run" / "admin.sock"),
                                   "queue"], capture_output=True, text=True,
                                  env=dict(os.environ, PYTHONPATH=str(ROOT))).stdout
    # the clouds come back
    (work / "cloud.conf").write_text(f"listener {ports['cloud']} 127.0.0.1\nallow_anonymous true\n"
                                     "max_queued_messages 0\n")
    exosite = subprocess.Popen([sys.executable, "-c", EXOSITE, str(ports["exosite"]), str(ROOT)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    got: list[tuple[float, str, bytes]] = []
    mosquitto = subprocess.Popen(["mosquitto", "-c", str(work / "cloud.conf")], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.STDOUT)
    wait_for_port(ports["cloud"])
    subscriber = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="cloud-side")
    subscriber.on_message = lambda c, u, m: got.append((time.monotonic(), m.topic, m.payload))
    subscriber.connect("127.0.0.1", ports["cloud"])
    subscriber.subscribe("#", 1)
    subscriber.loop_start()
    back = time.monotonic()
    while gateway.admin("/links")["links"][0]["state"] != "connected":
        time.sleep(0.05)
    out["link_up_after_s"] = time.monotonic() - back
    subscriber.publish(f"command//{DEVICE}/req/p1/ping", b"{}", 1)
    ping_at = time.monotonic()
    drained: dict[str, float] = {}
    while len(drained) < 2 and time.monotonic() - back < args.drain_timeout:
        time.sleep(0.5)
        for link in gateway.admin("/links")["links"]:
            if link["backlog"] == 0 and link["state"] == "connected":
                drained.setdefault(link["name"], time.monotonic() - back)
    out["drained_after_s"] = drained
    time.sleep(1)
    flood = [(t, int(payload[:9])) for t, topic, payload in got if topic.endswith("/flood")]
    numbers = [n for _, n in flood]
    replies = [t - ping_at for t, topic, _ in got if topic.startswith(f"command//{DEVICE}/res/p1/")]
    out["cloud"] = {
        "flood_messages": len(numbers), "out_of_order": sum(1 for a, b in zip(numbers, numbers[1:]) if b < a),
        "duplicates": len(numbers) - len(set(numbers)),
        "mqtt_drain_s": flood[-1][0] - flood[0][0] if flood else None,
        "ping_reply_after_s": replies[0] if replies else None,
        "own_messages": len([1 for _, topic, _ in got if "/gateway/" in topic])}
    lost = sum(x["records"] for x in cloud["losses"] if x["reason"] != "rejected")
    missing = flooder.acked - set(numbers)
    out["acked_missing"] = len(missing)
    out["acked_missing_beyond_drops"] = max(0, len(missing) - lost) if not args.kill else None
    out["oldest_first"] = not missing or max(missing) < min(set(numbers) or {0})
    out["links_after"] = [(x["name"], x["acked"], x["backlog"]) for x in gateway.admin("/links")["links"]]
    subscriber.loop_stop()
    gateway.process.terminate()
    gateway.process.wait(60)
    mosquitto.kill()
    exosite.kill()
    out["exit"] = gateway.process.returncode
    shutil.rmtree(work, ignore_errors=True)
    return out


def main() -> int:
    """Each policy in turn; a table and JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flood", type=float, default=20.0, help="seconds of flood")
    parser.add_argument("--max-bytes", type=int, default=1 << 20, help="the links' streams' max_bytes")
    parser.add_argument("--qos", type=int, default=1)
    parser.add_argument("--kill", choices=("SIGKILL", "SIGTERM"), help="kill the gateway halfway, start it again")
    parser.add_argument("--drain-timeout", type=float, default=120.0)
    parser.add_argument("--policies", default="drop-oldest,reject-new")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "flood.json"))
    args = parser.parse_args()
    if not shutil.which("mosquitto"):
        print("needs mosquitto", file=sys.stderr)
        return 2
    results = []
    for policy in args.policies.split(","):
        result = run(policy, args)
        results.append(result)
        print(f"\n{policy}")
        for key, value in result.items():
            print(f"  {key}: {value.rstrip() if isinstance(value, str) else json.dumps(value)}")
    write_json(args.json, {"command": " ".join(sys.argv), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
