"""Benchmark: the gateway on a disk slow to fsync (an SD card, eMMC): QoS 1 PUBACKs.

Cheap flash takes 20-200 ms an fsync. An ``LD_PRELOAD`` shim, compiled here with ``gcc``
into a temporary folder, makes every ``fsync``, ``fdatasync``, ``sync_file_range`` and
``RWF_DSYNC`` write of the gateway process sleep ``--delay-ms`` first (check it with
``LD_PRELOAD=<shim> bench/fsync_latency.py``). The gateway runs with a link to a local
mosquitto routing ``telemetry/#`` (every message journaled, the cursor saved as the cloud
acknowledges), and closed-loop publishers (one QoS 1 message in flight each) measure the
messages a second and the PUBACK times; a client pinging every 100 ms shows whether the
reactor ever waits for the disk. Run:
``.venv/bin/python bench/slow_fsync.py [--delay-ms 100] [--publishers 1,8,32] [--seconds 10]
[--offline-session]`` (``--offline-session``: a persistent session subscribed to ``telemetry/#``
and offline, so that every message is appended to two streams, ``link-cloud`` and
``broker-state``).
Prints a table and writes ``bench/results/slow_fsync.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import e2e  # noqa: E402  (bench/e2e.py: the gateway and mosquitto it runs)
from broker import BIN, ROOT, free_port, wait_for_port, write_json  # noqa: E402  (bench/broker.py)

SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <sys/uio.h>
#include <time.h>
static void slow(void) {
    const char *e = getenv("SLOW_FSYNC_MS");
    long ms = e ? atol(e) : 100;
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}
#define NEXT(name) static __typeof__(name) *real; if (!real) real = dlsym(RTLD_NEXT, #name)
int fsync(int fd) { NEXT(fsync); slow(); return real(fd); }
int fdatasync(int fd) { NEXT(fdatasync); slow(); return real(fd); }
int sync_file_range(int fd, off_t o, off_t n, unsigned int f) { NEXT(sync_file_range); slow(); return real(fd, o, n, f); }
ssize_t pwritev2(int fd, const struct iovec *v, int n, off_t o, int f) {
    NEXT(pwritev2); if (f & (RWF_DSYNC | RWF_SYNC)) slow(); return real(fd, v, n, o, f);
}
/* (what programs built with 64-bit file offsets call, Python among them) */
ssize_t pwritev64v2(int fd, const struct iovec *v, int n, off_t o, int f) __attribute__((alias("pwritev2")));
"""


def build_shim(work: Path) -> Path:
    """Compile the shim into ``work``; its path."""
    source, shim = work / "slow_fsync.c", work / "slow_fsync.so"
    source.write_text(SHIM)
    subprocess.run([shutil.which("gcc") or "gcc", "-shared", "-fPIC", "-O2", "-o", str(shim), str(source), "-ldl"],
                   check=True)
    return shim


