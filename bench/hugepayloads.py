"""Huge payloads: a hostile local client floods every topic the gateway reads with valid but
huge messages; what it costs the gateway and the clients beside it.

A real ``twistd gateway`` from this checkout (the broker, the twin, updates, uploads, reports,
the gateway's commands; no cloud link). For each case, a topic the gateway reads and a kind of
payload (``small``: a well-formed request, the baseline; ``string``: a JSON object holding one
string as long as the packet takes; ``keys``: a JSON object with as many keys as fit; ``nested``:
arrays nested as deep as fit; ``bytes``: no JSON at all), one client publishes ``--messages``
of them at QoS 1 as fast as it can (every PUBLISH written at once), up to ``--size`` bytes each
(the broker's ``max_packet_size`` less the topic). Meanwhile:

- a well-behaved client publishes QoS 1 messages to a topic it subscribes to, one after the
  other: its round trips (PUBLISH to the message coming back), p50, p99 and the longest;
  every message the broker acknowledged must come back (``lost``);
- a listener subscribed to every answer topic counts the gateway's answers;

and the gateway's peak resident set (``VmHWM``, reset before each case through
``/proc/<pid>/clear_refs``), its CPU seconds, and the lines its log grew by. Then ``--grow``
twin ``modify`` commands of values of about 1 MiB, each at a path of its own on the gateway's
thing: how large ``things.json`` grows.

    .venv/bin/python bench/hugepayloads.py [--messages 100] [--size 1048576] [--cases string,keys]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from broker import BIN, ROOT, free_port, wait_for_port, write_json  # noqa: E402
from checkpoint_load import status_mib  # noqa: E402
from retained_burst import connected, cpu_seconds  # noqa: E402

from gateway.mqtt import packets  # noqa: E402
from tests.broker.packets import parse_publish, split  # noqa: E402

DEVICE = "gw1"
#: The topics the gateway answers on (docs/topics.md).
ANSWERS = ["edge/thing/response", "edge/gateway/reports/error", "edge/gateway/uploads/+/response",
           "edge/gateway/updates/lastOperation", f"command//{DEVICE}/res/#", "command///req//#", "command//+/req//#"]
#: The topics the gateway reads, each with a small request that is well-formed.
TOPICS: dict[str, tuple[str, bytes]] = {
    "thing": ("edge/thing/request", b""),
    "report": ("edge/gateway/reports/request", b"nope"),
    "update": ("edge/gateway/updates/install", b'{"correlationId": "c1", "softwareModules": []}'),
    "upload": ("edge/gateway/uploads/trigger", b'{"correlationId": "u1", "options": {}}'),
    "command": (f"command//{DEVICE}/req/r1/config.get", b'{"key": "broker"}'),
    "twin": ("e/acme/gw1", b'{"topic": "acme/gw1/things/twin/commands/retrieve", "path": "/"}'),
}


def huge(kind: str, size: int) -> bytes:
    """A payload of about ``size`` bytes of ``kind`` (``string``, ``keys``, ``nested``, ``bytes``)."""
    if kind == "string":
        return b'{"correlationId": "c1", "x": "' + b"a" * (size - 40) + b'"}'
    if kind == "keys":
        keys = (size - 2) // 12
        return b"{" + b",".join(b'"%07d":0' % n for n in range(keys)) + b"}"
    if kind == "nested":
        return b"[" * (size // 2) + b"]" * (size // 2)
    return bytes(range(256)) * (size // 256)


class Pinger(threading.Thread):
    """A well-behaved client: QoS 1 round trips through the broker to itself."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.stop = threading.Event()
        self.trips: list[float] = []
        self.acked = 0
        self.lost = 0

    def run(self) -> None:
        with connected(self.port, "pinger") as sock:
            sock.settimeout(30)
            sock.sendall(packets.subscribe(1, [("bench/ok", 1)]))
            rest = b""
            n = 0
            while not self.stop.is_set():
                n = n % 60000 + 1
                sent = time.monotonic()
                sock.sendall(packets.publish("bench/ok", b"%d" % n, 1, False, n))
                got = acked = False
                try:
                    while not (got and acked):
                        parsed, rest = split(rest + sock.recv(1 << 16))
                        for first, body in parsed:
                            if first >> 4 == 4:
                                acked = True
                            elif first >> 4 == 3:
                                _, payload, _, pid, _, _ = parse_publish(first, body)
                                got = got or payload == b"%d" % n
                                if pid is not None:
                                    sock.sendall(packets.ack(packets.PUBACK, pid))
                except TimeoutError:
                    self.lost += acked and not got
                    return
                self.acked += 1
                self.trips.append(time.monotonic() - sent)
                time.sleep(0.005)


