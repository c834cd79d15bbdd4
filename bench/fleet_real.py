"""Benchmark: 300 of the gateway's own cloud links (:class:`gateway.links.mqtt.MQTTLink`, with
the fleet-safe reconnect) in one process against one real mosquitto that is stopped for 30 s
and started again.

Each link publishes one QoS 1 record per second (its in-memory stream stands for the
journal); a persistent subscriber (paho, clean_session false) counts what arrives. Reported:
mosquitto's connects per second after its restart (from its own log), the time until every
link is connected again and until every backlog is acknowledged, and records appended,
acknowledged and received (lost = appended - received, duplicates removed).

Run: ``.venv/bin/python bench/fleet_real.py [--links 300] [--outage 30]``. Takes a few
minutes (links must be stable, ``stable_after`` = 60 s, before the outage). Prints a table
and writes ``bench/results/fleet_real.json``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import asyncioreactor  # noqa: E402

asyncioreactor.install()
from twisted.internet import reactor  # noqa: E402
from twisted.internet.defer import ensureDeferred  # noqa: E402
from twisted.internet.task import LoopingCall, deferLater  # noqa: E402

import paho.mqtt.client as paho  # noqa: E402

from gateway.journal.record import Record  # noqa: E402
from gateway.links.mqtt import MQTTLink  # noqa: E402
from gateway.links.settings import LinkSettings  # noqa: E402
from tests.links.memory import MemoryStream  # noqa: E402
from tests.links.mosquitto import Mosquitto  # noqa: E402
from tests.ports import free_port  # noqa: E402


class Subscriber:
    """A persistent paho subscriber on ``fleet/#`` that reconnects by itself."""

    def __init__(self, port: int) -> None:
        self.received: set[bytes] = set()
        self.lock = threading.Lock()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="fleet-bench-sub", clean_session=False,
                                  protocol=paho.MQTTv311)
        self.client.reconnect_delay_set(1, 2)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe("fleet/#", 1)
        self.client.on_message = self._message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _message(self, client: Any, userdata: Any, message: Any) -> None:
        with self.lock:
            self.received.add(message.payload)

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def connects_per_second(log: Path, since: float) -> Counter[int]:
    """mosquitto's 'New client connected' lines per epoch second, from ``since`` on."""
    counts: Counter[int] = Counter()
    for line in log.read_text(errors="replace").splitlines():
        match = re.match(r"(\d+): New client connected", line)
        if match and int(match.group(1)) >= int(since):
            counts[int(match.group(1))] += 1
    return counts


async def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.dir)
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    broker = Mosquitto(reactor, work / "mosquitto", port)
    log = work / "mosquitto" / "mosquitto.log"
    text = broker.config.read_text().replace("log_dest stderr", f"log_dest file {log}")
    broker.config.write_text(text + "log_timestamp true\nconnection_messages true\nlog_type notice\n")
    await broker.start()
    subscriber = Subscriber(port)
    time.sleep(0.5)
    settings = LinkSettings(endpoint=f"tcp:host=127.0.0.1:port={port}", client_id="{device}", loss_topic=None,
                            routes=(), downlink=())
    links = [MQTTLink("cloud", settings, MemoryStream(f"gw{i}"), reactor, ("fleet", f"gw{i}"),
                      lambda *a: None, lambda *a: None) for i in range(args.links)]
    for link in links:
        await link.start()
    appended = 0

    def produce() -> None:
        nonlocal appended
        now = reactor.seconds()
        for i, link in enumerate(links):
            appended += 1
            record = Record(f"fleet/gw{i}", f"gw{i}-{appended}".encode(), 1, False, now)
            d = link.stream.append(record)
            if link.forwarder.behind:
                d.addCallback(lambda seq, r=record, f=link.forwarder: f.offer(r._replace(seq=seq)))

    producer = LoopingCall(produce)
    producer.start(1.0)
    await deferLater(reactor, args.warmup, lambda: None)
    assert all(link.is_connected for link in links), "not all links connected before the outage"
    await broker.stop()
    down = reactor.seconds()
    await deferLater(reactor, args.outage, lambda: None)
    await broker.start()
    back = reactor.seconds()
    connected = drained = None
    while reactor.seconds() - back < args.horizon:
        await deferLater(reactor, 0.2, lambda: None)
        if connected is None and all(link.is_connected for link in links):
            connected = reactor.seconds() - back
            producer.stop()
        if connected is not None and all(link.stream.unacked(link.forwarder.cursor) == 0 for link in links):
            drained = reactor.seconds() - back
            break
    if producer.running:
        producer.stop()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with subscriber.lock:
            if len(subscriber.received) >= appended:
                break
        await deferLater(reactor, 0.5, lambda: None)
    acked = sum(len(link.stream.records) - link.stream.unacked(link.forwarder.cursor) for link in links)
    for link in links:
        await link.stop()
    subscriber.stop()
    await broker.stop()
    per_second = connects_per_second(log, back)
    return {"links": args.links, "outage_s": args.outage, "down_for_s": round(back - down, 1),
            "peak_connects_per_s": max(per_second.values(), default=0), "reconnects": sum(per_second.values()),
            "all_connected_s": connected, "all_drained_s": drained, "appended": appended, "acked": acked,
            "received": len(subscriber.received), "lost": appended - len(subscriber.received),
            "connects_per_second": [per_second.get(int(back) + s, 0) for s in range(int(max(per_second, default=back)
                                                                                       - int(back)) + 1)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--links", type=int, default=300)
    parser.add_argument("--outage", type=float, default=30.0)
    parser.add_argument("--warmup", type=float, default=65.0, help="seconds connected before the outage")
    parser.add_argument("--horizon", type=float, default=400.0)
    parser.add_argument("--dir", default="/tmp/gateway-fleet-real")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "fleet_real.json"))
    args = parser.parse_args()
    result: dict[str, Any] = {}

    def done(value: Any) -> None:
        result.update(value)
        reactor.stop()

    def failed(failure: Any) -> None:
        failure.printTraceback()
        reactor.stop()

    reactor.callWhenRunning(lambda: ensureDeferred(run(args)).addCallbacks(done, failed))
    reactor.run()
    if not result:
        sys.exit(1)
    print(f"{'links':>6} {'outage':>6} {'peak conn/s':>11} {'connected':>9} {'drained':>8} {'appended':>8} "
          f"{'received':>8} {'lost':>5}")
    print(f"{result['links']:>6} {result['outage_s']:>6g} {result['peak_connects_per_s']:>11} "
          f"{result['all_connected_s'] or -1:>9.1f} {result['all_drained_s'] or -1:>8.1f} {result['appended']:>8} "
          f"{result['received']:>8} {result['lost']:>5}")
    print("connects per second after the restart:", result["connects_per_second"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "result": result}, indent=1))


if __name__ == "__main__":
    main()
