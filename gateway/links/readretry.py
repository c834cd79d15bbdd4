"""The retry of a failed read of a journal stream: a timer, a throttle for its log lines, and
a link's words for them."""

from __future__ import annotations

from functools import partial
from typing import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.clockstep import steady_seconds
from gateway.errors import JournalError
from gateway.logthrottle import LogThrottle

#: Seconds before a read of a stream that failed (EMFILE, an I/O error) is tried again.
READ_RETRY_INTERVAL = 1.0
#: Seconds between two log lines of reads that keep failing, at least.
READ_FAILURE_LOG_INTERVAL = 60.0


class ReadRetry:
    """Tries a stream's failed read again: a reader whose read failed has nothing else that
    would read again (no read under way, no wake-up of the stream awaited), so ``read`` is
    called again ``retry_interval`` seconds after a failure. The reader logs the failure
    itself, in its own words (which name both intervals), when :meth:`failed` says a line is
    due: the first failure, then at most once per ``log_interval``.

    :param clock: for the retry and the throttle.
    :param read: starts a read of the stream again.
    :param retry_interval: seconds from a failed read to the next (:data:`READ_RETRY_INTERVAL`).
    :param log_interval: seconds between two log lines, at least (:data:`READ_FAILURE_LOG_INTERVAL`).
    """

    def __init__(self, clock: IReactorTime, read: Callable[[], None], retry_interval: float,
                 log_interval: float) -> None:
        self.clock = clock
        self.read = read
        self.retry_interval = retry_interval
        #: reads failed in a row (until :meth:`succeeded`)
        self.failures = 0
        self._lines = LogThrottle(log_interval, partial(steady_seconds, clock))
        self._timer: IDelayedCall | None = None
        self._stopped = False

    def failed(self) -> int | None:
        """A read failed: count it and call ``read`` again after ``retry_interval`` (unless that call is due already, or after :meth:`stop`).

        :return: when a log line is due, the failed reads it stands for (these and the ones
            since the last line); else None.
        """
        self.failures += 1
        if self._timer is None and not self._stopped:
            self._timer = self.clock.callLater(self.retry_interval, self._again)
        return self._lines.note()

    def succeeded(self) -> int:
        """A read succeeded: the failures are over (the next one is logged at once).

        :return: the reads failed in a row before it (0: none).
        """
        failures, self.failures = self.failures, 0
        if failures:
            self._lines.reset()
        return failures

    def stop(self) -> None:
        """The reader stops: no read is tried again any more."""
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _again(self) -> None:
        self._timer = None
        self.read()


def log_read_failed(log: Logger, link: str, failures: int, failure: Failure) -> None:
    """Say that a link's read of its journal stream failed, when :meth:`ReadRetry.failed` says
    a line is due: in words for an ``OSError`` or a ``JournalError`` (out of file descriptors,
    an I/O error), with its traceback for anything else (a bug).

    :param log: the link's logger.
    :param link: the link's name.
    :param failures: reads failed in a row (:attr:`ReadRetry.failures`).
    :param failure: the read's failure.
    """
    if failure.check(OSError, JournalError):
        log.error("link {link}: reading its journal stream failed ({count} in a row; tried again every"
                  " {interval:g} s, logged at most once a minute): {error}", link=link, count=failures,
                  interval=READ_RETRY_INTERVAL, error=failure.getErrorMessage())
    else:
        log.failure("link {link}: reading its journal stream failed ({count} in a row)", failure, link=link,
                    count=failures)


def log_read_again(log: Logger, link: str, failures: int) -> None:
    """Say that a link reads its journal stream again, when reads had failed before
    (``failures``: :meth:`ReadRetry.succeeded`'s answer; 0 says nothing)."""
    if failures:
        log.info("link {link}: its journal stream is read again, after {count} failed reads", link=link,
                 count=failures)
