"""Log events a test collects from twisted.logger's global publisher."""

from __future__ import annotations

from typing import Any

from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase


def capture_log_events(test: SynchronousTestCase) -> list[dict[str, Any]]:
    """Every log event from now until ``test`` ends, in a list that grows as they come."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    test.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events
