"""A new subscription over many retained messages: how long the burst takes, whether the
gateway stays responsive meanwhile, and what subscribers that never read cost it.

A real ``twistd gateway`` (``bench/sessions.py``'s ``start_ours``) is given ``--topics``
retained QoS 0 messages of ``--size`` bytes, each on its own topic (``r/<n>``). Then:

- ``reader``: a client subscribes to ``#`` and reads as fast as it can: messages received,
  seconds from the SUBSCRIBE to the last one, the broker's CPU seconds meanwhile, and the
  longest PINGREQ round trip of another client pinging every 10 ms meanwhile;
- ``idle``: ``--idle`` clients subscribe to ``#`` one after the other and never read (a
  receive buffer of 4 KiB): the gateway's resident set before and after them;
- ``restart``: SIGTERM, then the time from spawning ``twistd`` until the broker listens.

    .venv/bin/python bench/retained_burst.py [--topics 100000] [--size 100] [--idle 3]
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from broker import ROOT, free_port, wait_for_port, write_json  # noqa: E402
from checkpoint_load import status_mib  # noqa: E402
from sessions import start_ours  # noqa: E402

from gateway.mqtt import packets  # noqa: E402
from tests.broker.packets import split  # noqa: E402

#: The retained messages are not bounded here (the defaults keep 10,000 topics, 16 MiB): the
#: burst is measured over all ``--topics`` of them, as before the bounds.
UNBOUNDED = "  max_retained_messages: 0\n  max_retained_bytes: 0\n"


def connected(port: int, client_id: str) -> socket.socket:
    """A clean session's socket, past its CONNACK."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(packets.connect(client_id, 600, True))
    assert sock.recv(4) == packets.connack(False)
    return sock


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fill(port: int, topics: int, size: int) -> float:
    """Publish the retained messages (then one QoS 1, waited for); seconds taken."""
    started = time.monotonic()
    with connected(port, "filler") as sock:
        batch = bytearray()
        for n in range(topics):
            batch += packets.publish(f"r/{n}", bytes([n % 251]) * size, 0, True)
            if len(batch) > 1 << 16:
                sock.sendall(batch)
                batch.clear()
        sock.sendall(batch + packets.publish("z/end", b"e", 1, True, 1))
        while sock.recv(4) != packets.ack(packets.PUBACK, 1):
            pass
    return time.monotonic() - started


def read_burst(port: int, pid: int) -> dict[str, float]:
    """A ``#`` subscriber reading everything, with a pinger beside it."""
    pings: list[float] = []
    done = threading.Event()

    def ping() -> None:
        with connected(port, "pinger") as sock:
            while not done.is_set():
                sent = time.monotonic()
                sock.sendall(b"\xc0\x00")
                sock.recv(2)
                pings.append(time.monotonic() - sent)
                time.sleep(0.01)

    pinger = threading.Thread(target=ping)
    pinger.start()
    with connected(port, "reader") as sock:
        sock.settimeout(3)
        cpu, started = cpu_seconds(pid), time.monotonic()
        sock.sendall(packets.subscribe(1, [("#", 0)]))
        received, last, rest = 0, started, b""
        try:
            while True:
                data = sock.recv(1 << 20)
                if not data:
                    break
                parsed, rest = split(rest + data)
                received += sum(1 for first, _ in parsed if first >> 4 == 3)
                last = time.monotonic()
        except TimeoutError:
            pass
        cpu = cpu_seconds(pid) - cpu
    done.set()
    pinger.join()
    return {"received": received, "seconds": last - started, "cpu_s": cpu, "ping_max_ms": max(pings) * 1000}


def idle_subscribers(port: int, pid: int, count: int) -> dict[str, float]:
    """``count`` ``#`` subscribers that never read: the resident set before and after."""
    before = status_mib(pid, "VmRSS")
    held = []
    for n in range(count):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.sendall(packets.connect(f"idle{n}", 600, True) + packets.subscribe(1, [("#", 0)]))
        held.append(sock)
        time.sleep(1)
    time.sleep(3)
    after = status_mib(pid, "VmRSS")
    for sock in held:
        sock.close()
    return {"rss_before_mib": before, "rss_after_mib": after}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topics", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--idle", type=int, default=3)
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "retained_burst.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        work, port = Path(temp), free_port()
        process = start_ours(port, work, UNBOUNDED)
        try:
            wait_for_port(port)
            filled = fill(port, args.topics, args.size)
            print(f"{args.topics} retained messages of {args.size} B published in {filled:.1f} s;"
                  f" resident {status_mib(process.pid, 'VmRSS'):.0f} MiB")
            time.sleep(3)  # (the checkpoint they cause)
            reader = read_burst(port, process.pid)
            print(f"reader:  {reader['received']} messages in {reader['seconds']:.2f} s, broker CPU"
                  f" {reader['cpu_s']:.2f} s, longest PINGREQ round trip {reader['ping_max_ms']:.0f} ms")
            idle = idle_subscribers(port, process.pid, args.idle)
            print(f"idle:    {args.idle} never-reading # subscribers: resident {idle['rss_before_mib']:.0f}"
                  f" -> {idle['rss_after_mib']:.0f} MiB")
        finally:
            process.terminate()
            process.wait()
        started = time.monotonic()
        process = start_ours(port, work, UNBOUNDED)
        try:
            wait_for_port(port, timeout=120)
            restart = time.monotonic() - started
            print(f"restart: listening after {restart:.2f} s")
        finally:
            process.terminate()
            process.wait()
    write_json(args.json, {"args": vars(args), "fill_s": filled, "reader": reader, "idle": idle,
                           "restart_s": restart})
    return 0


if __name__ == "__main__":
    sys.exit(main())
