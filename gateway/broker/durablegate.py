"""Where the durable acknowledgement finds the journal: the gate the links service installs its hook in.

The broker's handlers (:mod:`gateway.broker.durable_ack`) and the bus ask the gate whether
a topic is persisted and, if so, hand the message to its hook, which appends it to the
journal stream of every link it goes to and says when that is durable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure


#: A local publish on its way into the journal: ``(topic, payload, qos, retain)``.
LocalMessage = tuple[str, bytes, int, bool]

class PersistHook(Protocol):
    """``(messages, on_durable, on_failed) -> bool``: start appending local publishes, in order,
    to the journal; ``False`` when nothing is appended (routed nowhere), else exactly one of
    the two callbacks is called once, for all of them (perhaps before it returns). Messages
    all of QoS 0 are waited for by nobody, but the broker counts them while they are in memory:
    ``on_durable`` is called for them once the journal is done with them, durable or refused
    (the hook logs a refusal; ``on_failed`` is for a batch with a QoS 1/2 message).
    ``reserved=True`` (the gateway's command replies) lets the appends use each stream's
    reserve (``gateway.journal.retention.RESERVED_BYTES``), as the links' loss reports do."""

    def __call__(self, messages: Sequence[LocalMessage], on_durable: Callable[[object], object],
                 on_failed: Callable[[Failure], object], *, reserved: bool = False) -> bool:
        """Start appending ``messages``; see the class."""


class DurableGate:
    """Where the broker's handlers and the bus find the one persist hook (the links service's).

    Every append of a local message starts in that hook
    (:meth:`gateway.links.service.LinksService.persist_many`).

    :ivar persist_many: the hook, or ``None`` (no link routes anything: the broker
        acknowledges at once). Once installed it stays for the life of the broker; the
        links' hook refuses after they stopped.
    :ivar wants: whether a topic is persisted at all.
    :ivar failures: persist failures so far (each closed a connection unacknowledged).
    :ivar holds: times the broker stopped reading from a client because too many of its
        PUBLISHes waited: acknowledgements and QoS 0 messages for the disk, PUBLISHes for
        the topic plugins (:data:`~gateway.broker.durable_ack.DURABLE_WAIT_LIMIT`).
    """

    log = Logger()

    def __init__(self) -> None:
        self.persist_many: PersistHook | None = None
        self.wants: Callable[[str], bool] = _nothing
        self.failures = 0
        self.holds = 0
        self._due: list[Callable[[], object]] = []  # handlers' flushes for the end of this turn

    def flush_soon(self, flush: Callable[[], object], clock: IReactorTime) -> None:
        """Call ``flush`` (a handler's sending of its acknowledgements that are ready) at the
        end of this reactor turn, with those of every other handler that asks in the same turn,
        in the order they asked: a group commit makes the PUBLISHes of many clients durable at
        once, and one timer for all of them costs less than one per client."""
        due = self._due
        due.append(flush)
        if len(due) == 1:
            clock.callLater(0, self._flush_due)

    def _flush_due(self) -> None:
        due, self._due = self._due, []
        for flush in due:
            try:
                flush()
            except Exception:  # (one handler's error must not hold the others' acknowledgements)
                self.log.failure("sending acknowledgements failed")

    def install(self, persist_many: PersistHook, wants: Callable[[str], bool]) -> None:
        """Start persisting the topics ``wants`` accepts with ``persist_many``."""
        self.persist_many, self.wants = persist_many, wants

    def persist(self, topic: str, payload: bytes, qos: int, retain: bool,
                reserved: bool = False) -> Deferred[Any] | None:
        """The hook for one message, as a Deferred: fires once it is durable; ``None`` when
        nothing is persisted for it (no hook, a topic no link routes, or QoS 0).

        :param reserved: the append may use each stream's reserve (:class:`PersistHook`)."""
        hook = self.persist_many
        if hook is None or not self.wants(topic):
            return None
        d: Deferred[Any] = Deferred()
        message = [(topic, payload, qos, retain)]
        appended = hook(message, d.callback, d.errback, reserved=reserved)
        return d if appended and qos else None


def _nothing(topic: str) -> bool:
    """No topic is persisted (no hook installed)."""
    return False
