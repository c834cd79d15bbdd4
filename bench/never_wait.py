"""Benchmark: QoS 1 publishers that never wait for their PUBACKs, on a disk slow to fsync.

The gateway runs as in ``bench/slow_fsync.py`` (its fsync shim, a link to a local mosquitto
routing ``telemetry/#``: every message waits for the journal), pinned to one core with
``taskset -c 0``. ``--publishers`` clients each write QoS 1 PUBLISHes (64-byte payloads) as
fast as their socket takes them, reading their PUBACKs only to count them; a client sends
PINGREQ every 100 ms after its last PINGRESP. For ``--seconds`` it measures the PUBACKs,
the PINGRESPs and the longest wait for one, the gateway's resident memory (peak, end, and
every 5 s) and its ``reactor_lag_s`` (``GET /status``: the worst lateness of its timers, a
minute or two). ``--qos 0`` sends QoS 0 PUBLISHes instead (nothing to count but what was
sent); ``--plugin-ms N`` adds a topic plugin that takes N ms (an asyncio sleep) to allow
each check. Run with ``PYTHONPATH`` naming the checkout to measure:

    .venv/bin/python bench/never_wait.py [--delay-ms 100] [--publishers 16] [--seconds 15] [--qos 0] [--plugin-ms 500]

Prints one JSON line and writes ``bench/results/never_wait.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import socket
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import e2e  # noqa: E402  (bench/e2e.py: the gateway and mosquitto it runs)
from broker import BIN, ROOT, free_port, wait_for_port, write_json  # noqa: E402  (bench/broker.py)
from slow_fsync import _connect, _length, _packet, _text, build_shim, pinger  # noqa: E402

#: The topic plugin of ``--plugin-ms`` (written beside the gateway's config, on its PYTHONPATH).
SLOW_PLUGIN = """
import asyncio, os
from dataclasses import dataclass
from amqtt.plugins.base import BaseTopicPlugin

class SlowTopics(BaseTopicPlugin):
    async def topic_filtering(self, *, session=None, topic=None, action=None):
        await asyncio.sleep(int(os.environ["SLOW_PLUGIN_MS"]) / 1000)
        return True

    @dataclass
    class Config:
        pass
"""


async def flooder(port: int, index: int, stop_at: float, counts: dict[str, int], qos: int) -> None:
    """Write QoS ``qos`` PUBLISHes, 100 at a time, whenever the socket takes them, until ``stop_at``."""
    reader, writer = await _connect(port, f"never-wait-{index}")

    async def count_acks() -> None:
        while True:
            await _packet(reader)
            counts["acks"] += 1

    acks = asyncio.ensure_future(count_acks())
    packet_id = 0
    while time.perf_counter() < stop_at:
        chunk = bytearray()
        for _ in range(100):
            packet_id = packet_id % 65535 + 1
            body = _text(f"telemetry/flood/{index}") + (struct.pack("!H", packet_id) if qos else b"") + b"x" * 64
            chunk += bytes((0x30 | qos << 1,)) + _length(len(body)) + body
        writer.write(bytes(chunk))
        counts["sent"] += 100
        try:
            await asyncio.wait_for(writer.drain(), max(stop_at - time.perf_counter(), 0.001))
        except asyncio.TimeoutError:
            break
    writer.transport.abort()
    acks.cancel()


def resident_mib(pid: int) -> int:
    """The process's resident set, MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    return 0


def reactor_lag(admin_socket: Path) -> float:
    """``reactor_lag_s`` from the gateway's ``GET /status`` on its admin socket."""
    connection = http.client.HTTPConnection("localhost")
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(str(admin_socket))
    connection.sock = sock
    connection.request("GET", "/status")
    return float(json.loads(connection.getresponse().read())["reactor_lag_s"])


async def measure(port: int, pid: int, publishers: int, seconds: float, qos: int) -> dict[str, Any]:
    """One run of ``publishers`` flooders and the pinger for ``seconds``."""
    counts = {"sent": 0, "acks": 0}
    pings: list[float] = []
    peak, every_5s = [0], []
    start = time.perf_counter()
    stop_at = start + seconds

    async def sample() -> None:
        while time.perf_counter() < stop_at:
            rss = resident_mib(pid)
            peak[0] = max(peak[0], rss)
            if time.perf_counter() - start >= 5 * (len(every_5s) + 1):
                every_5s.append(rss)
            await asyncio.sleep(0.25)

    await asyncio.gather(pinger(port, stop_at, pings), sample(),
                         *(flooder(port, i, stop_at, counts, qos) for i in range(publishers)))
    return {"publishers": publishers, "seconds": seconds, "qos": qos, "sent": counts["sent"],
            "pubacks": counts["acks"], "pingresps": len(pings), "pingresp_max_s": max(pings, default=float("nan")),
            "rss_peak_mib": peak[0], "rss_end_mib": resident_mib(pid), "rss_every_5s_mib": every_5s}


def main() -> int:
    """Start mosquitto and the gateway under the shim, flood it, print the result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay-ms", type=int, default=100, help="sleep before each fsync")
    parser.add_argument("--publishers", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--qos", type=int, choices=(0, 1), default=1, help="QoS of the flooders' PUBLISHes")
    parser.add_argument("--plugin-ms", type=int, default=0, help="a topic plugin taking this long a check (0: none)")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "never_wait.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        (work / "slow_topics.py").write_text(SLOW_PLUGIN)
        path = os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(work)]))
        e2e.TWISTD = ["taskset", "-c", "0", "env", f"LD_PRELOAD={build_shim(work)}", f"SLOW_FSYNC_MS={args.delay_ms}",
                      f"SLOW_PLUGIN_MS={args.plugin_ms}", f"PYTHONPATH={path}", str(BIN / "twistd")]
        cloud, port = free_port(), free_port()
        plugin = "slow_topics.SlowTopics" if args.plugin_ms else None
        procs = [e2e.mosquitto(work, "cloud", cloud), e2e.gateway(work, port, cloud, plugin=plugin)]
        try:
            wait_for_port(cloud), wait_for_port(port)
            time.sleep(1.0)  # the link connects
            result = asyncio.run(measure(port, procs[1].pid, args.publishers, args.seconds, args.qos))
            result["reactor_lag_s"] = reactor_lag(work / "state" / "run" / "admin.sock")
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(timeout=60)
    result["delay_ms"], result["plugin_ms"] = args.delay_ms, args.plugin_ms
    print(json.dumps(result))
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
