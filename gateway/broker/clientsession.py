"""What the broker keeps of one client id between packets: its MQTT session (§3.1.2.4).

A :class:`ClientSession` holds the subscriptions' filters, the QoS 1/2 deliveries the
client has not acknowledged, the QoS 2 packet ids it sent and has not released, its
queue (:mod:`gateway.broker.outbox`). A clean session
lives as long as its connection; a persistent one (CleanSession=0) outlives it until it
expires (:mod:`gateway.broker.sessions`). Slotted and small: an idle persistent session
with one subscription costs about a kilobyte.
"""

from __future__ import annotations

from typing import NamedTuple

from gateway.broker.outbox import Outbox


class Incoming(NamedTuple):
    """A client's PUBLISH, as the broker routes and acknowledges it."""

    packet_id: int | None
    topic: str
    payload: bytes
    qos: int
    retain: bool


class Will(NamedTuple):
    """A CONNECT's will message (§3.1.2.5), published if the connection ends without DISCONNECT."""

    topic: str
    payload: bytes
    qos: int
    retain: bool


#: The empty ``inflight_in`` every session starts with (shared: most clients never publish at QoS 2).
NOTHING: frozenset[int] = frozenset()

#: What ``inflight_out`` holds for a QoS 2 delivery once PUBREC came: the message is the
#: client's now; a resend repeats only PUBREL (§4.3.3).
PUBREC_SEEN = b""


def sent_qos(sent: bytes) -> int:
    """The QoS of an ``inflight_out`` entry (an encoded PUBLISH, or :data:`PUBREC_SEEN`)."""
    return (sent[0] >> 1) & 3 if sent else 2


class ClientSession:
    """One client id's session state (see the module docstring).

    :param client_id: the client identifier.
    :param clean: whether the session ends with its connection (CleanSession=1).
    :ivar filters: the session's topic filters, in the order first subscribed, as the keys of
        a dict (for cleanup; the router holds the QoS): adding and removing one costs the
        same however many the session has (a SUBSCRIBE may carry a hundred thousand).
    :ivar inflight_out: packet id -> QoS 1/2 delivery waiting for PUBACK/PUBREC/PUBCOMP: the
        PUBLISH as it was sent (a resend sets its DUP bit), or :data:`PUBREC_SEEN`.
    :ivar inflight_bytes: the bytes ``inflight_out`` holds: the sum of its entries' lengths,
        kept with every change to it (``max_inflight_bytes`` bounds it).
    :ivar inflight_in: QoS 2 packet ids received and not yet released by PUBREL (§4.3.3).
    :ivar outbox: the queue of messages waiting to be sent, made on first use.
    :ivar username: the user name of the CONNECT that made or resumed the session.
    """

    __slots__ = ("client_id", "clean", "filters", "inflight_out", "inflight_bytes", "inflight_in", "outbox", "username",
                 "_packet_id")

    def __init__(self, client_id: str, clean: bool) -> None:
        self.client_id = client_id
        self.clean = clean
        self.filters: dict[str, None] = {}
        self.inflight_out: dict[int, bytes] = {}
        self.inflight_bytes = 0
        self.inflight_in: set[int] | frozenset[int] = NOTHING  # a set from the first QoS 2 PUBLISH
        self.outbox: Outbox | None = None
        self.username: str | None = None
        self._packet_id = 0

    def next_packet_id(self) -> int:
        """A packet id from 1 to 65535 that no unacknowledged delivery uses (§2.3.1).

        :raises RuntimeError: all 65535 are in flight (the window stops far below that).
        """
        packet_id = self._packet_id % 65535 + 1
        if packet_id not in self.inflight_out:  # nearly always: ids are used in turn
            self._packet_id = packet_id
            return packet_id
        for _ in range(65535):
            self._packet_id = self._packet_id % 65535 + 1
            if self._packet_id not in self.inflight_out:
                return self._packet_id
        raise RuntimeError(f"no free packet id for {self.client_id}")

    def received_qos2(self, packet_id: int) -> bool:
        """Note a QoS 2 PUBLISH's id; whether it was noted already (a resend before PUBREL)."""
        if packet_id in self.inflight_in:
            return True
        if not isinstance(self.inflight_in, set):
            self.inflight_in = set()
        self.inflight_in.add(packet_id)
        return False

    def released(self, packet_id: int) -> None:
        """PUBREL came for ``packet_id``: forget it."""
        if isinstance(self.inflight_in, set):
            self.inflight_in.discard(packet_id)

    def add_filter(self, topic_filter: str) -> None:
        """Remember ``topic_filter`` (once)."""
        self.filters[topic_filter] = None

    def remove_filter(self, topic_filter: str) -> None:
        """Forget ``topic_filter``."""
        self.filters.pop(topic_filter, None)
