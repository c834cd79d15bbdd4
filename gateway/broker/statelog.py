"""The broker's write-ahead log of state changes on a journal stream (see :mod:`gateway.broker.persistence`)."""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Iterable, Protocol

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.broker.offlinetimes import boot_header
from gateway.broker.outbox import QueuedMessage
from gateway.clockstep import BootClock
from gateway.journal.record import Record

#: The journal stream the broker logs its state changes to.
STATE_STREAM = "broker-state"
#: The stream's cursor: acknowledged up to what the last checkpoint covers.
STATE_CURSOR = "broker"


class StateStream(Protocol):
    """What :class:`StateLog` uses of a journal :class:`~gateway.journal.stream.Stream`."""

    written_seq: int

    def append_then(self, record: Record, on_durable: Callable[[int], object],
                    on_failed: Callable[[Failure], object], reserved: bool = False) -> None:
        """Append; exactly one of the callbacks is called once."""

    def cursor(self, name: str) -> "Deferred[None]":
        """Create a cursor unless it exists."""

    def read(self, cursor: str, max_records: int = 1000, max_bytes: int = 1 << 20) -> "Deferred[list[Record]]":
        """The next records for ``cursor``."""

    def ack(self, cursor: str, seq: int, above: Iterable[tuple[int, int]] = ()) -> "Deferred[None]":
        """Acknowledge ``cursor`` through ``seq``."""

    def keep_no_tail(self) -> None:
        """Keep no written records in memory for readers that keep up (nobody reads the log as it is written)."""


