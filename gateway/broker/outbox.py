"""A session's bounded queue of messages waiting to go out (offline, paused socket or full window).

The queue is bounded in messages and in payload bytes. When it is full, a new message is
dropped: the drop is counted on the queue and logged (once when an overflow starts, with a
total when it ends), never silent. Past its high-water mark (half the bounds) a connected
session is *congested*: the broker stops reading from the clients that publish to it until
the queue drains below a quarter, so a fast publisher is slowed down rather than losing
messages.

Each held publisher is registered here with its resume callback (:meth:`Outbox.block`),
so the hold ends on every path its cause goes away: the queue drains (:meth:`Outbox.pop`),
is cleared (:meth:`Outbox.clear`), or its subscriber stops wanting the messages (the
router calls :meth:`Outbox.release` when the subscriber's connection ends or it
unsubscribes); and a publisher that goes away first is dropped (:meth:`Outbox.unblock`).
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable

from twisted.logger import Logger

from gateway.broker.bus import BusMessage

#: One message waiting for its subscriber (its QoS is the delivery QoS).
QueuedMessage = BusMessage


class Outbox:
    """Bounded FIFO of :class:`QueuedMessage` for one session.

    :param client_id: the session's client id (for logs).
    :param max_messages: most messages held.
    :param max_bytes: most payload bytes held.
    :ivar dropped: messages dropped because the queue was full, over the session's life.
    :ivar blocked: publishers paused because of this queue: ``{key: resume callback}``
        (maintained through :meth:`block`, :meth:`unblock` and :meth:`release`).
    """

    log = Logger()

    def __init__(self, client_id: str, max_messages: int, max_bytes: int) -> None:
        self.client_id = client_id
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.messages: deque[QueuedMessage] = deque()
        self.bytes = 0
        self.dropped = 0
        self._dropped_in_overflow = 0
        self.blocked: dict[Any, Callable[[], None]] = {}

    def __len__(self) -> int:
        return len(self.messages)

    def push(self, message: QueuedMessage) -> bool:
        """Queue ``message``; ``False`` (counted and logged) when the queue is full."""
        size = len(message.payload)
        if len(self.messages) >= self.max_messages or self.bytes + size > self.max_bytes:
            self.dropped += 1
            if not self._dropped_in_overflow:
                self.log.warn("queue for {client_id} is full ({count} messages, {size} bytes): dropping new "
                              "messages", client_id=self.client_id, count=len(self.messages), size=self.bytes)
            self._dropped_in_overflow += 1
            return False
        self.messages.append(message)
        self.bytes += size
        return True

    def pop(self) -> QueuedMessage:
        """Take the oldest message; wake blocked publishers once the queue has drained enough."""
        message = self.messages.popleft()
        self.bytes -= len(message.payload)
        if (self.blocked or self._dropped_in_overflow) and self.drained:
            self._end_overflow()
            self.release()
        return message

    def peek(self) -> QueuedMessage:
        """The oldest message, left in place."""
        return self.messages[0]

    @property
    def congested(self) -> bool:
        """Over the high-water mark: publishers to this session should wait."""
        return len(self.messages) * 2 >= self.max_messages or self.bytes * 2 >= self.max_bytes

    @property
    def drained(self) -> bool:
        """Under the low-water mark: paused publishers may go on."""
        return len(self.messages) * 4 <= self.max_messages and self.bytes * 4 <= self.max_bytes

    def block(self, key: Any, resume: Callable[[], None]) -> None:
        """Record a publisher held back for this queue; ``resume`` is called exactly once, when it may go on."""
        self.blocked[key] = resume

    def unblock(self, key: Any) -> None:
        """Resume one held publisher now (it is going away, or waits no more); unknown keys are ignored."""
        resume = self.blocked.pop(key, None)
        if resume is not None:
            resume()

    def release(self) -> None:
        """Resume every held publisher: the queue drained, or its subscriber no longer takes these messages.

        A publisher still feeding a congested queue is held again at its next delivery.
        """
        blocked, self.blocked = self.blocked, {}
        for resume in blocked.values():
            resume()

    def _end_overflow(self) -> None:
        """The queue has room: end an overflow episode, logging its drops."""
        if self._dropped_in_overflow:
            self.log.warn("queue for {client_id} has room again; {count} messages were dropped",
                          client_id=self.client_id, count=self._dropped_in_overflow)
            self._dropped_in_overflow = 0

    def clear(self) -> None:
        """Forget every message (a clean session starting over) and release blocked publishers."""
        self.messages.clear()
        self.bytes = 0
        self._end_overflow()
        self.release()
