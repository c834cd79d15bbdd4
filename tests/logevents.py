"""Log events a test collects from twisted.logger's global publisher."""

from __future__ import annotations

import re
from typing import Any, Callable

from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase


def capture_log_events(test: SynchronousTestCase) -> list[dict[str, Any]]:
    """Every log event from now until ``test`` ends, in a list that grows as they come."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    test.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events


def assert_one_line_then_summary(test: SynchronousTestCase, burst: Callable[[int], list[str]], line: str,
                                 clock: Any) -> None:
    """A cause logged through a 10 s :class:`~gateway.logthrottle.LogThrottle`: a burst of
    1,000 is ``line`` once without its count (:func:`first_line`: there was no line before),
    one more within 10 s is no line, the next after them is ``line`` again counting all 1,001
    held back and itself.

    :param burst: sends that many of the cause at once, returns the lines logged about it.
    :param line: the line, with ``{count}`` where its count goes.
    :param clock: the clock the throttle counts on (``advance``).
    """
    test.assertEqual(burst(1000), [first_line(line)])
    clock.advance(9)
    test.assertEqual(burst(1), [])
    clock.advance(1)
    test.assertEqual(burst(1), [line.format(count=1001)])


def first_line(line: str) -> str:
    """The first line of a throttled kind whose later lines are ``line`` (``{count}`` where
    their count goes, as ``"({count} refused since the last such line; logged ...)"``): the
    same without the count, as there was no such line before
    (:func:`gateway.logthrottle.since_last_line`)."""
    first = re.sub(r"\{count\} [^;()]*since the last such line; ", "", line)
    if first == line:
        raise ValueError(f"no count since the last such line in {line!r}")
    return first
