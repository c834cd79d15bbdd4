"""A new subscription's retained messages that its client has not been sent yet.

A SUBSCRIBE to ``#`` may match every retained message the broker holds: thousands. They go
out as the client takes them (:meth:`gateway.broker.handler.SessionHandler.deliver_retained`),
not all in one write and not through the session's bounded queue (which would drop most of
them). What waits meanwhile is one :class:`RetainedBurst` per subscription: references to
the messages as they were at the SUBSCRIBE, never copies of their payloads.
"""

from __future__ import annotations


class RetainedBurst:
    """The retained messages matching one new subscription, in the order they go out.

    Two parallel lists (a reference each per message, where a tuple per message would cost
    eight times as much) and how many were sent.

    :param topics: the messages' topics.
    :param messages: ``(payload, qos)`` of each, as retained at the SUBSCRIBE.
    :param granted: the subscription's QoS: each goes at the lower of it and its own.
    :ivar sent: how many of them were sent.
    """

    __slots__ = ("topics", "messages", "granted", "sent")

    def __init__(self, topics: list[str], messages: list[tuple[bytes, int]], granted: int) -> None:
        self.topics = topics
        self.messages = messages
        self.granted = granted
        self.sent = 0
