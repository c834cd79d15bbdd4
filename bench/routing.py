"""Routing a topic not seen before, and finding a new subscription's retained messages: the
broker's trees against trying every filter (every retained topic), in one run.

In-process, no sockets: a real, unstarted :class:`GatewayBroker` holds ``N`` offline
persistent sessions of devices, each subscribed to a filter of its own, half without
wildcards (``devices/d<n>/config``), half with (``devices/d<n>/cmd/#``), plus three broad
subscribers (``telemetry/#``, ``+/d1/#``, ``$SYS/#``). For each ``N`` it routes topics
the route cache has not seen (``telemetry/d<k>/temp``, ``devices/d<k>/cmd/reboot``, at QoS
0, so nothing is queued) through ``Router.route``, and computes the same subscribers with
the scan the router had before (every filter with ``matches()``, the highest QoS per
client), checking both give the same. Then ``N`` retained topics
(``devices/d<n>/state``) and new subscriptions (``devices/d<k>/#``, ``devices/d<k>/state``):
``Router.send_retained`` against a scan of every retained topic.

    .venv/bin/python bench/routing.py [--sizes 1000,10000,90000] [--topics 2000] [--scan-topics 200]

Prints a table (the memory the broker holds per device session with its subscription, as
tracemalloc counts it while they are made; µs per topic or subscription, median of
``--repeat`` timings, and the ratio scan / tree) and writes ``bench/results/routing.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from broker import write_json  # noqa: E402

from gateway.broker.amqtt_adapter import AmqttPlugins  # noqa: E402
from gateway.broker.bus import LocalBus  # noqa: E402
from gateway.broker.clientsession import ClientSession  # noqa: E402
from gateway.broker.core import GatewayBroker  # noqa: E402
from gateway.broker.retainedburst import RetainedBurst  # noqa: E402
from gateway.mqtt.topics import matches  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402

#: amqtt's part of the config: anonymous clients, no topic plugins (the broker's fast path).
CONFIG = {"listeners": {"default": {"type": "external"}},
          "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}}


class Discard:
    """A connected client that takes every delivery and keeps nothing (for ``send_retained``)."""

    live = True
    inbound = None

    def __init__(self) -> None:
        self.session = ClientSession("bench", clean=True)
        self.count = 0

    def plugin_view(self) -> None:
        """Not asked: no topic plugins."""

    def deliver(self, topic: str, payload: bytes, qos: int, retain: bool, template: object = None) -> None:
        """Count the delivery."""
        self.count += 1

    def deliver_retained(self, burst: RetainedBurst) -> None:
        """Count the retained messages."""
        self.count += len(burst.topics)


def make_broker(size: int, loop: asyncio.AbstractEventLoop) -> GatewayBroker:
    """A broker with ``size`` devices' subscriptions and the three broad subscribers."""
    broker = GatewayBroker(AmqttPlugins(CONFIG, loop), LocalBus(), Clock(), max_offline_sessions=size + 10)
    for n in range(size):
        session = broker.create_offline_session(f"d{n}")
        broker.subscribe_session(session, f"devices/d{n}/config" if n % 2 else f"devices/d{n}/cmd/#", 1)
    for client_id, topic_filter in [("monitor", "telemetry/#"), ("one", "+/d1/#"), ("sys", "$SYS/#")]:
        broker.subscribe_session(broker.create_offline_session(client_id), topic_filter, 1)
    return broker


def scan_targets(broker: GatewayBroker, topic: str) -> dict[str, int]:
    """Client id -> granted QoS for ``topic``, as the router found them before its tree: every filter tried."""
    best: dict[str, Any] = {}
    for topic_filter, subscribers in broker.subscriptions.items():
        if matches(topic_filter, topic):
            for client_id, target in subscribers.items():
                known = best.get(client_id)
                if known is None or target[1] > known[1]:
                    best[client_id] = target
    return {client_id: target[1] for client_id, target in best.items()}


def timed(work: Callable[[], None], count: int, repeat: int) -> float:
    """Median µs per item of ``work`` (which handles ``count`` items), over ``repeat`` runs."""
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        work()
        runs.append((time.perf_counter() - started) / count * 1e6)
    return statistics.median(runs)


