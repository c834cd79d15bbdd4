"""Publishing operation statuses on the local bus: retained, QoS 1, failures logged."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.errors import JournalError

#: ``publish(topic, payload, qos, retain)``: the broker bus's publish (may return a Deferred).
Publish = Callable[[str, bytes, int, bool], Any]


class StatusPublisher:
    """Sends one service's statuses on one topic, retained at QoS 1 so the last one stays
    readable locally and the default routes take it up through the journal.

    :param publish: the local bus's publish.
    :param topic: the status topic.
    :param what: names the statuses in log lines ("an update status").
    """

    log = Logger()

    def __init__(self, publish: Publish, topic: str, what: str) -> None:
        self.publish = publish
        self.topic = topic
        self.what = what

    def __call__(self, payload: dict[str, Any], topic: str | None = None, retain: bool = True) -> None:
        """Publish ``payload`` as sorted JSON.

        :param payload: the status.
        :param topic: another topic than the status topic (for example an outbox message).
        :param retain: keep it on the broker as the topic's last message.
        """
        data = json.dumps(payload, sort_keys=True).encode()
        maybeDeferred(self.publish, topic or self.topic, data, 1, retain).addErrback(self._not_published)

    def _not_published(self, failure: Failure) -> None:
        """Log a publish that failed: a journal that refused it (a stream full under its limits,
        a write the disk refused, the journal stopping; each counted and logged there) as a
        warning, anything else as the bug it is, with its traceback."""
        if failure.check(JournalError):
            self.log.warn("{what} not published: {error}", what=self.what, error=failure.value)
        else:
            self.log.failure("could not publish {what}", failure, what=self.what)
