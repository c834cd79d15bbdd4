"""Publishing operation statuses on the local bus: retained, QoS 1, failures logged."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import maybeDeferred
from twisted.logger import Logger

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
        maybeDeferred(self.publish, topic or self.topic, data, 1, retain).addErrback(
            lambda f: self.log.failure("could not publish {what}", f, what=self.what)
        )
