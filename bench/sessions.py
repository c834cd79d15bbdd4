"""Memory after clients leave: RSS of our broker and mosquitto through two waves of clients.

1. ``--idle`` clients (default 5,000) connect (CleanSession=1, each with a new client id),
   subscribe to a topic of their own and stay; then they all disconnect.
2. ``--cycles`` clients (default 6,000) connect once each with a new client id and
   CleanSession=0, subscribe, and disconnect: each leaves an offline persistent session
   (ours keeps at most ``max_offline_sessions``, 1,000 by default; mosquitto keeps all).

RSS is read at the start, with every idle client connected, after they left, and after
the cycles (each after ``--settle`` s). The table shows each broker's RSS and the
growth over the start; the ratio is ours over mosquitto.

    .venv/bin/python bench/sessions.py [--idle 5000] [--cycles 6000] [--settle 3]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Awaitable, Callable

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from broker import BIN, ROOT, free_port, wait_for_port, write_json  # noqa: E402

from gateway.mqtt import packets  # noqa: E402  (the gateway's one MQTT codec)

#: Connections opened at once while a wave runs.
CONCURRENCY = 200


def start_ours(port: int, work: Path, broker_keys: str = "") -> subprocess.Popen[bytes]:
    """``twistd gateway``: the broker with anonymous local access, no telemetry, no ingest.

    :param broker_keys: more lines of its ``broker:`` section (YAML, indented by two spaces).
    """
    config = work / "gateway.yaml"
    config.write_text(
        f"gateway:\n  state_dir: {work / 'state'}\n  log_level: warn\n"
        f"broker:\n  listeners:\n    default:\n      endpoint: 'tcp:{port}:interface=127.0.0.1'\n"
        "  plugins:\n    amqtt.plugins.authentication.AnonymousAuthPlugin: {allow_anonymous: true}\n"
        + broker_keys +
        "telemetry:\n  metrics_endpoint: ''\ningest:\n  enabled: false\n")
    return subprocess.Popen([str(BIN / "twistd"), "--nodaemon", "--pidfile=", f"--logfile={work / 'gw.log'}",
                             "gateway", "--config", str(config)], cwd=work)


def start_mosquitto(port: int, work: Path) -> subprocess.Popen[bytes]:
    """mosquitto with its defaults (persistent sessions never expire), anonymous, no persistence file."""
    config = work / "mosquitto.conf"
    config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_connections -1\n")
    return subprocess.Popen([shutil.which("mosquitto") or "mosquitto", "-c", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def connect_packet(client_id: str, clean: bool) -> bytes:
    """CONNECT (MQTT 3.1.1), keep-alive 600 s."""
    return packets.connect(client_id, 600, clean)


def subscribe_packet(topic_filter: str) -> bytes:
    """SUBSCRIBE at QoS 1, packet id 1."""
    return packets.subscribe(1, [(topic_filter, 1)])


class Tally:
    """Clients that got their SUBACK, and clients that failed (refused, closed, timed out)."""

    def __init__(self) -> None:
        self.ok = 0
        self.failed = 0
        self.reasons: dict[str, int] = {}


async def visit(port: int, client_id: str, clean: bool, limit: asyncio.Semaphore, tally: Tally,
                stay: asyncio.Event | None = None) -> None:
    """Connect and subscribe (CONNACK and SUBACK read) within ``limit``, stay until ``stay`` is set, DISCONNECT."""
    try:
        async with limit:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 30)
            writer.write(connect_packet(client_id, clean) + subscribe_packet(f"bench/{client_id}/#"))
            await asyncio.wait_for(reader.readexactly(4 + 5), 30)  # CONNACK, SUBACK
    except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as exc:
        tally.failed += 1
        tally.reasons[type(exc).__name__] = tally.reasons.get(type(exc).__name__, 0) + 1
        return
    tally.ok += 1
    if stay is not None:
        await stay.wait()
    try:
        writer.write(b"\xe0\x00")
        await writer.drain()
        writer.close()
        await writer.wait_closed()
    except OSError:
        pass


async def idle_wave(port: int, count: int, connected: Callable[[], Awaitable[None]] | None = None) -> Tally:
    """``count`` clean-session clients connect (``CONCURRENCY`` at a time) and stay; once all
    have, ``connected()`` runs; then they all disconnect. Returns once they have left."""
    stay, limit, tally = asyncio.Event(), asyncio.Semaphore(CONCURRENCY), Tally()
    tasks = [asyncio.ensure_future(visit(port, f"idle{index}", True, limit, tally, stay)) for index in range(count)]
    while tally.ok + tally.failed < count:
        await asyncio.sleep(0.2)
    if connected is not None:
        await connected()
    stay.set()
    await asyncio.gather(*tasks)
    return tally


async def connections_closed(pid: int, descriptors: int, timeout: float = 60.0) -> None:
    """Wait until ``pid`` holds no more than ``descriptors`` open file descriptors (a few more
    allowed): the broker has closed its side of every connection that left, so the reading
    after a wave does not count connections it has not yet ended."""
    process = psutil.Process(pid)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while process.num_fds() > descriptors + 5 and loop.time() < deadline:
        await asyncio.sleep(0.1)


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid``, MiB."""
    return psutil.Process(pid).memory_info().rss / (1 << 20)


