"""MQTT 3.1.1 packets: their types, the decoded :class:`Packet`, and every encoder.

The broker and the cloud links both encode with these functions and both decode into
:class:`Packet` (see :mod:`gateway.mqtt.framing`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TypedDict

from gateway.mqtt.errors import MalformedPacket

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 10, 11, 12, 13, 14

#: CONNACK return codes (§3.2.2.3).
CONNACK_REASONS = {
    1: "unacceptable protocol version", 2: "identifier rejected", 3: "server unavailable",
    4: "bad user name or password", 5: "not authorized",
}

PINGREQ_PACKET = b"\xc0\x00"
PINGRESP_PACKET = b"\xd0\x00"
DISCONNECT_PACKET = b"\xe0\x00"
#: CONNACK refusing the protocol level (§3.2.2.3 return code 1), sent before closing.
CONNACK_UNACCEPTABLE_PROTOCOL = b"\x20\x02\x00\x01"

_U16 = struct.Struct("!H")
_ACK = struct.Struct("!BBH")  # first byte, remaining length 2, packet id


class PacketFields(TypedDict, total=False):
    """What validation parsed out of a packet's body (:mod:`gateway.mqtt.validation`)."""

    keep_alive: int  # CONNECT
    clean_session: bool  # CONNECT
    client_id: str  # CONNECT
    will: tuple[str, bytes, int, bool]  # CONNECT with the will flag: topic, message, QoS, retain
    username: str  # CONNECT with the user name flag
    password: bytes  # CONNECT with the password flag
    topic: str  # PUBLISH
    offset: int  # PUBLISH: where the payload starts in the body
    packet_id: int  # PUBLISH at QoS 1 and 2, SUBSCRIBE, UNSUBSCRIBE and the acks
    filters: list[tuple[str, int]] | list[str]  # SUBSCRIBE (with the QoS), UNSUBSCRIBE


class Packet:
    """One complete packet, as split from a byte stream.

    :ivar packet_type: the control packet type (:data:`CONNECT` ... :data:`DISCONNECT`).
    :ivar flags: the low four bits of the first byte.
    :ivar body: the variable header and payload.
    :ivar fields: what validation parsed out of the body (e.g. ``topic``, ``packet_id``,
        ``filters``, ``keep_alive``), so later stages need not parse it again.
    """

    __slots__ = ("packet_type", "flags", "body", "fields")

    def __init__(self, packet_type: int, flags: int, body: bytes) -> None:
        self.packet_type = packet_type
        self.flags = flags
        self.body = body
        self.fields: PacketFields = {}

    @property
    def length(self) -> int:
        """The remaining length (variable header + payload)."""
        return len(self.body)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Packet):
            return NotImplemented
        return (self.packet_type, self.flags, self.body) == (other.packet_type, other.flags, other.body)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Packet(type={self.packet_type}, flags={self.flags}, length={len(self.body)})"


def encode_length(length: int) -> bytes:
    """The remaining-length field for ``length`` (§2.2.3)."""
    if length < 0x80:
        return bytes((length,))
    out = bytearray()
    while True:
        byte, length = length & 0x7F, length >> 7
        out.append(byte | 0x80 if length else byte)
        if not length:
            return bytes(out)


def encode_packet(packet: Packet) -> bytes:
    """The packet's bytes as they were on the wire."""
    return bytes((packet.packet_type << 4 | packet.flags,)) + encode_length(len(packet.body)) + packet.body


def _string(text: str | bytes) -> bytes:
    data = text.encode("utf-8") if isinstance(text, str) else text
    if len(data) > 0xFFFF:
        raise ValueError("an MQTT string is at most 65535 bytes")
    return _U16.pack(len(data)) + data


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + encode_length(len(body)) + body


def connect(client_id: str, keepalive: int, clean_session: bool, username: str | None = None,
            password: str | None = None, will: tuple[str, bytes, int, bool] | None = None) -> bytes:
    """A CONNECT packet (protocol level 4); ``will`` is ``(topic, payload, qos, retain)``."""
    flags = 0x02 if clean_session else 0
    payload = _string(client_id)
    if will is not None:
        topic, message, qos, retain = will
        flags |= 0x04 | (qos << 3) | (0x20 if retain else 0)
        payload += _string(topic) + _string(message)
    if username is not None:
        flags |= 0x80
        payload += _string(username)
        if password is not None:
            flags |= 0x40
            payload += _string(password)
    return _packet(0x10, _string("MQTT") + bytes((4, flags)) + _U16.pack(keepalive) + payload)


