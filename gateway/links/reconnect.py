"""The link's reconnect schedule, fleet-safe: full-jitter backoff that also counts what
``ClientService`` cannot see, and spreads a fleet evenly once its windows are full.

``ClientService`` counts failed TCP connects only, and starts its count again at every TCP
connection: a connection that is made and then refused by the broker (CONNACK return code)
or dropped a moment after CONNACK would bring a plain policy back to its first, shortest
window, however long the link had been failing before (a fleet flapping at full speed
against a broker in trouble, or coming back after an outage in a few short windows). This
policy keeps its own count of consecutive failures until a connection has lasted, and:

- never lets one client id send CONNECT more often than once per ``min_interval`` (1 s:
  AWS IoT's limit per client id; EMQX bans faster reconnectors);
- counts a connection that drops within ``stable_after`` seconds of its CONNACK as a failure,
  and one that ends before a CONNACK accepted it; only a connection that lasted that long
  resets the count;
- keeps the failed TCP connects ClientService counted when a TCP connection is then made,
  so a broker's refusal after an outage does not shrink the window back to its start;
- treats CONNACK code 3 ("server unavailable": the broker is shedding load) as a failure that
  skips ``unavailable_skip`` more steps ahead in the backoff, so the retry window grows
  faster than after a plain network failure;
- once the window has reached its cap, retries on a fixed cadence of one cap, at an offset
  drawn once (uniformly in the cap): a fleet that has been failing for a while then reaches
  the broker evenly, N/cap CONNECTs a second. Drawing afresh from ``[0, cap]`` at every retry
  (plain full jitter) would not: its retries are on average half a cap apart, so when the
  broker comes back the pending ones are crowded towards its return (2N/cap a second at
  first, tailing off to nothing at one cap).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

from gateway.clockstep import steady_seconds

#: CONNACK return code 3 (MQTT 3.1.1 §3.2.2.3).
SERVER_UNAVAILABLE = 3


class ReconnectPolicy:
    """A ``ClientService`` ``retryPolicy`` (``attempt -> seconds``) told of connection events.

    :param clock: the reactor's clock.
    :param initial: first backoff ceiling (s).
    :param factor: ceiling growth per failure.
    :param cap: the largest ceiling (s), and the cadence of retries once it is reached.
    :param stable_after: a connection shorter than this after CONNACK counts as a failure (s).
    :param min_interval: least time between two CONNECTs of this client (s).
    :param unavailable_skip: extra backoff steps for a CONNACK code 3.
    :param uniform: the jitter draw (``random.uniform``: full jitter; benches try others).
    :param cadence: once at the cap, retry every ``cap`` at one drawn offset (False: draw
        afresh from the whole window every time, plain full jitter).
    """

    def __init__(self, clock: Any, initial: float, factor: float, cap: float, stable_after: float = 60.0,
                 min_interval: float = 1.0, unavailable_skip: int = 1,
                 uniform: Callable[[float, float], float] = random.uniform, cadence: bool = True) -> None:
        self.clock = clock
        self.initial = initial
        self.factor = factor
        self.cap = cap
        self.uniform = uniform
        self.cadence = cadence
        self.stable_after = stable_after
        self.min_interval = min_interval
        self.unavailable_skip = unavailable_skip
        #: failures since the last stable connection that ClientService did not count
        #: (refusals, early drops, and its own count from before its last TCP connection).
        self.failures = 0
        self.last_attempt = 0
        self.last_connect: float | None = None
        self.accepted_at: float | None = None
        #: when the next retry on the cap's cadence is due (None: not at the cap).
        self.slot: float | None = None

    def ceiling(self, step: int) -> float:
        """The window after ``step`` consecutive failures: ``min(cap, initial * factor**step)``."""
        return self.cap if step > 64 else min(self.cap, self.initial * self.factor ** step)

    def connect_sent(self) -> None:
        """A CONNECT goes out now (a TCP connection was made: ClientService's count restarts)."""
        self.last_connect = steady_seconds(self.clock)
        # ClientService's attempt 1 after a connection is that connection's end (counted
        # already, by lost() or refused()); the failed connects since are the rest.
        self.failures += max(self.last_attempt - 1, 0)
        self.last_attempt = 0

    def accepted(self) -> None:
        """CONNACK accepted the session."""
        self.accepted_at = steady_seconds(self.clock)

    def refused(self, code: int) -> None:
        """CONNACK refused the session with ``code``."""
        self.failures += 1 + (self.unavailable_skip if code == SERVER_UNAVAILABLE else 0)

    def not_accepted(self) -> None:
        """A connection ended before a CONNACK accepted it (none came in time, the server
        closed, or it sent a malformed one): a failed attempt, as a refusal is."""
        self.failures += 1

    def lost(self) -> None:
        """An accepted connection ended: a short one is a failure, a stable one resets the count."""
        if self.accepted_at is None:
            return
        lasted = steady_seconds(self.clock) - self.accepted_at
        self.accepted_at = None
        if lasted < self.stable_after:
            self.failures += 1
        else:
            self.failures = 0
            self.slot = None

    def __call__(self, attempt: int) -> float:
        """The delay before the next connect, ``attempt`` being ClientService's count."""
        now = steady_seconds(self.clock)
        self.last_attempt = attempt
        ceiling = self.ceiling(attempt + self.failures)
        if ceiling < self.cap or not self.cadence:
            self.slot = None
            delay = self.uniform(0.0, ceiling)
        elif self.slot is None:
            delay = self.uniform(0.0, ceiling)
        else:
            slot = self.slot
            if slot <= now:  # (the last retry's slot has passed: the next one on the cadence)
                slot += (math.floor((now - slot) / self.cap) + 1) * self.cap
            delay = slot - now
        if self.last_connect is not None:
            delay = max(delay, self.last_connect + self.min_interval - now)
        if ceiling >= self.cap and self.cadence:
            self.slot = now + delay
        return delay
