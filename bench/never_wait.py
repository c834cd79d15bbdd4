"""Benchmark: QoS 1 publishers that never wait for their PUBACKs, on a disk slow to fsync.

The gateway runs as in ``bench/slow_fsync.py`` (its fsync shim, a link to a local mosquitto
routing ``telemetry/#``: every message waits for the journal), pinned to one core with
``taskset -c 0``. ``--publishers`` clients each write QoS 1 PUBLISHes (64-byte payloads) as
fast as their socket takes them, reading their PUBACKs only to count them; a client sends
PINGREQ every 100 ms after its last PINGRESP. For ``--seconds`` it measures the PUBACKs,
the PINGRESPs and the longest wait for one, the gateway's resident memory (peak and end)
and its ``reactor_lag_s`` (``GET /status``: the worst lateness of its timers, a minute or
two). Run with ``PYTHONPATH`` naming the checkout to measure:

    .venv/bin/python bench/never_wait.py [--delay-ms 100] [--publishers 16] [--seconds 15]

Prints one JSON line and writes ``bench/results/never_wait.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import socket
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import e2e  # noqa: E402  (bench/e2e.py: the gateway and mosquitto it runs)
from broker import BIN, ROOT, free_port, wait_for_port, write_json  # noqa: E402  (bench/broker.py)
from slow_fsync import _connect, _length, _packet, _text, build_shim, pinger  # noqa: E402


async def flooder(port: int, index: int, stop_at: float, counts: dict[str, int]) -> None:
    """Write QoS 1 PUBLISHes, 100 at a time, whenever the socket takes them, until ``stop_at``."""
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
            body = _text(f"telemetry/flood/{index}") + struct.pack("!H", packet_id) + b"x" * 64
            chunk += b"\x32" + _length(len(body)) + body
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


async def measure(port: int, pid: int, publishers: int, seconds: float) -> dict[str, float]:
    """One run of ``publishers`` flooders and the pinger for ``seconds``."""
    counts = {"sent": 0, "acks": 0}
    pings: list[float] = []
    peak = [0]
    stop_at = time.perf_counter() + seconds

    async def sample() -> None:
        while time.perf_counter() < stop_at:
            peak[0] = max(peak[0], resident_mib(pid))
            await asyncio.sleep(0.25)

    await asyncio.gather(pinger(port, stop_at, pings), sample(),
                         *(flooder(port, i, stop_at, counts) for i in range(publishers)))
    return {"publishers": publishers, "seconds": seconds, "pubacks": counts["acks"], "pingresps": len(pings),
            "pingresp_max_s": max(pings, default=float("nan")), "rss_peak_mib": peak[0], "rss_end_mib": resident_mib(pid)}


def main() -> int:
    """Start mosquitto and the gateway under the shim, flood it, print the result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay-ms", type=int, default=100, help="sleep before each fsync")
    parser.add_argument("--publishers", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "never_wait.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        e2e.TWISTD = ["taskset", "-c", "0", "env", f"LD_PRELOAD={build_shim(work)}", f"SLOW_FSYNC_MS={args.delay_ms}",
                      str(BIN / "twistd")]
        cloud, port = free_port(), free_port()
        procs = [e2e.mosquitto(work, "cloud", cloud), e2e.gateway(work, port, cloud)]
        try:
            wait_for_port(cloud), wait_for_port(port)
            time.sleep(1.0)  # the link connects
            result = asyncio.run(measure(port, procs[1].pid, args.publishers, args.seconds))
            result["reactor_lag_s"] = reactor_lag(work / "state" / "run" / "admin.sock")
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(timeout=60)
    result["delay_ms"] = args.delay_ms
    print(json.dumps(result))
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
