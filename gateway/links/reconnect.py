"""The link's reconnect schedule, fleet-safe: full-jitter backoff that also counts what
``ClientService`` cannot see.

``ClientService`` counts failed TCP connects only: a connection that is made and then
refused by the broker (CONNACK return code) or dropped a moment after CONNACK resets its
count, so a plain policy would reconnect at the first delay for ever (a fleet flapping at
full speed against a broker in trouble). This policy also counts those, and:

- never lets one client id send CONNECT more often than once per ``min_interval`` (1 s:
  AWS IoT's limit per client id; EMQX bans faster reconnectors);
- counts a connection that drops within ``stable_after`` seconds of its CONNACK as a failure;
  only a connection that lasted that long resets the count;
- treats CONNACK code 3 ("server unavailable": the broker is shedding load) as a failure that
  skips ``unavailable_skip`` more steps ahead in the backoff, so the retry window grows
  faster than after a plain network failure.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from gateway.links.endpoint import full_jitter_backoff

#: CONNACK return code 3 (MQTT 3.1.1 §3.2.2.3).
SERVER_UNAVAILABLE = 3


class ReconnectPolicy:
    """A ``ClientService`` ``retryPolicy`` (``attempt -> seconds``) told of connection events.

    :param clock: the reactor's clock.
    :param initial: first backoff ceiling (s).
    :param factor: ceiling growth per failure.
    :param cap: the largest ceiling (s).
    :param stable_after: a connection shorter than this after CONNACK counts as a failure (s).
    :param min_interval: least time between two CONNECTs of this client (s).
    :param unavailable_skip: extra backoff steps for a CONNACK code 3.
    :param uniform: the jitter draw (``random.uniform``: full jitter; benches try others).
    """

    def __init__(self, clock: Any, initial: float, factor: float, cap: float, stable_after: float = 60.0,
                 min_interval: float = 1.0, unavailable_skip: int = 1,
                 uniform: Callable[[float, float], float] = random.uniform) -> None:
        self.clock = clock
        self.backoff = full_jitter_backoff(initial, factor, cap, uniform)
        self.stable_after = stable_after
        self.min_interval = min_interval
        self.unavailable_skip = unavailable_skip
        #: failures since the last stable connection that ClientService did not count.
        self.failures = 0
        self.last_connect: float | None = None
        self.accepted_at: float | None = None

    def connect_sent(self) -> None:
        """A CONNECT goes out now."""
        self.last_connect = self.clock.seconds()

    def accepted(self) -> None:
        """CONNACK accepted the session."""
        self.accepted_at = self.clock.seconds()

    def refused(self, code: int) -> None:
        """CONNACK refused the session with ``code``."""
        self.failures += 1 + (self.unavailable_skip if code == SERVER_UNAVAILABLE else 0)

    def lost(self) -> None:
        """An accepted connection ended: a short one is a failure, a stable one resets the count."""
        if self.accepted_at is None:
            return
        lasted = self.clock.seconds() - self.accepted_at
        self.accepted_at = None
        self.failures = self.failures + 1 if lasted < self.stable_after else 0

    def __call__(self, attempt: int) -> float:
        """The delay before the next connect, ``attempt`` being ClientService's count."""
        delay = self.backoff(attempt + self.failures)
        if self.last_connect is not None:
            delay = max(delay, self.last_connect + self.min_interval - self.clock.seconds())
        return delay