def new_topics(size: int, count: int, offset: int) -> list[str]:
    """``count`` topics (telemetry and device commands, alternating) not routed before."""
    return [f"telemetry/d{(offset + k) % size}/t{offset + k}" if k % 2 else f"devices/d{(offset + k) % size}/cmd/r{k}"
            for k in range(count)]


def route_case(broker: GatewayBroker, size: int, args: argparse.Namespace) -> dict[str, float]:
    """µs per new topic: the router (tree and cache) and the old scan; checks they agree."""
    for topic in new_topics(size, 50, 10**7):
        routed = {s.client_id: q for s, q in broker._targets(None, topic, b"", 0, False)}
        assert routed == scan_targets(broker, topic), topic
    offsets = iter(range(10**8, 10**9, 10**6))

    def tree() -> None:
        for topic in new_topics(size, args.topics, next(offsets)):
            broker.route(None, topic, b"m", 0, False)

    def scan() -> None:
        for topic in new_topics(size, args.scan_topics, next(offsets)):
            scan_targets(broker, topic)

    return {"tree_us": timed(tree, args.topics, args.repeat), "scan_us": timed(scan, args.scan_topics, args.repeat)}


def retained_case(broker: GatewayBroker, size: int, args: argparse.Namespace) -> dict[str, float]:
    """µs per new subscription to find its retained messages: ``send_retained`` and the old scan."""
    for n in range(size):
        broker.keep_retained(f"devices/d{n}/state", b"on", 1)
    client = Discard()
    filters = [f"devices/d{k % size}/#" if k % 2 else f"devices/d{k % size}/state" for k in range(args.topics)]
    scanned = filters[:args.scan_topics]

    def tree() -> None:
        for topic_filter in filters:
            broker.send_retained(topic_filter, 1, client)  # type: ignore[arg-type]

    def scan() -> None:
        for topic_filter in scanned:
            found = [(topic, m) for topic, m in broker.retained.items() if matches(topic_filter, topic)]
            if len(found) > 1:
                found.sort(key=lambda item: item[0].split("/"))

    result = {"retained_tree_us": timed(tree, len(filters), args.repeat),
              "retained_scan_us": timed(scan, len(scanned), args.repeat)}
    assert client.count == len(filters) * args.repeat, client.count
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,90000",
                        help="subscriptions (and retained topics), comma-separated")
    parser.add_argument("--topics", type=int, default=2000, help="new topics (subscriptions) timed through the tree")
    parser.add_argument("--scan-topics", type=int, default=200, help="new topics (subscriptions) timed by the scan")
    parser.add_argument("--repeat", type=int, default=3, help="timings per case (the median is kept)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "routing.json"))
    args = parser.parse_args()
    loop = asyncio.new_event_loop()  # amqtt's plugin manager wants one; nothing runs on it
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        tracemalloc.start()
        broker = make_broker(size, loop)
        held = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        row = {"subscriptions": size, "bytes_per_device": held / size, **route_case(broker, size, args),
               **retained_case(broker, size, args)}
        rows.append(row)
    loop.close()
    print(f"{'subscriptions':>13} | {'B/device':>8} | {'route: tree µs':>14} | {'scan µs':>9} | {'scan/tree':>9} | "
          f"{'retained: tree µs':>17} | {'scan µs':>9} | {'scan/tree':>9}")
    for row in rows:
        print(f"{row['subscriptions']:>13,} | {row['bytes_per_device']:>8.0f} | {row['tree_us']:>14.2f} | "
              f"{row['scan_us']:>9.0f} | "
              f"{row['scan_us'] / row['tree_us']:>9.0f} | {row['retained_tree_us']:>17.2f} | "
              f"{row['retained_scan_us']:>9.0f} | {row['retained_scan_us'] / row['retained_tree_us']:>9.0f}")
    write_json(args.out, {"python": sys.version.split()[0], "topics": args.topics, "scan_topics": args.scan_topics,
                          "repeat": args.repeat, "rows": rows})


if __name__ == "__main__":
    main()
