"""Where the durable acknowledgement finds the journal: the gate the links service installs its hook in.

The broker's handlers (:mod:`gateway.broker.durable_ack`) and the bus ask the gate whether
a topic is persisted and, if so, hand the message to its hook, which appends it to the
journal stream of every link it goes to and says when that is durable.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure


#: ``(topic, payload, qos, retain) -> Deferred`` firing when the message is durable, or
#: ``None`` when there is nothing to wait for.
PersistHook = Callable[[str, bytes, int, bool], "Deferred[Any] | None"]
#: ``(topic, payload, qos, retain, on_durable, on_failed) -> bool``: the same without a
#: Deferred per message; ``False`` when there is nothing to wait for, else exactly one of
#: the two callbacks is called once (perhaps before it returns).
PersistThenHook = Callable[[str, bytes, int, bool, Callable[[object], object], Callable[[Failure], object]], bool]


class DurableGate:
    """Where the broker's handlers find the persist hook (installed by the links service).

    :ivar persist: the hook, or ``None`` (then the broker acknowledges at once).
    :ivar wants: whether a topic is persisted at all.
    :ivar failures: persist failures so far (each closed a connection unacknowledged).
    """

    def __init__(self) -> None:
        self.persist: PersistHook | None = None
        self.persist_then: PersistThenHook | None = None
        self.wants: Callable[[str], bool] = lambda topic: False
        self.failures = 0

    def install(self, persist: PersistHook, wants: Callable[[str], bool],
                persist_then: PersistThenHook | None = None) -> None:
        """Start persisting the topics ``wants`` accepts with ``persist``.

        :param persist_then: the same hook with callbacks instead of a Deferred (cheaper per
            message); client PUBLISHes use it when given.
        """
        self.persist, self.wants, self.persist_then = persist, wants, persist_then

    def remove(self) -> None:
        """Go back to immediate acknowledgements."""
        self.persist, self.wants, self.persist_then = None, lambda topic: False, None
