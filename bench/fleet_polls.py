"""Benchmark: how a fleet's DDI polls land on its hawkBit server, simulated with task.Clock.

N gateways, each a real :class:`gateway.fleet.service.FleetService` (its poll scheduling,
jitter, backoff and Retry-After handling) with its own seeded random draw, poll one in-memory
DDI server on one clock (``bench/fleetsim.py``'s heap clock); its answers take ``--latency``
seconds. Three scenarios, each counted in polls the server received per second:

- ``start``: the whole fleet starts in the same second (a power cut at a site ends) and polls
  for ``--horizon`` seconds; the server's ``sleep`` is ``--sleep`` (hawkBit's default, 5 min).
- ``outage``: a fleet that has polled for an hour (spread) loses its server for ``--outage``
  seconds (connections refused); times from the server's return.
- ``busy``: the fleet starts together against a server that takes at most ``--rate`` polls a
  second and answers the rest ``503`` with ``Retry-After: --retry-after``.

Reported: the busiest second in the first minute and from the third interval on (from
``2 x sleep``), the even rate (N / sleep), the busiest second over the even rate, the 503s,
when every gateway has had a poll answered (for ``outage``: since the server's return), and a
histogram of the polls of the third interval (``2 x sleep`` to ``3 x sleep``) in buckets of
``--bucket`` seconds.

Run: ``.venv/bin/python bench/fleet_polls.py [--sizes 1000,10000] [--scenarios start,outage,busy]``.
Run it with ``PYTHONPATH`` naming another checkout to measure that one's ``gateway`` (before and
after a change). Prints a table and writes ``bench/results/fleet_polls.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
if not os.environ.get("PYTHONPATH"):  # (else the checkout it names is measured)
    sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

from twisted.internet.defer import Deferred, succeed  # noqa: E402

from fleetsim import HeapClock  # noqa: E402
from gateway.fleet.ddi import DDIError  # noqa: E402
from gateway.fleet.service import FleetService  # noqa: E402
from gateway.fleet.settings import FleetSettings  # noqa: E402


class DDIServerModel:
    """The server: up or down; when ``rate`` is set, takes at most that many polls a second and
    answers the rest 503 with ``retry_after``.

    :param clock: the simulation's clock.
    :param sleep: ``config.polling.sleep`` it answers.
    :param latency: seconds per answer.
    """

    def __init__(self, clock: HeapClock, sleep: str, latency: float) -> None:
        self.clock = clock
        self.sleep = sleep
        self.latency = latency
        self.up = True
        self.rate = 0
        self.retry_after = 60
        self.polls: Counter[int] = Counter()  # polls received per second (answered or not)
        self.taken: Counter[int] = Counter()
        self.refused = 0

    def poll(self) -> Deferred[Any]:
        """A poll arrives now; its answer (or failure) comes ``latency`` later."""
        second = int(self.clock.seconds())
        d: Deferred[Any] = Deferred()
        if not self.up:
            self.clock.callLater(self.latency, d.errback, DDIError("GET: no answer: connection refused"))
            return d
        self.polls[second] += 1
        if self.rate and self.taken[second] >= self.rate:
            self.refused += 1
            error = DDIError("GET: HTTP 503: Service Unavailable", 503, float(self.retry_after))
            self.clock.callLater(self.latency, d.errback, error)
            return d
        self.taken[second] += 1
        self.clock.callLater(self.latency, d.callback, {"config": {"polling": {"sleep": self.sleep}}, "_links": {}})
        return d


class ModelDDI:
    """What the fleet service asks of its DDI client, answered by the server model."""

    authorization = None
    origin = ("https", "ddi.example:443")

    def __init__(self, server: DDIServerModel) -> None:
        self.server = server

    def poll(self) -> Deferred[Any]:
        return self.server.poll()

    def put_config_data(self, data: dict[str, str]) -> Deferred[Any]:
        return succeed(None)

    def close(self) -> Deferred[None]:
        return succeed(None)


class NoUpdates:
    """An update service with no operations."""

    operations: dict[str, Any] = {}

    def watch(self, callback: Any) -> Any:
        return lambda: None

    hold = watch

    def when_loaded(self) -> Deferred[None]:
        return succeed(None)


def no_disk(f: Any, *args: Any) -> Deferred[None]:
    """The state file's writes, skipped (the simulation has no disk)."""
    return succeed(None)