class StateLog:
    """The broker's state changes as records of a journal stream, durable by its group commit.

    Each change gets a number (``n``, counting on from the checkpoint's ``log_through``);
    the journal completes appends in order, so "durable through ``n``" is one watermark
    (:attr:`durable`) that callers wait on with :meth:`when_durable`.

    A record is ``Record(topic, payload, qos, retain, received, headers)`` with headers
    ``op`` (``retain``, ``sub``, ``unsub``, ``queue``, ``drop``, ``rec``, ``rel``, ``user``,
    ``offline``, ``online``), ``n`` and ``client``; a ``retain`` a cloud link brought down has a
    ``link`` header naming it (versions before it skip the header); ``rec`` and ``rel`` carry a QoS 2 packet id as
    their two-byte payload, and ``user`` the session's user name as a ``user`` header (none: no
    user name). Logs written before ``user`` existed have none; their sessions keep the
    checkpoint's user name. ``offline`` says a persistent session's client went offline, at
    the record's ``received`` time (the wall clock's) and, in a boot whose id is known, the
    ``boot`` header's reading of that boot's clock (``<boot id> <seconds>``:
    :func:`~gateway.broker.offlinetimes.boot_header`), ``online`` that it is connected again;
    logs written before they existed have neither, and versions before them skip them.

    :param stream: the journal stream (:data:`STATE_STREAM`).
    :param clock: gives the records' received time.
    :param start: the number of the last change already logged (after a restart).
    :param boot: this boot's clock, read into ``offline`` records (None: not known).
    :ivar appended: the number of the last change appended.
    :ivar durable: every change through this number is durable.
    :ivar failures: appends the journal refused or failed to write.
    """

    log = Logger()

    def __init__(self, stream: StateStream, clock: Any, start: int = 0, boot: BootClock | None = None) -> None:
        self.stream = stream
        self.clock = clock
        self.boot = boot
        self.appended = start
        self.durable = start
        self.failures = 0
        self._waiters: deque[tuple[int, Callable[[], object], Callable[[Failure], object]]] = deque()

    def _append(self, op: str, client_id: str, topic: str, payload: bytes = b"", qos: int = 0,
                retain: bool = False, extra: tuple[tuple[str, str], ...] = ()) -> int:
        self.appended = n = self.appended + 1
        record = Record(topic, payload, qos, retain, self.clock.seconds(),
                        (("op", op), ("n", str(n)), ("client", client_id)) + extra)
        self.stream.append_then(record, lambda _seq: self._durable(n), lambda failure: self._failed(n, failure))
        return n

    def retained(self, topic: str, payload: bytes, qos: int, link: str = "", own: bool = False) -> int:
        """Log a topic's new retained message (an empty payload: removed); ``link``: the cloud
        link whose downlink brought it (its ``link`` header); ``own``: the gateway itself (or a
        plugin) left it (an ``own`` header: the bounds on the clients' retained messages do not
        count it)."""
        extra = (("link", link),) if link else (("own", "1"),) if own else ()
        return self._append("retain", "", topic, payload, qos, extra=extra)

    def subscribed(self, client_id: str, topic_filter: str, qos: int) -> int:
        """Log a persistent session's subscription (granted ``qos``)."""
        return self._append("sub", client_id, topic_filter, b"", qos)

    def unsubscribed(self, client_id: str, topic_filter: str) -> int:
        """Log a persistent session's unsubscription."""
        return self._append("unsub", client_id, topic_filter)

    def queued(self, client_id: str, message: QueuedMessage) -> int:
        """Log a message queued for an offline persistent session."""
        topic, payload, qos, retain = message
        return self._append("queue", client_id, topic, bytes(payload), qos, retain)

    def qos2_received(self, client_id: str, packet_id: int) -> int:
        """Log a QoS 2 packet id a persistent session's client sent and has not released (§4.3.3)."""
        return self._append("rec", client_id, "", packet_id.to_bytes(2, "big"), 2)

    def qos2_released(self, client_id: str, packet_id: int) -> int:
        """Log that a persistent session no longer holds the QoS 2 packet id (PUBREL came)."""
        return self._append("rel", client_id, "", packet_id.to_bytes(2, "big"), 2)

    def user(self, client_id: str, username: str | None) -> int:
        """Log the user name a persistent session was made or resumed with (``None``: none)."""
        return self._append("user", client_id, "", extra=(("user", username),) if username is not None else ())

    def offline(self, client_id: str) -> int:
        """Log that a persistent session's client went offline now (nothing waits for it)."""
        return self._append("offline", client_id, "", extra=boot_header(self.boot) if self.boot is not None else ())

    def online(self, client_id: str) -> int:
        """Log that an offline persistent session's client connected again (nothing waits for it)."""
        return self._append("online", client_id, "")

    def dropped(self, client_id: str) -> int:
        """Log that a persistent session was cleared (CleanSession=1 took its id)."""
        return self._append("drop", client_id, "")

    def when_durable(self, n: int, on_durable: Callable[[], object], on_failed: Callable[[Failure], object]) -> None:
        """Call ``on_durable()`` once every change through ``n`` is durable (now if it is),
        or ``on_failed(failure)`` if one of them is lost first."""
        if n <= self.durable:
            on_durable()
        else:
            self._waiters.append((n, on_durable, on_failed))

    def wait(self, n: int) -> "Deferred[None]":
        """:meth:`when_durable` as a Deferred."""
        d: Deferred[None] = Deferred()
        self.when_durable(n, lambda: d.callback(None), d.errback)
        return d

    def _durable(self, n: int) -> None:
        if n > self.durable:
            self.durable = n
        waiters = self._waiters
        while waiters and waiters[0][0] <= self.durable:
            _, on_durable, _ = waiters.popleft()
            on_durable()

    def _failed(self, n: int, failure: Failure) -> None:
        self.failures += 1
        if self.failures == 1 or self.failures % 1000 == 0:
            self.log.error("broker state change {n} not stored: {error} ({count} so far); "
                           "what waits for it is not acknowledged", n=n, error=failure.getErrorMessage(),
                           count=self.failures)
        waiters = self._waiters
        failed = [w for w in waiters if w[0] >= n]
        kept = [w for w in waiters if w[0] < n]
        waiters.clear()
        waiters.extend(kept)
        for _, _, on_failed in failed:
            on_failed(failure)