def _length(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _text(value: str) -> bytes:
    data = value.encode()
    return struct.pack("!H", len(data)) + data


async def _packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    kind = (await reader.readexactly(1))[0]
    size, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        size |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return kind, await reader.readexactly(size)


async def _connect(port: int, client_id: str, clean: bool = True) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = _text("MQTT") + bytes([4, 2 if clean else 0]) + struct.pack("!H", 60) + _text(client_id)
    writer.write(b"\x10" + _length(len(body)) + body)
    kind, ack = await _packet(reader)
    if kind != 0x20 or ack[1] != 0:
        raise RuntimeError(f"CONNECT of {client_id} refused: {kind:#x} {ack!r}")
    return reader, writer


async def publisher(port: int, index: int, stop_at: float, times: list[float]) -> None:
    """Publish QoS 1 to ``telemetry/bench/<index>``, the next once the last is acknowledged."""
    reader, writer = await _connect(port, f"slow-fsync-{index}")
    packet_id = 0
    while time.perf_counter() < stop_at:
        packet_id = packet_id % 65535 + 1
        body = _text(f"telemetry/bench/{index}") + struct.pack("!H", packet_id) + b"x" * 64
        sent = time.perf_counter()
        writer.write(b"\x32" + _length(len(body)) + body)
        kind, _ = await _packet(reader)
        if kind != 0x40:
            raise RuntimeError(f"publisher {index}: {kind:#x} instead of a PUBACK")
        times.append(time.perf_counter() - sent)
    writer.close()


async def leave_offline_session(port: int) -> None:
    """A persistent session subscribed to ``telemetry/#`` at QoS 1, then offline: every
    message is queued for it in the broker's state log too (a second journal stream)."""
    reader, writer = await _connect(port, "slow-fsync-offline", clean=False)
    body = struct.pack("!H", 1) + _text("telemetry/#") + b"\x01"
    writer.write(b"\x82" + _length(len(body)) + body)
    kind, _ = await _packet(reader)
    if kind != 0x90:
        raise RuntimeError(f"SUBSCRIBE answered with {kind:#x}")
    writer.write(b"\xe0\x00")
    writer.close()


async def pinger(port: int, stop_at: float, times: list[float]) -> None:
    """PINGREQ every 100 ms: the reactor's own answer time."""
    reader, writer = await _connect(port, "slow-fsync-ping")
    while time.perf_counter() < stop_at:
        sent = time.perf_counter()
        writer.write(b"\xc0\x00")
        await _packet(reader)
        times.append(time.perf_counter() - sent)
        await asyncio.sleep(0.1)
    writer.close()


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")


async def measure(port: int, publishers: int, seconds: float) -> dict[str, float]:
    """One run of ``publishers`` closed-loop publishers for ``seconds``."""
    acks: list[float] = []
    pings: list[float] = []
    stop_at = time.perf_counter() + seconds
    await asyncio.gather(pinger(port, stop_at, pings), *(publisher(port, i, stop_at, acks) for i in range(publishers)))
    return {"publishers": publishers, "msgs_per_s": len(acks) / seconds,
            "puback_p50_ms": _quantile(acks, 0.5), "puback_p95_ms": _quantile(acks, 0.95),
            "puback_p99_ms": _quantile(acks, 0.99),
            "pingresp_max_ms": max(pings) * 1000 if pings else float("nan")}


def main() -> int:
    """Start mosquitto and the gateway under the shim, measure each publisher count, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay-ms", type=int, default=100, help="sleep before each fsync")
    parser.add_argument("--publishers", default="1,8,32", help="publisher counts, comma-separated")
    parser.add_argument("--seconds", type=float, default=10.0, help="per publisher count")
    parser.add_argument("--offline-session", action="store_true",
                        help="leave an offline persistent session subscribed to telemetry/# first")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "slow_fsync.json"))
    args = parser.parse_args()
    counts = [int(n) for n in args.publishers.split(",")]
    if args.delay_ms < 0 or args.seconds <= 0 or any(n < 1 for n in counts):
        parser.error("--delay-ms not negative, --seconds positive, publisher counts at least 1")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        e2e.TWISTD = ["env", f"LD_PRELOAD={build_shim(work)}", f"SLOW_FSYNC_MS={args.delay_ms}", str(BIN / "twistd")]
        cloud, port = free_port(), free_port()
        procs = [e2e.mosquitto(work, "cloud", cloud), e2e.gateway(work, port, cloud)]
        try:
            wait_for_port(cloud), wait_for_port(port)
            time.sleep(1.0)  # the link connects
            if args.offline_session:
                asyncio.run(leave_offline_session(port))
            for count in counts:
                rows.append(asyncio.run(measure(port, count, args.seconds)))
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(timeout=60)
    print(f"\nfsync +{args.delay_ms} ms\n{'publishers':>10} {'msgs/s':>8} {'PUBACK p50 ms':>14} {'p95 ms':>7}"
          f" {'p99 ms':>7} {'PINGRESP max ms':>16}")
    for r in rows:
        print(f"{r['publishers']:>10} {r['msgs_per_s']:>8.1f} {r['puback_p50_ms']:>14.1f} {r['puback_p95_ms']:>7.1f}"
              f" {r['puback_p99_ms']:>7.1f} {r['pingresp_max_ms']:>16.1f}")
    write_json(args.json, {"delay_ms": args.delay_ms, "results": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
