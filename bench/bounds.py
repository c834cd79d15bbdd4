"""Bounds: a real ``twistd gateway`` driven until each of its tables keyed by outside input reaches its bound.

The soak (bench/soak.py) runs every feature for half an hour and finds nothing growing, but
it never names more than a few hundred topics, client ids or things, so it never reaches the
bounds of the tables a client fills by choosing a new name. This bench does, in minutes, one
phase after another, through real clients on 127.0.0.1 (ports 25400-25409):

- ``topics``: QoS 0 publishes to ``--topics`` distinct topics (the broker's route cache and
  the bus's match cache, 10,000 topics each; the links' route cache and the forwarder's topic
  cache, 4,096 each: the link ``cloud`` forwards them to a mosquitto), and retained messages on
  ``--retained`` distinct topics (``max_retained_messages``, 10,000);
- ``sessions``: ``--clients`` distinct client ids connecting once with a persistent session
  (``max_offline_sessions``, 1,000); each tenth asks one subscription more than
  ``max_subscriptions`` (per-client refusal counts, shown for 20 sessions at most), the first
  ``max_offline_sessions`` get queued QoS 1 messages past ``max_queued_messages`` (per-client
  drop counts, the same);
- ``ingest``: ``--serials`` distinct serials writing through the ingest with ``X-Exosite-VMS``
  (``ingest.max_devices``, 10,000), and ``--aliases`` distinct aliases written (the last values,
  10,000 aliases);
- ``twin``: more child things than ``twin.max_things`` (1,000), then ``--churn`` things each
  created and deleted (the deleted things' revisions kept, 10,000).

Then the phases again (``--rounds``, 3 in all), every name new: a table at its bound must not
take more memory, so RSS at the end of the later rounds against the first shows what is not
bounded.

Every ``--sample-every`` seconds it records the gateway's RSS, the tables' sizes as its admin
API shows them (the snapshots: nothing private) and ``/metrics``: its bytes and its series
(lines that are no comment). At the end: a table of what each table reached against its bound,
RSS at each phase's end, and JSON with every sample.

    .venv/bin/python bench/bounds.py [--topics 200000] [--clients 20000] [--serials 12000] [--aliases 12000]
                                     [--churn 12000] [--rounds 3] [--sample-every 5]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from broker import BIN, ROOT, wait_for_port, write_json  # noqa: E402

sys.path.insert(0, str(ROOT))
from gateway.mqtt.framing import PacketReader  # noqa: E402
from gateway.mqtt.packets import (  # noqa: E402
    CONNACK, DISCONNECT_PACKET, PINGREQ_PACKET, PINGRESP, PUBACK, SUBACK, SUBACK_FAILURE, Packet, connect, publish,
    subscribe,
)

PORTS = {"mqtt": 25400, "ingest": 25401, "metrics": 25402, "admin": 25403, "cloud": 25404}
MAX_SUBSCRIPTIONS = 10
MAX_QUEUED = 20


def gateway_config(work: Path) -> str:
    """The gateway of the bench: defaults but for small per-session bounds (reached sooner) and a
    forwarding link with a packet limit (so its forwarder caches topics)."""
    return f"""gateway: {{state_dir: {work / 'state'}, device_id: gw1, tenant_id: acme, log_level: info}}
broker:
  listeners: {{default: {{endpoint: "tcp:{PORTS['mqtt']}:interface=127.0.0.1"}}}}
  plugins: {{amqtt.plugins.authentication.AnonymousAuthPlugin: {{allow_anonymous: true}}}}
  max_subscriptions: {MAX_SUBSCRIPTIONS}
  max_queued_messages: {MAX_QUEUED}
links:
  links:
    cloud: {{endpoint: "tcp:host=127.0.0.1:port={PORTS['cloud']}", client_id: gw1, max_publish_bytes: 65536,
             routes: [{{filter: "telemetry/#", topic: "telemetry/acme/gw1/{{#}}", qos: 1}},
                      {{filter: "e/#", topic: "event/acme/gw1/{{#}}", qos: 1}}]}}