class Listener(threading.Thread):
    """Counts the gateway's answers."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.stop = threading.Event()
        self.answers = 0

    def run(self) -> None:
        with connected(self.port, "listener") as sock:
            sock.settimeout(0.2)
            sock.sendall(packets.subscribe(1, [(topic, 0) for topic in ANSWERS]))
            rest = b""
            while not self.stop.is_set():
                try:
                    data = sock.recv(1 << 20)
                except TimeoutError:
                    continue
                if not data:
                    return
                parsed, rest = split(rest + data)
                self.answers += sum(1 for first, _ in parsed if first >> 4 == 3)

    def reset(self) -> None:
        """Start counting again."""
        self.answers = 0


def flood(port: int, topic: str, payload: bytes, messages: int) -> float:
    """Publish ``messages`` copies at QoS 1 at once; seconds until every PUBACK came."""
    started = time.monotonic()
    with connected(port, "flooder") as sock:
        sock.settimeout(120)
        for n in range(1, messages + 1):
            sock.sendall(packets.publish(topic, payload, 1, False, n))
        acked, rest = 0, b""
        while acked < messages:
            data = sock.recv(1 << 16)
            if not data:
                raise ConnectionError(f"closed after {acked} PUBACKs")
            parsed, rest = split(rest + data)
            acked += sum(1 for first, _ in parsed if first >> 4 == 4)
    return time.monotonic() - started


def percentile(values: list[float], share: float) -> float:
    """The ``share`` percentile of ``values`` (0 when empty)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))] if ordered else 0.0


def run_case(port: int, pid: int, log: Path, listener: Listener, topic: str, payload: bytes,
             messages: int) -> dict[str, float]:
    """One flood, measured."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # (VmHWM from now on)
    lines, cpu = log.read_text(errors="replace").count("\n"), cpu_seconds(pid)
    listener.reset()
    pinger = Pinger(port)
    pinger.start()
    time.sleep(0.3)
    seconds = flood(port, topic, payload, messages)
    time.sleep(1.0)  # (the answers to the last ones)
    pinger.stop.set()
    pinger.join()
    return {"seconds": seconds, "peak_rss_mib": status_mib(pid, "VmHWM"), "rss_mib": status_mib(pid, "VmRSS"),
            "cpu_s": cpu_seconds(pid) - cpu, "log_lines": log.read_text(errors="replace").count("\n") - lines,
            "answers": listener.answers, "trips": len(pinger.trips),
            "p50_ms": percentile(pinger.trips, 0.5) * 1000, "p99_ms": percentile(pinger.trips, 0.99) * 1000,
            "max_ms": max(pinger.trips, default=0.0) * 1000, "lost": pinger.lost}


def twin_growth(port: int, pid: int, work: Path, listener: Listener, messages: int, size: int) -> dict[str, float]:
    """``messages`` twin ``modify`` commands, each of a value of about ``size`` bytes at a
    path of its own on the gateway's thing, at once: how large the thing and ``things.json``
    grow, and the gateway's peak resident set."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    listener.reset()
    started = time.monotonic()
    with connected(port, "grower") as sock:
        sock.settimeout(120)
        for n in range(1, messages + 1):
            envelope = (b'{"topic": "acme/gw1/things/twin/commands/modify", "path": "/attributes/a%d", "value": "' % n
                        + b"v" * size + b'"}')
            sock.sendall(packets.publish("e/acme/gw1", envelope, 1, False, n))
        acked, rest = 0, b""
        while acked < messages:
            parsed, rest = split(rest + sock.recv(1 << 16))
            acked += sum(1 for first, _ in parsed if first >> 4 == 4)
    time.sleep(2.0)  # (the writes and answers of the last ones)
    return {"seconds": time.monotonic() - started, "peak_rss_mib": status_mib(pid, "VmHWM"),
            "things_json_mib": (work / "state" / "twin" / "things.json").stat().st_size / (1 << 20),
            "answers": listener.answers}