async def run(name: str, start: Callable[[int, Path], subprocess.Popen[bytes]], args: argparse.Namespace,
              work: Path) -> dict[str, float]:
    port = free_port()
    process = start(port, work)
    try:
        wait_for_port(port, 60)
        await asyncio.sleep(args.settle)
        result = {"start": rss_mb(process.pid)}
        descriptors = psutil.Process(process.pid).num_fds()
        limit = asyncio.Semaphore(CONCURRENCY)
        cycles = Tally()

        async def connected() -> None:
            await asyncio.sleep(args.settle)
            result["idle_connected"] = rss_mb(process.pid)

        idle = await idle_wave(port, args.idle, connected)
        await connections_closed(process.pid, descriptors)
        await asyncio.sleep(args.settle)
        result["idle_left"] = rss_mb(process.pid)
        await asyncio.gather(*(visit(port, f"cycle{index}", False, limit, cycles) for index in range(args.cycles)))
        await asyncio.sleep(args.settle)
        result["after_cycles"] = rss_mb(process.pid)
        result["idle_failed"], result["cycles_failed"] = idle.failed, cycles.failed
        print(f"{name}: " + ", ".join(f"{key} {value:.1f}" for key, value in result.items())
              + f"; failures: {idle.reasons | cycles.reasons}", flush=True)
        return result
    finally:
        process.terminate()
        process.wait(30)


def main() -> int:
    """Run both brokers in turn, print the table, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=int, default=5000, help="clients connected at once, then leaving")
    parser.add_argument("--cycles", type=int, default=6000, help="persistent clients connecting once each")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds before each RSS reading")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "sessions.json"))
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="sessions-") as tmp:
        for name, start in (("ours", start_ours), ("mosquitto", start_mosquitto)):
            work = Path(tmp) / name
            work.mkdir()
            results[name] = asyncio.run(run(name, start, args, work))
    print(f"\n{args.idle} idle clients, then {args.cycles} one-time persistent clients (RSS, MiB)\n")
    print("| reading | ours | mosquitto | ours growth | mosquitto growth | growth ratio |")
    print("|---|---|---|---|---|---|")
    for key in ("start", "idle_connected", "idle_left", "after_cycles"):
        ours, mosq = results["ours"][key], results["mosquitto"][key]
        grown_ours, grown_mosq = ours - results["ours"]["start"], mosq - results["mosquitto"]["start"]
        ratio = f"{grown_ours / grown_mosq:.1f}×" if grown_mosq > 0.05 else "–"
        print(f"| {key} | {ours:.1f} | {mosq:.1f} | {grown_ours:+.1f} | {grown_mosq:+.1f} | {ratio} |")
    for name, result in results.items():
        connected = args.idle - result["idle_failed"]
        per_idle = (result["idle_connected"] - result["start"]) * 1024 / max(connected, 1)
        print(f"{name}: {per_idle:.1f} KiB per idle connection; clients that failed to connect: "
              f"{result['idle_failed']:.0f} idle, {result['cycles_failed']:.0f} cycling")
    write_json(args.json, {"idle": args.idle, "cycles": args.cycles, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
