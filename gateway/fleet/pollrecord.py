"""How the fleet service's polls went: how many, how many failed (in a row, since when), the last
failure's cause, and the log lines about them (at most one per cause and interval)."""

from __future__ import annotations

from typing import Any, Literal

from twisted.logger import Logger

from gateway.clockstep import steady_seconds
from gateway.logthrottle import LogThrottle

#: Seconds between two log lines about failed polls for the same cause, at least (a short
#: ``retry_max_delay`` polls a server that is away every minute, a day long).
FAILING_LOG_INTERVAL = 600.0


class PollRecord:
    """The polls of one fleet service since it started, for its snapshot and its log.

    :param clock: the reactor's clock.
    :param log: the service's logger (its lines keep the service's namespace).
    """

    def __init__(self, clock: Any, log: Logger) -> None:
        self.clock = clock
        self.log = log
        #: polls tried and, of those, failed, since the start
        self.polls = 0
        self.failures = 0
        #: polls failed in a row (0: the last poll went well)
        self.in_row = 0
        #: when the first of the failed polls in a row failed, on the steady clock (None: the last poll went well)
        self.failing_since: float | None = None
        #: the cause of the last failure (a poll's, a feedback's), cleared once a poll goes well
        self.last_error = ""
        #: the cause of the last failed poll (a feedback's failure since is no new cause of the polls')
        self._poll_cause = ""
        #: whether the last failed poll's cause differs from the failed poll's before it
        self._new_cause = False
        #: for the snapshot: the last failure's cause and time (kept after a poll went well again)
        self.shown_error = ""
        self.shown_error_at: float | None = None
        #: when the last poll ended, how, and when a poll last went well (wall clock)
        self.last_poll_at: float | None = None
        self.last_outcome: Literal["ok", "failed", ""] = ""
        self.last_success_at: float | None = None
        #: when a poll last went well on the steady clock (a configuration change's restart keeps to its pace)
        self.last_success_steady: float | None = None
        self._failing_lines = LogThrottle(FAILING_LOG_INTERVAL, lambda: steady_seconds(clock))

    def error(self, reason: str) -> None:
        """Note the cause of a failure (a poll's, a feedback's) and its time."""
        self.last_error = self.shown_error = reason
        self.shown_error_at = self.clock.seconds()

    def failed(self, reason: str) -> int:
        """Count a failed poll and its cause; the polls failed in a row, this one included."""
        if not self.in_row:
            self.failing_since = steady_seconds(self.clock)
        self.in_row += 1
        self.polls += 1
        self.failures += 1
        self.error(reason)
        self._new_cause = reason != self._poll_cause
        self._poll_cause = reason
        self.last_poll_at, self.last_outcome = self.clock.seconds(), "failed"
        return self.in_row

    def failure_to_log(self) -> bool:
        """Whether the failed poll just counted (:meth:`failed`) is logged: the first of a run, one
        whose cause differs from the failed poll's before it (a feedback's failure between them is
        none), else at most one per :data:`FAILING_LOG_INTERVAL` (its count in a row says how many
        failed meanwhile)."""
        if self.in_row == 1 or self._new_cause:
            self._failing_lines.reset()
        return self._failing_lines.note() is not None

    def succeeded(self) -> bool:
        """Count a poll that went well (logging the end of a run of failed ones); whether the
        poll before it went well too (not the first after a start or after failed polls)."""
        if self.in_row:
            self._failing_lines.reset()  # (the next failed poll is logged at once)
            down = steady_seconds(self.clock) - (self.failing_since or steady_seconds(self.clock))
            self.log.info("fleet polls succeed again after {failures} failed in a row ({down:.0f}s down; the "
                          "last: {error})", failures=self.in_row, down=down, error=self.last_error)
        self.in_row, self.last_error, self.failing_since = 0, "", None
        self.polls += 1
        settled = self.last_outcome == "ok"
        self.last_poll_at = self.last_success_at = self.clock.seconds()
        self.last_success_steady = steady_seconds(self.clock)
        self.last_outcome = "ok"
        return settled