def start(port: int, work: Path, max_packet: int) -> subprocess.Popen[bytes]:
    """``twistd gateway`` with its services on their defaults and no cloud link."""
    config = work / "gateway.yaml"
    config.write_text(
        f"gateway: {{state_dir: {work / 'state'}, device_id: {DEVICE}, tenant_id: acme, log_level: info}}\n"
        f"broker:\n  listeners: {{default: {{endpoint: 'tcp:{port}:interface=127.0.0.1'}}}}\n"
        f"  max_packet_size: {max_packet}\n"
        "  plugins: {amqtt.plugins.authentication.AnonymousAuthPlugin: {allow_anonymous: true}}\n"
        "telemetry: {metrics_endpoint: ''}\ningest: {enabled: false}\n")
    return subprocess.Popen([str(BIN / "twistd"), "--nodaemon", "--pidfile=", f"--logfile={work / 'gw.log'}",
                             "gateway", "--config", str(config)], cwd=work)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--size", type=int, default=1 << 20, help="the broker's max_packet_size")
    parser.add_argument("--topics", default=",".join(TOPICS))
    parser.add_argument("--cases", default="small,string,keys,nested,bytes")
    parser.add_argument("--grow", type=int, default=50, help="twin modifies of values of about 1 MiB")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "hugepayloads.json"))
    args = parser.parse_args()
    results: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as temp:
        work, port = Path(temp), free_port()
        process = start(port, work, args.size)
        try:
            wait_for_port(port, timeout=60)
            listener = Listener(port)
            listener.start()
            print(f"{'topic':8} {'case':7} {'s':>6} {'peakMiB':>8} {'cpu s':>6} {'lines':>6} {'answers':>7}"
                  f" {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'lost':>4}")
            for name in args.topics.split(","):
                topic, small = TOPICS[name]
                for case in args.cases.split(","):
                    payload = small if case == "small" else huge(case, args.size - len(topic) - 4)
                    row = run_case(port, process.pid, work / "gw.log", listener, topic, payload, args.messages)
                    results.append({"topic": name, "case": case, "bytes": len(payload), **row})
                    print(f"{name:8} {case:7} {row['seconds']:6.2f} {row['peak_rss_mib']:8.0f} {row['cpu_s']:6.2f}"
                          f" {row['log_lines']:6d} {row['answers']:7d} {row['p50_ms']:7.1f} {row['p99_ms']:7.1f}"
                          f" {row['max_ms']:7.0f} {row['lost']:4d}", flush=True)
            growth = twin_growth(port, process.pid, work, listener, args.grow, min(args.size, 1 << 20) - 1024)
            print(f"twin: {args.grow} modifies of {min(args.size, 1 << 20) >> 10} KiB values at paths of their own:"
                  f" things.json {growth['things_json_mib']:.1f} MiB, peak {growth['peak_rss_mib']:.0f} MiB,"
                  f" {growth['answers']} answers, {growth['seconds']:.1f} s")
            listener.stop.set()
        finally:
            process.terminate()
            process.wait()
    write_json(args.json, {"args": vars(args), "results": results, "twin_growth": growth})
    return 0


if __name__ == "__main__":
    sys.exit(main())
