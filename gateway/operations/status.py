"""Publishing operation statuses on the local bus: retained, QoS 1, failures logged."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.clockstep import steady_seconds
from gateway.errors import BrokerError, JournalError
from gateway.logthrottle import NOT_PUBLISHED_LOG_INTERVAL, LogThrottle, not_published_since

#: ``publish(topic, payload, qos, retain)``: the broker bus's publish (may return a Deferred).
Publish = Callable[[str, bytes, int, bool], Any]


class StatusPublisher:
    """Sends one service's statuses on one topic, retained at QoS 1 so the last one stays
    readable locally and the default routes take it up through the journal.

    :param publish: the local bus's publish.
    :param topic: the status topic.
    :param what: names the statuses in log lines ("an update status").
    :param clock: counts the time between two lines about statuses the journal refused.
    """

    log = Logger()

    def __init__(self, publish: Publish, topic: str, what: str, clock: IReactorTime) -> None:
        self.publish = publish
        self.topic = topic
        self.what = what
        # (a stream full for hours refuses every status: a download's progress every few
        # seconds, an upload's at each chunk)
        self._refused_lines = LogThrottle(NOT_PUBLISHED_LOG_INTERVAL, lambda: steady_seconds(clock))

    def __call__(self, payload: dict[str, Any], topic: str | None = None, retain: bool = True) -> None:
        """Publish ``payload`` as sorted JSON.

        :param payload: the status.
        :param topic: another topic than the status topic (for example an outbox message).
        :param retain: keep it on the broker as the topic's last message.
        """
        data = json.dumps(payload, sort_keys=True).encode()
        maybeDeferred(self.publish, topic or self.topic, data, 1, retain).addCallbacks(self._published,
                                                                                     self._not_published)

    def _published(self, _: object) -> None:
        """A status published: the next refusal is news again."""
        self._refused_lines.reset()

    def _not_published(self, failure: Failure) -> None:
        """Log a publish that failed: a journal that refused it (a stream full under its limits,
        a write the disk refused, the journal stopping; each counted and logged there) or a
        broker that is not running (stopping, or failed to start) as a
        warning, the first, then at most one per :data:`NOT_PUBLISHED_LOG_INTERVAL` until one
        is published; anything else as the bug it is, with its traceback."""
        if failure.check(JournalError, BrokerError):
            count = self._refused_lines.note()
            if count is not None:
                self.log.warn("{what} not published: {error} ({since})", what=self.what, error=failure.value,
                              since=not_published_since(count))
        else:
            self.log.failure("could not publish {what}", failure, what=self.what)