ingest: {{endpoint: "tcp:{PORTS['ingest']}:interface=127.0.0.1", topic: "telemetry/{{device}}/{{alias}}"}}
journal: {{defaults: {{segment_bytes: 1048576, max_bytes: 16777216}}}}
telemetry: {{metrics_endpoint: "tcp:{PORTS['metrics']}:interface=127.0.0.1"}}
admin: {{tcp: "tcp:{PORTS['admin']}:interface=127.0.0.1"}}
"""


class Client:
    """A bare MQTT 3.1.1 client on a blocking socket: what a flood of distinct names needs, and
    no more (paho's thread per client would cost more than the gateway)."""

    def __init__(self, client_id: str, clean: bool = True) -> None:
        self.sock = socket.create_connection(("127.0.0.1", PORTS["mqtt"]), timeout=60)
        self.reader = PacketReader()  # (the links' own: it splits what a server sends)
        self.packets: deque[Packet] = deque()
        self.sock.sendall(connect(client_id, 60, clean))
        self.wait_for(CONNACK)
        self.packet_id = 0

    def wait_for(self, packet_type: int) -> Packet:
        """The next packet of ``packet_type`` (those before it are passed over)."""
        while True:
            while not self.packets:
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError("closed by the gateway")
                self.packets.extend(self.reader.feed(data))
            packet = self.packets.popleft()
            if packet.packet_type == packet_type:
                return packet

    def next_id(self) -> int:
        self.packet_id = self.packet_id % 65535 + 1
        return self.packet_id

    def sync(self) -> None:
        """A PINGREQ answered: the gateway has read what was sent before it."""
        self.sock.sendall(PINGREQ_PACKET)
        self.wait_for(PINGRESP)

    def subscribe(self, filters: list[str]) -> bytes:
        """SUBSCRIBE ``filters`` at QoS 1; the SUBACK's return codes."""
        self.sock.sendall(subscribe(self.next_id(), [(f, 1) for f in filters]))
        return self.wait_for(SUBACK).body[2:]

    def publish_acked(self, topic: str, payload: bytes) -> None:
        """One QoS 1 PUBLISH, its PUBACK awaited."""
        self.sock.sendall(publish(topic, payload, 1, packet_id=self.next_id()))
        self.wait_for(PUBACK)

    def close(self) -> None:
        """DISCONNECT, and close."""
        try:
            self.sock.sendall(DISCONNECT_PACKET)
        finally:
            self.sock.close()


def phase_topics(run: int, topics: int, retained: int) -> dict[str, int]:
    """QoS 0 telemetry on ``topics`` distinct topics, then retained messages on ``retained``
    (names new in each ``run``)."""
    c = Client(f"bounds-topics-{run}")
    for i in range(topics):
        c.sock.sendall(publish(f"telemetry/r{run}d{i % 1000}/m{i}", b"1", 0))
        if i % 2000 == 1999:
            c.sync()  # (never more than 2,000 ahead of the gateway)
    for i in range(retained):
        c.sock.sendall(publish(f"state/r{run}/{i}", b"on", 0, retain=True))
        if i % 2000 == 1999:
            c.sync()
    c.sync()
    c.close()
    return {"topics published": topics, "retained topics published": retained}


def phase_sessions(run: int, clients: int, offline_bound: int, sample: Callable[[], None]) -> dict[str, int]:
    """``clients`` persistent sessions (client ids new in each ``run``), each connecting once;
    the first ``offline_bound`` get queued QoS 1 messages past ``max_queued_messages`` while
    offline (then ``sample()``), the later ones push them out."""
    refused = 0

    def one(i: int) -> int:
        c = Client(f"bounds-r{run}c{i}", clean=False)
        filters = ["q/all"] + ([f"q/{i}/{n}" for n in range(MAX_SUBSCRIPTIONS)] if i % 10 == 0 else [])
        codes = c.subscribe(filters)
        c.close()
        return codes.count(SUBACK_FAILURE)

    with ThreadPoolExecutor(8) as pool:
        refused += sum(pool.map(one, range(offline_bound)))
        publisher = Client(f"bounds-queue-{run}")
        for n in range(MAX_QUEUED + 5):
            publisher.publish_acked("q/all", b"queued %d" % n)
        publisher.close()
        sample()
        refused += sum(pool.map(one, range(offline_bound, clients)))
    return {"client ids connected": clients, "subscriptions refused (SUBACK 0x80)": refused}


def phase_ingest(run: int, serials: int, aliases: int) -> dict[str, int]:
    """One write per serial, each naming a new serial by ``X-Exosite-VMS``; then ``aliases``
    new aliases written with a CIK, 200 a write (names new in each ``run``)."""
    answers: dict[str, int] = {}
    lock = threading.Lock()
    form = {"Content-Type": "application/x-www-form-urlencoded"}

    def post(conn: http.client.HTTPConnection, what: str, body: str, headers: dict[str, str]) -> None:
        conn.request("POST", "/onep:v1/stack/alias", body=body, headers=dict(form, **headers))
        response = conn.getresponse()
        response.read()
        with lock:
            key = f"{what} answered {response.status}"
            answers[key] = answers.get(key, 0) + 1

    def batch(start: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", PORTS["ingest"], timeout=60)
        for i in range(start, serials, 8):
            post(conn, "activations", "v=1", {"X-Exosite-VMS": f"acme box r{run}sn{i}"})
        for i in range(start * 200, aliases, 8 * 200):
            post(conn, "alias writes", "&".join(f"r{run}a{n}=1" for n in range(i, min(i + 200, aliases))),
                 {"X-Exosite-CIK": "c" * 40})
        conn.close()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(batch, range(8)))
    return dict(sorted(answers.items()))


def twin_command(action: str, thing: str, value: Any = None) -> bytes:
    """A Ditto command of the twin (acme:gw1's child ``thing``) as the payload of a publish on ``e``."""
    command: dict[str, Any] = {"topic": f"acme/gw1:{thing}/things/twin/commands/{action}", "path": "/"}
    if value is not None:
        command["value"] = value
    return json.dumps(command).encode()


def phase_twin(run: int, things: int, churn: int, side: Callable[[str], Any], sample: Callable[[], None]) -> dict[str, int]:
    """``things`` child things created (more than max_things; then ``sample()``), all deleted,
    then ``churn`` things each created and deleted (names new in each ``run``)."""
    c = Client(f"bounds-twin-{run}")

    def settle() -> None:
        c.sync()
        for _ in range(600):  # (the twin's writes batch what arrives while one runs)
            before = side("/twin")
            time.sleep(0.5)
            if side("/twin") == before:
                return

    for i in range(things):
        c.sock.sendall(publish("e", twin_command("create", f"r{run}t{i}", {"attributes": {"n": i}}), 0))
    settle()
    sample()
    for i in range(things):
        c.sock.sendall(publish("e", twin_command("delete", f"r{run}t{i}"), 0))
    settle()
    for i in range(churn):
        c.sock.sendall(publish("e", twin_command("create", f"r{run}u{i}", {"attributes": {"n": i}}), 0))
        c.sock.sendall(publish("e", twin_command("delete", f"r{run}u{i}"), 0))
        if i % 500 == 499:
            c.sync()
    settle()
    c.close()
    return {"twin things created": things + churn, "twin things deleted": things + churn}


def metrics() -> dict[str, float]:
    """/metrics: its bytes, its series, and each gauge or counter named in :data:`TABLES`."""
    with urllib.request.urlopen(f"http://127.0.0.1:{PORTS['metrics']}/metrics", timeout=30) as answer:
        text = answer.read().decode()
    series = [line for line in text.splitlines() if line and not line.startswith("#")]
    out: dict[str, float] = {"metrics bytes": len(text), "metrics series": len(series)}
    for line in series:
        name = line.split("{")[0].split(" ")[0]
        if name in METRICS_COUNTED:
            out[f"metrics {name}"] = out.get(f"metrics {name}", 0) + 1
    return out


#: Metric families labelled by something a client chooses: their series are counted.
METRICS_COUNTED = ("gateway_broker_client_queue_dropped_messages_total", "gateway_broker_client_subscriptions_refused_total")

#: Each table: (name, how a sample shows its size, its bound).
TABLES: list[tuple[str, Callable[[dict[str, Any]], Any], str]] = [
    ("broker route cache", lambda s: s["/broker"]["route_cache"], "10000"),
    ("bus match cache", lambda s: s["/broker"]["bus_cache"], "10000"),
    ("links route cache", lambda s: s["/links"]["route_cache"], "4096"),
    ("link cloud topic cache", lambda s: s["/links"]["links"][0]["topic_cache"], "4096"),
    ("link cloud records in memory", lambda s: s["/links"]["links"][0]["pending"], "10000 live + a read + window"),
    ("link cloud stream records", lambda s: next(st["records"] for st in s["/journal"]["streams"]
                                                 if st["name"] == "link-cloud"), "max_bytes 16 MiB"),
    ("broker retained topics", lambda s: s["/broker"]["retained"], "max_retained_messages 10000"),
    ("broker offline sessions", lambda s: s["/broker"]["offline_sessions"], "max_offline_sessions 1000"),
    ("broker sessions", lambda s: s["/broker"]["sessions"], "max_offline_sessions + connected"),
    ("broker subscriptions", lambda s: s["/broker"]["subscriptions"], f"sessions x max_subscriptions {MAX_SUBSCRIPTIONS}"),
    ("snapshot dropping_clients", lambda s: len(s["/broker"]["dropping_clients"]), "20"),
    ("snapshot capped_clients", lambda s: len(s["/broker"]["capped_clients"]), "20"),
    ("metrics client_id series (drops)",
     lambda s: s["metrics"].get("metrics gateway_broker_client_queue_dropped_messages_total", 0), "2 x 20"),
    ("metrics client_id series (refusals)",
     lambda s: s["metrics"].get("metrics gateway_broker_client_subscriptions_refused_total", 0), "20"),
    ("ingest devices", lambda s: s["/ingest"].get("devices"), "ingest.max_devices 10000"),
    ("ingest last values (aliases)", lambda s: s["/ingest"]["aliases"], "10000 (and 16 MiB)"),
    ("twin things", lambda s: s["/twin"]["things"], "twin.max_things 1000"),
    ("twin things refused", lambda s: s["/twin"].get("things_refused"), "(a counter)"),
    ("journal streams", lambda s: len(s["/journal"]["streams"]), "configured streams"),
    ("/metrics series", lambda s: s["metrics"]["metrics series"], ""),
    ("/metrics bytes", lambda s: s["metrics"]["metrics bytes"], ""),
    ("RSS KiB", lambda s: s["rss KiB"], ""),
]


def main() -> int:
    """Start mosquitto and the gateway, run each phase, sample, print, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topics", type=int, default=200_000)
    parser.add_argument("--retained", type=int, default=15_000)
    parser.add_argument("--clients", type=int, default=20_000)
    parser.add_argument("--serials", type=int, default=12_000)
    parser.add_argument("--aliases", type=int, default=12_000)
    parser.add_argument("--things", type=int, default=1_100)
    parser.add_argument("--churn", type=int, default=12_000)
    parser.add_argument("--rounds", type=int, default=3, help="each phase again with new names: memory must not grow")
    parser.add_argument("--sample-every", type=float, default=5.0)
    parser.add_argument("--keep", help="work in this directory (kept) instead of a temporary one")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "bounds.json"))
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # (mosquitto and the gateway are stopped on the way out)
    work = Path(args.keep or tempfile.mkdtemp(prefix="bounds-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    (work / "cloud.conf").write_text(f"listener {PORTS['cloud']} 127.0.0.1\nallow_anonymous true\n")
    cloud = subprocess.Popen([shutil.which("mosquitto") or "mosquitto", "-c", str(work / "cloud.conf")],
                             stdout=(work / "cloud.log").open("ab"), stderr=subprocess.STDOUT)
    (work / "gateway.yaml").write_text(gateway_config(work))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    gateway = subprocess.Popen([str(BIN / "twistd"), "--nodaemon", "--pidfile=", f"--logfile={work / 'gw.log'}",
                                "gateway", "--config", str(work / "gateway.yaml")], cwd=work, env=env)
    samples: list[dict[str, Any]] = []
    phases: list[dict[str, Any]] = []
    done = threading.Event()
    try:
        wait_for_port(PORTS["cloud"], 30)
        wait_for_port(PORTS["admin"], 60)
        token = (work / "state" / "admin" / "token").read_text().strip()

        def side(path: str) -> Any:
            request = urllib.request.Request(f"http://127.0.0.1:{PORTS['admin']}{path}",
                                             headers={"Authorization": f"Bearer {token}"})
            with urllib.request.urlopen(request, timeout=30) as answer:
                return json.loads(answer.read())

        began = time.monotonic()
        phase_now = ["start"]

        def take() -> dict[str, Any]:
            status = Path(f"/proc/{gateway.pid}/status").read_text()
            rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
            sample: dict[str, Any] = {"t": round(time.monotonic() - began, 1), "phase": phase_now[0], "rss KiB": rss}
            for path in ("/broker", "/links", "/ingest", "/twin", "/journal"):
                sample[path] = side(path)
            sample["metrics"] = metrics()
            return sample

        def sampler() -> None:
            while not done.wait(args.sample_every):
                try:
                    samples.append(take())
                    last = samples[-1]
                    print(f"t={last['t']:6.0f}s {last['phase']:11} rss={last['rss KiB']}KiB"
                          f" series={last['metrics']['metrics series']}", flush=True)
                except Exception as e:  # noqa: BLE001  (a sample lost is said, the run goes on)
                    print(f"sample failed: {e!r}", flush=True)

        samples.append(take())
        threading.Thread(target=sampler, daemon=True).start()
        steps: list[tuple[str, Callable[[int], dict[str, int]]]] = [
            ("topics", lambda run: phase_topics(run, args.topics, args.retained)),
            ("sessions", lambda run: phase_sessions(run, args.clients, 1000, lambda: samples.append(take()))),
            ("ingest", lambda run: phase_ingest(run, args.serials, args.aliases)),
            ("twin", lambda run: phase_twin(run, args.things, args.churn, side, lambda: samples.append(take()))),
        ]
        for run in range(1, args.rounds + 1):
            for name, step in steps:
                phase_now[0] = f"{name}.{run}"
                start = time.monotonic()
                done_counts = step(run)
                end_sample = take()
                samples.append(end_sample)
                phases.append({"phase": phase_now[0], "seconds": round(time.monotonic() - start, 1),
                               "load": done_counts, "rss KiB at end": end_sample["rss KiB"]})
                print(f"{phase_now[0]}: {phases[-1]['seconds']} s, {done_counts}, rss {end_sample['rss KiB']} KiB",
                      flush=True)
        done.set()
        alive = gateway.poll() is None
    finally:
        done.set()
        gateway.terminate()
        gateway.wait(90)
        cloud.terminate()
        cloud.wait(30)
    print(f"\n{'table':38} {'start':>9} {'most':>9} {'end':>9}  bound")
    reached = {}
    for name, size, bound in TABLES:
        values = []
        for s in samples:
            try:
                values.append(size(s))
            except (KeyError, TypeError):
                values.append(None)
        seen = [v for v in values if v is not None]
        reached[name] = {"start": values[0], "most": max(seen) if seen else None, "end": values[-1], "bound": bound}
        print(f"{name:38} {values[0]!s:>9} {reached[name]['most']!s:>9} {values[-1]!s:>9}  {bound}")
    print(f"\n{'phase':12} {'seconds':>8} {'RSS KiB at end':>15}  load")
    for p in phases:
        print(f"{p['phase']:12} {p['seconds']:>8} {p['rss KiB at end']:>15}  {p['load']}")
    log = (work / "gw.log").read_text(errors="replace")
    result = {"command": " ".join(sys.argv), "gateway_alive_at_end": alive, "gateway_exit": gateway.returncode,
              "log tracebacks": log.count("Traceback (most recent call last)"), "tables": reached, "phases": phases,
              "rss": [(s["t"], s["phase"], s["rss KiB"]) for s in samples], "samples": samples, "work": str(work)}
    print(f"\ngateway alive at the end: {alive}; tracebacks in its log: {result['log tracebacks']}")
    write_json(args.json, result)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
