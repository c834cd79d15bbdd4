"""When the fleet service's next DDI request may go: the wait between polls and its jitter, the
backoff after failures, and the hold a server's ``Retry-After`` puts on every request."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.clockstep import CLOCK_SET_SINCE, steady_seconds
from gateway.fleet.ddi import DDIError
from gateway.httpdate import MAX_RETRY_AFTER
from gateway.fleet.settings import FleetSettings

#: The longest ``config.polling.sleep`` taken from the server, in seconds: a day (hawkBit's own
#: limit is 23:59:59); a longer one (a mistake, a lie) would stop polling until a restart.
MAX_SLEEP = 86400.0
#: The spread of the wait after the first poll that goes well after a start or after failed polls
#: (a factor in 1 ± this, whatever ``poll_jitter``): a fleet restarted together (a power cut at a
#: site) or back together (the server's outage ended) spreads over a whole interval from then on.
RESPREAD = 0.5
#: The longest hold by the server's ``Retry-After`` a start keeps to, in seconds: the longest one
#: taken (a day) and half of it more; a wall clock stepped back since it was saved makes it no longer.
MAX_HOLD = 1.5 * MAX_RETRY_AFTER


class RequestPacing:
    """The waits of one fleet service, each drawn at random in its range so that a fleet spreads.

    :param settings: the ``fleet`` section (``min_poll_interval``, ``retry_max_delay``).
    :param clock: the reactor's clock.
    :param uniform: ``random.uniform`` (tests pass a fixed one).
    """

    def __init__(self, settings: FleetSettings, clock: Any, uniform: Callable[[float, float], float]) -> None:
        self.settings = settings
        self.clock = clock
        self.uniform = uniform
        #: the steady time before which no request goes to the server (its Retry-After, spread)
        self.held_until = 0.0
        #: the steady time before which the first poll does not go (:meth:`first_poll_after`)
        self.first_poll_at = 0.0

    def first_poll_wait(self) -> float:
        """The wait before the first poll: a random part of ``min_poll_interval`` (a fleet restarted
        together spreads out), at least until :attr:`first_poll_at`."""
        return max(float(self.uniform(0.0, self.settings.min_poll_interval)),
                   self.first_poll_at - steady_seconds(self.clock))

    def first_poll_after(self, last_success: float) -> None:
        """Keep to the pace of the service a configuration change replaced, on the same server: the
        first poll comes ``min_poll_interval`` after its last poll that went well (``last_success``,
        on the steady clock) at the soonest."""
        self.first_poll_at = last_success + self.settings.min_poll_interval

    def poll_wait(self, sleep: float, jitter: float) -> float:
        """The wait before the next poll: ``sleep`` (at least ``min_poll_interval``) times a random
        factor in 1 ± ``jitter``, the range moved up where it would start below ``min_poll_interval``
        (never sooner than that)."""
        base = max(sleep, self.settings.min_poll_interval)
        low = max(self.settings.min_poll_interval, base * (1 - jitter))
        return float(self.uniform(low, low + 2 * jitter * base))

    def backoff(self, failures: int) -> float:
        """The wait after ``failures`` in a row: half to all of ``min_poll_interval × 2^failures``,
        at most ``retry_max_delay``."""
        cap = min(self.settings.retry_max_delay, self.settings.min_poll_interval * 2 ** min(failures, 30))
        return float(self.uniform(cap / 2, cap))

    def hold(self, error: DDIError) -> float | None:
        """Hold every request back as the server's ``Retry-After`` asks: at least that, plus a random
        part of up to half of it, at most ``retry_max_delay`` more (a fleet told to wait together
        comes back spread).

        :returns: the seconds from now the hold lasts when ``error`` made it longer, else None (no
            ``Retry-After``, or a hold in force already lasts as long).
        """
        if error.retry_after is None:
            return None
        wait = error.retry_after
        wait = float(self.uniform(wait, wait + min(wait / 2, self.settings.retry_max_delay)))
        now = steady_seconds(self.clock)
        if now + wait <= self.held_until:
            return None
        self.held_until = now + wait
        return wait

    def resume(self, until: float) -> None:
        """Keep to a hold saved before a restart (a configuration change, a reboot): until
        ``until`` (seconds since the epoch, the wall clock), :data:`MAX_HOLD` from now at most;
        none when ``until`` was read off a set clock and this one is not set yet (a reboot
        without a real-time clock, at 1970: every hold, ended or not, looked decades ahead)."""
        now = self.clock.seconds()
        if now < CLOCK_SET_SINCE <= until:
            return
        held = min(until - now, MAX_HOLD)
        if held > 0:
            self.held_until = steady_seconds(self.clock) + held

    def held_for(self) -> float:
        """The seconds the hold lasts from now (0 or less when none is in force)."""
        return self.held_until - steady_seconds(self.clock)
