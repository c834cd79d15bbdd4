"""What a peer that breaks MQTT 3.1.1 raises, seen from either side of a connection."""

from __future__ import annotations

from gateway.errors import BrokerError, LinkError


class ProtocolViolation(BrokerError):
    """A client sent bytes that break the MQTT protocol; its connection must close.

    :ivar reply: bytes to send before closing (empty: close without a reply).
    """

    def __init__(self, message: str, reply: bytes = b"") -> None:
        super().__init__(message)
        self.reply = reply


class TopicTooDeep(ProtocolViolation):
    """A client's PUBLISH topic or will topic has more levels than the broker takes
    (``max_topic_levels``): closed as for any invalid topic, as mosquitto does."""


class MalformedPacket(LinkError):
    """A server sent bytes that are not a valid MQTT 3.1.1 packet for a client."""