def simulate(scenario: str, n: int, args: argparse.Namespace) -> dict[str, Any]:
    """One run; its figures."""
    clock = HeapClock()
    server = DDIServerModel(clock, args.sleep, args.latency)
    interval = sum(int(p) * f for p, f in zip(args.sleep.split(":"), (3600, 60, 1)))
    settings = FleetSettings(enabled=True, base_url="https://ddi.example", auth="none")
    fleet = [FleetService(settings, Path("/nonexistent"), clock, ModelDDI(server), NoUpdates(), dict, no_disk,
                          uniform=random.Random(args.seed * 100003 + i).uniform) for i in range(n)]
    start = 0.0
    if scenario == "busy":
        server.rate, server.retry_after = args.rate, args.retry_after
    if scenario == "outage":
        for service in fleet:
            service.startService()
        clock.advance(3600)
        server.up = False
        clock.advance(args.outage)
        server.up = True
        start = clock.seconds()
        server.polls.clear()
    else:
        for service in fleet:
            service.startService()
    waiting, all_polled = [(service, service.record.polls) for service in fleet], None
    while clock.seconds() < start + args.horizon:
        clock.advance(1.0)
        if waiting:
            waiting = [(service, polls) for service, polls in waiting if service.record.polls == polls]
            if not waiting:
                all_polled = clock.seconds() - start
    polls = {second - int(start): count for second, count in server.polls.items()}
    settled = [c for s, c in polls.items() if s >= 2 * interval]
    even = n / interval
    third = 2 * interval
    histogram = Counter(int((s - third) // args.bucket) for s, c in polls.items() for _ in range(c)
                        if third <= s < third + interval)
    return {
        "scenario": scenario, "gateways": n, "sleep": interval,
        "peak_first_minute": max((c for s, c in polls.items() if s < 60), default=0),
        "peak_after_two_intervals": max(settled, default=0),
        "even_rate": round(even, 1),
        "peak_over_even": round(max(settled, default=0) / even, 1),
        "refused_503": server.refused,
        "all_polled": all_polled,
        "third_interval_histogram": [histogram.get(b, 0) for b in range(int(interval // args.bucket))],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--scenarios", default="start,outage,busy")
    parser.add_argument("--sleep", default="00:05:00")
    parser.add_argument("--horizon", type=float, default=7200.0)
    parser.add_argument("--outage", type=float, default=1800.0)
    parser.add_argument("--rate", type=int, default=100)
    parser.add_argument("--retry-after", type=int, default=60)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--bucket", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    results = []
    print("| scenario | gateways | peak polls/s, first minute | peak polls/s from the third interval | even rate "
          "| peak / even | 503s | every gateway polled once | polls per 30 s of the third interval |")
    print("|---|---|---|---|---|---|---|---|---|")
    for scenario in args.scenarios.split(","):
        for n in (int(s) for s in args.sizes.split(",")):
            began = time.monotonic()
            r = simulate(scenario, n, args)
            r["wall_seconds"] = round(time.monotonic() - began, 1)
            results.append(r)
            print(f"| {scenario} | {n:,} | {r['peak_first_minute']} | {r['peak_after_two_intervals']} | "
                  f"{r['even_rate']:g} | {r['peak_over_even']:g} | {r['refused_503']:,} | "
                  f"{'-' if r['all_polled'] is None else format(r['all_polled'], '.0f') + ' s'} | "
                  f"{' '.join(str(c) for c in r['third_interval_histogram'])} |", flush=True)
    out = Path(__file__).resolve().parent / "results" / "fleet_polls.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
