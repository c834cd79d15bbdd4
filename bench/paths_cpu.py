"""Reactor-side cost of an HTTP request on a gateway listener, and of a retained PUBLISH in the broker.

In-process, no sockets, nothing timed by the clock: meant for an instruction counter, as
``bench/journal_cpu.py`` is (wall-clock is printed too, for what it is worth)::

    for n in 2000 6000; do
        valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
            .venv/bin/python bench/paths_cpu.py http $n 2>&1 | grep Collected
    done
    # instructions per request = (second - first) / 4000

- ``http``: ``n`` requests on one kept-alive connection to a :class:`~gateway.closingsite.ClosingSite`
  (the ingest's and admin API's channel, :class:`~gateway.httpchannels.ClosingChannel`) over a
  ``StringTransport``: an ingest-like form write (request line, seven header lines, a
  64-byte body) answered ``204`` by a resource that does nothing else. Head check,
  Twisted's parsing, the request and its answer: what a write costs before the ingest's own work.
- ``head``: the head check alone (:class:`~gateway.httpheadcheck.HeadCheck`) on ``n`` heads of that
  write, line by line as the channel hands them over: its share of a request.
- ``retained``: ``n`` retained QoS 0 PUBLISHes of a client through ``Router.route``, on 1,000
  topics in turn (the first 1,000 new, the rest replacing: a device's status kept up to
  date), no subscribers, the default bounds.
- ``retained-new``: ``n`` retained PUBLISHes each on a topic of its own (no bounds).
"""

from __future__ import annotations

import argparse
import asyncio
import time

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource
from twisted.web.server import Request

from gateway.broker.amqtt_adapter import AmqttPlugins
from gateway.broker.bus import LocalBus
from gateway.broker.clientsession import ClientSession
from gateway.broker.core import GatewayBroker
from gateway.closingsite import ClosingSite

#: An ingest write as a device's HTTP client sends it.
REQUEST = (b"POST /onep:v1/stack/alias HTTP/1.1\r\n"
           b"Host: 127.0.0.1:8080\r\n"
           b"User-Agent: device/1.0\r\n"
           b"Accept: */*\r\n"
           b"X-Exosite-CIK: 0123456789abcdef0123456789abcdef01234567\r\n"
           b"Content-Type: application/x-www-form-urlencoded; charset=utf-8\r\n"
           b"Connection: keep-alive\r\n"
           b"Content-Length: 66\r\n"
           b"\r\n"
           b"v=" + b"x" * 64)

#: amqtt's part of the config: anonymous clients, no topic plugins (the broker's fast path).
CONFIG = {"listeners": {"default": {"type": "external"}},
          "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}}


class NoContent(Resource):
    """Answers every request ``204``, doing nothing else."""

    isLeaf = True

    def render_POST(self, request: Request) -> bytes:
        """``204``, no body."""
        request.setResponseCode(204)
        return b""


def http(count: int) -> int:
    """``count`` requests on one connection; the bytes answered."""
    site = ClosingSite(NoContent(), listener="ingest")
    site.reactor = Clock()
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport()
    channel.makeConnection(transport)
    answered = 0
    for _ in range(count):
        channel.dataReceived(REQUEST)
        answered += len(transport.value())
        transport.clear()
    return answered


def head(count: int) -> int:
    """``count`` heads of :data:`REQUEST` through one head check; the lines found malformed (none)."""
    from gateway.httpheadcheck import HeadCheck  # (here: a tree before stop 61 has none, and runs the rest)

    check = HeadCheck()
    first, *headers = REQUEST.split(b"\r\n\r\n")[0].split(b"\r\n")
    malformed = 0
    for _ in range(count):
        malformed += check.request_line(first) is not None
        for line in headers:
            malformed += check.header_line(line) is not None
        malformed += check.end_of_head() is not None
    return malformed


def retained(count: int, topics: int | None) -> int:
    """``count`` retained PUBLISHes of one client, on ``topics`` topics in turn (None: each its own)."""
    loop = asyncio.new_event_loop()
    bounds = {} if topics else {"max_retained_messages": 0, "max_retained_bytes": 0}
    broker = GatewayBroker(AmqttPlugins(CONFIG, loop), LocalBus(), Clock(), **bounds)
    source = ClientSession("publisher", clean=True)
    payload = b"x" * 64
    for n in range(count):
        broker.route(source, f"devices/d{n % topics if topics else n}/status", payload, 0, True)
    return len(broker.retained)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("http", "head", "retained", "retained-new"))
    parser.add_argument("count", nargs="?", type=int, default=2000)
    args = parser.parse_args()
    started = time.perf_counter()
    if args.mode == "http":
        result = http(args.count)
    elif args.mode == "head":
        result = head(args.count)
    else:
        result = retained(args.count, 1000 if args.mode == "retained" else None)
    took = time.perf_counter() - started
    print(f"{args.mode} {args.count}: {took / args.count * 1e6:.1f} us each ({result})")


if __name__ == "__main__":
    main()
