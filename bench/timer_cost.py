"""CPU of the reactor's ``callLater(0)`` against the asyncio loop's ``call_soon``, on the
gateway's reactor (Twisted's asyncio reactor), with a far timer pending as in the gateway.

Prints µs of CPU per loop turn: one ``callLater(0)`` a turn, ``--per-turn`` of them a turn
(the marginal cost of one more is the difference over ``per-turn - 1``), and one
``call_soon`` a turn.

    .venv/bin/python bench/timer_cost.py [--turns 20000] [--per-turn 6]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any, Callable

from twisted.internet import asyncioreactor


def main() -> int:
    """Run the three chains one after another and print their costs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=20000)
    parser.add_argument("--per-turn", type=int, default=6)
    args = parser.parse_args()
    loop = asyncio.new_event_loop()
    asyncioreactor.install(loop)
    from twisted.internet import reactor
    r: Any = reactor
    r.callLater(1000, lambda: None)  # the gateway always has far timers (keepalives, sweeps)
    results: dict[str, float] = {}

    def chain(name: str, schedule: Callable[[Callable[[], None]], None], extra: int, then: Callable[[], None]) -> None:
        done = [0]
        started = time.process_time()

        def turn() -> None:
            done[0] += 1
            if done[0] > args.turns:
                results[name] = (time.process_time() - started) / args.turns * 1e6
                then()
                return
            for _ in range(extra):
                schedule(lambda: None)
            schedule(turn)
        turn()

    later: Callable[[Callable[[], None]], None] = lambda f: r.callLater(0, f)  # noqa: E731
    soon: Callable[[Callable[[], None]], None] = loop.call_soon
    steps = [("callLater(0), 1 a turn", later, 0), (f"callLater(0), {args.per_turn} a turn", later, args.per_turn - 1),
             ("call_soon, 1 a turn", soon, 0)]

    def run(i: int) -> None:
        if i == len(steps):
            r.stop()
            return
        name, schedule, extra = steps[i]
        loop.call_soon(chain, name, schedule, extra, lambda: loop.call_soon(run, i + 1))

    r.callWhenRunning(run, 0)
    r.run()
    for name, us in results.items():
        print(f"{name}: {us:.2f} us of CPU per turn")
    one, many = results["callLater(0), 1 a turn"], results[f"callLater(0), {args.per_turn} a turn"]
    print(f"one more callLater(0) in a turn: {(many - one) / (args.per_turn - 1):.2f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
