"""Where the durable acknowledgement finds the journal: the gate the links service installs its hook in.

The broker's handlers (:mod:`gateway.broker.durable_ack`) and the bus ask the gate whether
a topic is persisted and, if so, hand the message to its hook, which appends it to the
journal stream of every link it goes to and says when that is durable.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure


#: ``(topic, payload, qos, retain, on_durable, on_failed) -> bool``: start appending a
#: message to the journal; ``False`` when there is nothing to wait for (QoS 0, or routed
#: nowhere), else exactly one of the two callbacks is called once (perhaps before it returns).
PersistThenHook = Callable[[str, bytes, int, bool, Callable[[object], object], Callable[[Failure], object]], bool]


class DurableGate:
    """Where the broker's handlers and the bus find the one persist hook (the links service's).

    Every append of a local message starts in that hook
    (:meth:`gateway.links.service.LinksService.persist_then`).

    :ivar persist_then: the hook, or ``None`` (then the broker acknowledges at once).
    :ivar wants: whether a topic is persisted at all.
    :ivar failures: persist failures so far (each closed a connection unacknowledged).
    """

    def __init__(self) -> None:
        self.persist_then: PersistThenHook | None = None
        self.wants: Callable[[str], bool] = lambda topic: False
        self.failures = 0

    def install(self, persist_then: PersistThenHook, wants: Callable[[str], bool]) -> None:
        """Start persisting the topics ``wants`` accepts with ``persist_then``."""
        self.persist_then, self.wants = persist_then, wants

    def remove(self) -> None:
        """Go back to immediate acknowledgements."""
        self.persist_then, self.wants = None, lambda topic: False

    def persist(self, topic: str, payload: bytes, qos: int, retain: bool) -> Deferred[Any] | None:
        """The hook as a Deferred: fires once the message is durable; ``None`` when nothing is
        persisted for it (no hook, a topic no link routes, or QoS 0)."""
        hook = self.persist_then
        if hook is None or not self.wants(topic):
            return None
        d: Deferred[Any] = Deferred()
        return d if hook(topic, payload, qos, retain, d.callback, d.errback) else None
