"""Broker throughput: our broker vs standalone amqtt vs mosquitto, in one run.

1 publisher -> 1 subscriber, 64-byte payloads, QoS 0 and QoS 1, with the C clients
(``mosquitto_pub -l`` / ``mosquitto_sub -C``) so the client is not the bottleneck. Each
broker runs as its own process on 127.0.0.1. Prints msg/s and the ratios; writes JSON.

    .venv/bin/python bench/broker.py [--messages 20000] [--repeat 3] [--cases live,retained,offline]

Cases: ``live`` (the default) delivers to a connected subscriber; ``retained`` is the same
with every message retained (each one a state change the gateway makes durable before its
PUBACK); ``offline`` publishes to a persistent session (``-c``) whose client is offline,
timed until the publisher has every PUBACK, then checks the subscriber gets them all.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PAYLOAD = b"x" * 64


def write_json(path: str, data: object) -> None:
    """Write a benchmark's results to ``path`` as JSON (creating its folder) and say where."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=2))
    print(f"\nJSON: {path}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    """Wait until something accepts connections on ``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout} s")


def stop_all(procs: list[subprocess.Popen[bytes]], timeout: float = 30.0) -> None:
    """SIGTERM each of ``procs``; one still running ``timeout`` seconds later is said on stderr
    (a hang at stop is a finding) and killed, so no process outlives the benchmark."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            print(f"pid {proc.pid} ({' '.join(map(str, proc.args[:3]))} ...) did not stop within {timeout:.0f} s "
                  "of SIGTERM: killed", file=sys.stderr)
            proc.kill()
            proc.wait()


def start_gateway(port: int, work: Path) -> subprocess.Popen[bytes]:
    """Our broker: ``twistd gateway`` with anonymous local access and nothing else."""
    config = work / "gateway.yaml"
    config.write_text(
        f"gateway:\n  state_dir: {work / 'state'}\n  log_level: warn\n"
        f"broker:\n  listeners:\n    default:\n      endpoint: 'tcp:{port}:interface=127.0.0.1'\n"
        "  plugins:\n    amqtt.plugins.authentication.AnonymousAuthPlugin: {allow_anonymous: true}\n"
        "  max_queued_messages: 1000000\n  max_queued_bytes: 1000000000\n"
        "ingest:\n  enabled: false\ntelemetry:\n  metrics_endpoint: ''\n")
    return subprocess.Popen([str(BIN / "twistd"), "--nodaemon", "--pidfile=", f"--logfile={work / 'gw.log'}",
                             "gateway", "--config", str(config)], cwd=work)


def start_amqtt(port: int, work: Path) -> subprocess.Popen[bytes]:
    """Standalone amqtt (same version, its own asyncio loop and sockets), same plugins as ours."""
    config = work / "amqtt.yaml"
    config.write_text(
        f"listeners:\n  default:\n    type: tcp\n    bind: 127.0.0.1:{port}\n"
        "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin: {allow_anonymous: true}\n")
    return subprocess.Popen([str(BIN / "amqtt"), "-c", str(config)], cwd=work,
                            stdout=subprocess.DEVNULL, stderr=open(work / "amqtt.log", "wb"))


def start_mosquitto(port: int, work: Path) -> subprocess.Popen[bytes]:
    """mosquitto, the C broker, as the reference."""
    config = work / "mosquitto.conf"
    config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                      "max_queued_messages 0\nmax_inflight_messages 0\n")
    return subprocess.Popen([shutil.which("mosquitto") or "mosquitto", "-c", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run_once(port: int, qos: int, messages: int, case: str = "live") -> dict[str, float]:
    """Publish ``messages`` to the broker on ``port``; time until the subscriber has them all."""
    if case == "offline":
        return run_offline(port, qos, messages)
    topic = f"bench/{time.monotonic_ns()}"
    # The subscriber writes to a file, not a pipe nobody reads while the publisher runs: a full
    # pipe would stall it, and a broker that bounds unacknowledged QoS 1 messages would wait.
    output = tempfile.TemporaryFile()
    sub = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-t", topic, "-q", str(qos),
                            "-C", str(messages), "-W", "120"], stdout=output)
    time.sleep(0.5)  # let the subscription settle before the clock starts
    lines = (PAYLOAD + b"\n") * messages
    started = time.perf_counter()
    pub = subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-t", topic, "-q", str(qos),
                          "-l"] + (["-r"] if case == "retained" else []), input=lines, capture_output=True,
                         timeout=180)
    sub.wait(timeout=180)
    elapsed = time.perf_counter() - started
    output.seek(0)
    received = output.read().count(b"\n")
    if pub.returncode != 0:
        raise RuntimeError(f"mosquitto_pub failed: {pub.stderr.decode()}")
    return {"elapsed_s": elapsed, "received": received, "msg_per_s": received / elapsed}


def run_offline(port: int, qos: int, messages: int) -> dict[str, float]:
    """Subscribe a persistent session and leave; time the publisher until every PUBACK is in;
    then the subscriber comes back for what was queued."""
    topic = f"bench/{time.monotonic_ns()}"
    client_id = f"bench-offline-{time.monotonic_ns()}"
    subscribe = ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-t", topic, "-q", str(qos), "-c",
                 "-i", client_id]
    subprocess.run(subscribe + ["-E"], check=True, capture_output=True, timeout=30)
    lines = (PAYLOAD + b"\n") * messages
    started = time.perf_counter()
    pub = subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-t", topic, "-q", str(qos),
                          "-l"], input=lines, capture_output=True, timeout=180)
    elapsed = time.perf_counter() - started
    if pub.returncode != 0:
        raise RuntimeError(f"mosquitto_pub failed: {pub.stderr.decode()}")
    output = tempfile.TemporaryFile()
    subprocess.run(subscribe + ["-C", str(messages), "-W", "60"], stdout=output, timeout=120)
    output.seek(0)
    received = output.read().count(b"\n")
    return {"elapsed_s": elapsed, "received": received, "msg_per_s": messages / elapsed}


def measure(name: str, start: Callable[[int, Path], subprocess.Popen[bytes]], qos: int, messages: int,
            repeat: int, case: str = "live") -> dict[str, float]:
    """Start a broker, run the workload ``repeat`` times, stop it; keep the median rate."""
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        proc = start(port, Path(tmp))
        try:
            wait_for_port(port)
            time.sleep(0.3)
            runs = [run_once(port, qos, messages, case) for _ in range(repeat)]
        finally:
            proc.terminate()
            proc.wait(timeout=20)
    rates = [r["msg_per_s"] for r in runs]
    return {"broker": name, "case": case, "qos": qos, "messages": messages, "msg_per_s": statistics.median(rates),
            "runs": runs, "lost": sum(messages - r["received"] for r in runs)}


def main() -> int:
    """Run the comparison and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "broker.json"))
    parser.add_argument("--cases", default="live", help="comma-separated: live, retained, offline")
    args = parser.parse_args()
    cases = [c for c in args.cases.split(",") if c]
    unknown = set(cases) - {"live", "retained", "offline"}
    if unknown:
        parser.error(f"unknown cases: {', '.join(sorted(unknown))}")
    brokers: list[tuple[str, Callable[[int, Path], subprocess.Popen[bytes]]]] = [
        ("gateway", start_gateway), ("amqtt", start_amqtt)]
    if shutil.which("mosquitto"):
        brokers.append(("mosquitto", start_mosquitto))
    else:
        print("mosquitto not installed: apt-get install mosquitto (compared without it)")
    # QoS 0 is neither retained durably nor queued offline: those cases run at QoS 1.
    runs = [(case, qos) for case in cases for qos in ((0, 1) if case == "live" else (1,))]
    # Standalone amqtt only in the live case (the reference for the rewrite, not for persistence).
    results = [measure(name, start, qos, args.messages, args.repeat, case)
               for case, qos in runs for name, start in brokers if case == "live" or name != "amqtt"]
    print(f"\n{'case':<9} {'QoS':>3}  {'broker':<10} {'msg/s':>10} {'lost':>6} {'gateway/this':>13}")
    for case, qos in runs:
        group = [r for r in results if r["qos"] == qos and r["case"] == case]
        ours = next(r for r in group if r["broker"] == "gateway")["msg_per_s"]
        for r in group:
            print(f"{case:<9} {qos:>3}  {r['broker']:<10} {r['msg_per_s']:>10.0f} {r['lost']:>6}"
                  f" {ours / r['msg_per_s']:>13.2f}")
    write_json(args.json, {"messages": args.messages, "repeat": args.repeat, "cases": cases, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
