"""Benchmark: a fleet's reconnect storm after a cloud broker outage, simulated with task.Clock.

N gateways (100, 1,000, 10,000) each run one real cloud link (:class:`gateway.links.mqtt.MQTTLink`:
its ClientService, the fleet-safe :class:`gateway.links.reconnect.ReconnectPolicy`, the MQTT
client protocol, the forwarder and its drain rate limit) against one in-memory broker
(``bench/fleetsim.py``). The broker runs, goes down for ``--outage`` seconds (every connection
drops; each gateway's backlog grows by one record per ``--interval`` seconds of outage), and
comes back accepting at most R CONNECT/s (``--rate``, 500: AWS IoT's per-account limit),
answering the rest CONNACK 3 (server unavailable).

Reported per N and per jitter (full jitter as the gateway ships; none; +/-5 % as some SDKs
ship; ``full-redraw``: full jitter without the policy's cadence at the cap, a fresh draw
from the whole window at every retry), each with the links' default ``backoff_max`` unless
``--backoff-max`` lists others, from the broker's return: the peak CONNECT attempts in one second, the peak after the
first 10 s, refused CONNECTs, the time until every link is connected and until every backlog
is drained (at ``--drain`` messages/s per link), and the goal: at most R attempts in every
second after the first 10 s, all connected within N/R x 1.5.

Run: ``.venv/bin/python bench/fleet.py [--sizes 100,1000,10000] [--rate 500] [--outage 30]``. Prints a
table and writes ``bench/results/fleet.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fleetsim import FleetReactor  # noqa: E402
from gateway.journal.record import Record  # noqa: E402
from gateway.links.mqtt import MQTTLink  # noqa: E402
from gateway.links.settings import LinkSettings  # noqa: E402
from tests.links.memory import MemoryStream  # noqa: E402

JITTERS: dict[str, Callable[[random.Random], Callable[[float, float], float]]] = {
    "full": lambda rng: rng.uniform,
    "none": lambda rng: (lambda low, high: high),
    "5%": lambda rng: (lambda low, high: high * rng.uniform(0.95, 1.05)),
}


def simulate(n: int, jitter: str, rate: int, outage: float, interval: float, drain: float,
             seed: int = 1, horizon: float = 900.0, backoff_max: float | None = None,
             backoff_factor: float | None = None) -> dict[str, Any]:
    """One run; returns its figures (times in seconds from the broker's return).

    ``jitter`` is a key of :data:`JITTERS`, with ``-redraw`` appended for the policy without
    its cadence at the cap (a fresh draw from the whole window at every retry).
    ``backoff_max``, ``backoff_factor`` None: the links' defaults.
    """
    cadence = not jitter.endswith("-redraw")
    draw = jitter.removesuffix("-redraw")
    rng = random.Random(seed)
    random.seed(seed)
    reactor = FleetReactor()
    broker = reactor.broker
    settings = LinkSettings(endpoint="tcp:host=10.0.0.1:port=1883", rate_messages=drain, loss_topic=None,
                            client_id="{device}")
    if backoff_max is not None:
        settings = dataclasses.replace(settings, backoff_max=backoff_max)
    if backoff_factor is not None:
        settings = dataclasses.replace(settings, backoff_factor=backoff_factor)
    links = []
    for i in range(n):
        link = MQTTLink("cloud", settings, MemoryStream(f"gw{i}"), reactor, ("fleet", f"gw{i}"),
                        lambda *a: None, lambda *a: None)
        assert link.reconnect is not None
        link.reconnect.uniform = JITTERS[draw](rng)
        link.reconnect.cadence = cadence
        links.append(link)
    # A fleet that booted together, connected and stable (past stable_after) before the outage.
    for link in links:
        link.start()
    reactor.advance(0)
    for _ in range(int(settings.stable_after) + 20):
        reactor.advance(1)
    assert all(link.is_connected for link in links), "not all connected before the outage"
    down_at = reactor.seconds()
    broker.go_down()
    backlog = max(1, int(outage / interval))
    for link in links:
        for k in range(backlog):
            record = Record("telemetry/fleet/reading", b"x" * 64, 1, False, down_at + k * interval)
            link.stream.append(record)
    while reactor.seconds() < down_at + outage:
        reactor.advance(0.1)
    broker.attempts.clear()
    broker.refused.clear()
    back = reactor.seconds()
    broker.rate = rate  # (the fleet's first connect, before the outage, was not limited)
    broker.come_back()
    all_connected = all_drained = None
    while reactor.seconds() < back + horizon:
        reactor.advance(0.1)
        now = reactor.seconds() - back
        if all_connected is None and all(link.is_connected for link in links):
            all_connected = now
        if all_connected is not None and all(link.stream.unacked(link.forwarder.cursor) == 0 for link in links):
            all_drained = now
            break
    start = int(back)
    per_second = [broker.attempts.get(start + s, 0) for s in range(int(horizon))]
    last = max((s for s, v in enumerate(per_second) if v), default=0)
    per_second = per_second[:last + 1]
    after10 = max(per_second[10:], default=0)
    limit = n / rate * 1.5 if rate else 0.0
    for link in links:
        link.stop()
    reactor.advance(5)
    return {
        "gateways": n, "jitter": jitter, "backoff_max": settings.backoff_max, "backoff_factor": settings.backoff_factor, "cadence": cadence, "rate": rate, "outage_s": outage, "backlog_per_gateway": backlog,
        "drain_msgs_per_s": drain, "peak_attempts_per_s": max(per_second, default=0),
        "peak_after_10s": after10, "attempts": sum(per_second), "refused": sum(broker.refused.values()),
        "all_connected_s": all_connected, "all_drained_s": all_drained, "r_limited_s": n / rate if rate else 0.0,
        "goal_met": all_connected is not None and after10 <= rate and all_connected <= max(limit, 10.0),
        "attempts_per_second": per_second[:120],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--jitters", default="full,none,5%,full-redraw",
                        help="draws (full, none, 5%%), -redraw: without the cadence at the cap")
    parser.add_argument("--rate", type=int, default=500, help="CONNECTs the broker accepts per second")
    parser.add_argument("--outage", type=float, default=30.0, help="seconds the broker is away")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between a gateway's records")
    parser.add_argument("--drain", type=float, default=20.0, help="backlog drain rate per link (msgs/s)")
    parser.add_argument("--backoff-max", default="default", help="links' backoff_max values to compare (comma-separated)")
    parser.add_argument("--backoff-factor", type=float, default=None, help="links' backoff_factor (default: theirs)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "fleet.json"))
    args = parser.parse_args()
    rows = []
    print(f"{'gateways':>8} {'cap':>4} {'jitter':>11} {'peak/s':>7} {'peak>10s':>8} {'refused':>8} {'connected':>10} "
          f"{'drained':>8} {'N/R':>5} {'goal':>5} {'wall':>6}")
    for n, cap, jitter in ((int(s), float(c), j) for s in args.sizes.split(",")
                           for c in args.backoff_max.replace("default", "0").split(",") for j in args.jitters.split(",")):
        if True:
            began = time.monotonic()
            row = simulate(n, jitter, args.rate, args.outage, args.interval, args.drain, backoff_max=cap or None,
                           backoff_factor=args.backoff_factor)
            row["wall_s"] = round(time.monotonic() - began, 1)
            rows.append(row)

            def fmt(value: float | None) -> str:
                return "never" if value is None else f"{value:.1f}"

            print(f"{n:>8} {row['backoff_max']:>4g} {jitter:>11} {row['peak_attempts_per_s']:>7} {row['peak_after_10s']:>8} "
                  f"{row['refused']:>8} {fmt(row['all_connected_s']):>10} {fmt(row['all_drained_s']):>8} "
                  f"{row['r_limited_s']:>5.1f} {'yes' if row['goal_met'] else 'no':>5} {row['wall_s']:>6}",
                  flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