def publish(topic: str | bytes, payload: bytes, qos: int, retain: bool = False, packet_id: int = 0,
            dup: bool = False) -> bytes:
    """A PUBLISH packet (``packet_id`` only for QoS 1 and 2); ``topic`` as text or UTF-8.

    :raises ValueError: the topic is longer than 65535 bytes.
    """
    name = _string(topic)
    head = name + _U16.pack(packet_id) if qos else name
    first = 0x30 | (0x08 if dup else 0) | qos << 1 | (1 if retain else 0)
    return bytes((first,)) + encode_length(len(head) + len(payload)) + head + payload


def connack(session_present: bool, code: int = 0) -> bytes:
    """A CONNACK: ``code`` 0 accepts (§3.2.2.3); session present only with an accepted CONNECT."""
    return bytes((0x20, 2, 1 if session_present and not code else 0, code))


#: A SUBACK return code for a filter that was refused (§3.9.3).
SUBACK_FAILURE = 0x80


def suback(packet_id: int, codes: list[int]) -> bytes:
    """A SUBACK with one return code per filter (the granted QoS, or 0x80 for a failure)."""
    return _packet(0x90, _U16.pack(packet_id) + bytes(codes))


def unsuback(packet_id: int) -> bytes:
    """An UNSUBACK for ``packet_id``."""
    return _ACK.pack(0xB0, 2, packet_id)


class PublishTemplate:
    """One message encoded once for many receivers: per receiver only the packet id (and
    the QoS in the first byte) differ, so each PUBLISH is one concatenation.

    :param topic: the topic name.
    :param payload: the message.
    :raises ValueError: the topic is longer than 65535 bytes.
    """

    __slots__ = ("payload", "_topic", "_heads")

    def __init__(self, topic: str, payload: bytes) -> None:
        self.payload = payload
        self._topic = _string(topic)
        self._heads: dict[int, bytes] = {}

    def packet(self, qos: int, retain: bool, packet_id: int = 0) -> bytes:
        """The PUBLISH at ``qos`` (``packet_id`` for QoS 1 and 2), as :func:`publish` makes it."""
        first = 0x30 | qos << 1 | (1 if retain else 0)
        head = self._heads.get(first)
        if head is None:
            length = len(self._topic) + len(self.payload) + (2 if qos else 0)
            head = self._heads[first] = bytes((first,)) + encode_length(length) + self._topic
        if qos:
            return head + _U16.pack(packet_id) + self.payload
        return head + self.payload


def ack(packet_type: int, packet_id: int) -> bytes:
    """PUBACK, PUBREC, PUBREL or PUBCOMP for ``packet_id``."""
    return _ACK.pack(packet_type << 4 | (2 if packet_type == PUBREL else 0), 2, packet_id)


def subscribe(packet_id: int, filters: list[tuple[str, int]]) -> bytes:
    """A SUBSCRIBE packet for ``(filter, qos)`` pairs."""
    return _packet(0x82, _U16.pack(packet_id) + b"".join(_string(f) + bytes((q,)) for f, q in filters))


@dataclass(frozen=True)
class Publish:
    """A decoded PUBLISH from a server."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    packet_id: int


def decode_publish(packet: Packet) -> Publish:
    """Decode a server's PUBLISH packet.

    :raises MalformedPacket: when the topic or packet id is cut short or invalid.
    """
    body = packet.body
    qos = (packet.flags >> 1) & 3
    if len(body) < 2:
        raise MalformedPacket("PUBLISH without a topic")
    (n,) = _U16.unpack_from(body)
    end = 2 + n + (2 if qos else 0)
    if len(body) < end:
        raise MalformedPacket("PUBLISH shorter than its topic and packet id")
    try:
        topic = body[2:2 + n].decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedPacket("PUBLISH topic is not UTF-8") from None
    if not topic or "+" in topic or "#" in topic or "\0" in topic:
        raise MalformedPacket(f"PUBLISH to invalid topic {topic!r}")
    packet_id = _U16.unpack_from(body, 2 + n)[0] if qos else 0
    if qos and packet_id == 0:
        raise MalformedPacket("PUBLISH with packet id 0")
    return Publish(topic, body[end:], qos, bool(packet.flags & 1), bool(packet.flags & 8), packet_id)


def packet_id(packet: Packet) -> int:
    """The packet id of a PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK or UNSUBACK."""
    return int(_U16.unpack_from(packet.body)[0])
