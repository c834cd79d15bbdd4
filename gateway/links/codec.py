"""MQTT 3.1.1 packets a client sends and receives: encoding and strict, incremental decoding.

Synchronous on purpose: the link's protocol frames bytes as they arrive on the reactor
thread (amqtt's packet classes decode only from an asyncio stream).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from gateway.broker.framing import encode_length
from gateway.errors import LinkError

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 11, 12, 13, 14

#: CONNACK return codes (MQTT 3.1.1 §3.2.2.3).
CONNACK_REASONS = {
    1: "unacceptable protocol version", 2: "identifier rejected", 3: "server unavailable",
    4: "bad user name or password", 5: "not authorized",
}
#: Packet types a server may send, with the fixed-header flags each must carry (None: any).
_FROM_SERVER: dict[int, int | None] = {
    CONNACK: 0, PUBLISH: None, PUBACK: 0, PUBREC: 0, PUBREL: 2, PUBCOMP: 0, SUBACK: 0, UNSUBACK: 0, PINGRESP: 0,
}
_U16 = struct.Struct("!H")


class MalformedPacket(LinkError):
    """The server sent bytes that are not a valid MQTT 3.1.1 packet for a client."""


@dataclass(frozen=True)
class Packet:
    """One decoded packet from the server.

    :ivar kind: the packet type (``CONNACK``, ``PUBLISH``...).
    :ivar flags: the low four bits of the fixed header.
    :ivar body: the bytes after the fixed header.
    """

    kind: int
    flags: int
    body: bytes


def _string(text: str | bytes) -> bytes:
    data = text.encode("utf-8") if isinstance(text, str) else text
    if len(data) > 0xFFFF:
        raise ValueError("an MQTT string is at most 65535 bytes")
    return _U16.pack(len(data)) + data


def _packet(first: int, body: bytes) -> bytes:
    return bytes((first,)) + encode_length(len(body)) + body


def connect(client_id: str, keepalive: int, clean_session: bool, username: str | None = None,
            password: str | None = None, will: tuple[str, bytes, int, bool] | None = None) -> bytes:
    """A CONNECT packet; ``will`` is ``(topic, payload, qos, retain)``."""
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


def publish(topic: str, payload: bytes, qos: int, retain: bool = False, packet_id: int = 0,
            dup: bool = False) -> bytes:
    """A PUBLISH packet (``packet_id`` only for QoS 1 and 2)."""
    first = 0x30 | (0x08 if dup else 0) | (qos << 1) | (1 if retain else 0)
    head = _string(topic) + (_U16.pack(packet_id) if qos else b"")
    return _packet(first, head + payload)


def ack(kind: int, packet_id: int) -> bytes:
    """PUBACK, PUBREC, PUBREL or PUBCOMP for ``packet_id``."""
    return _packet((kind << 4) | (2 if kind == PUBREL else 0), _U16.pack(packet_id))


def subscribe(packet_id: int, filters: list[tuple[str, int]]) -> bytes:
    """A SUBSCRIBE packet for ``(filter, qos)`` pairs."""
    return _packet(0x82, _U16.pack(packet_id) + b"".join(_string(f) + bytes((q,)) for f, q in filters))


PINGREQ_PACKET = b"\xc0\x00"
DISCONNECT_PACKET = b"\xe0\x00"


_PUBACK_HEADER = bytes((PUBACK << 4, 2))  # a PUBACK's fixed header: type, flags 0, length 2


class PacketReader:
    """Splits the server's byte stream into packets, refusing anything a server must not send.

    :param max_packet_size: the largest packet accepted, in bytes.
    """

    def __init__(self, max_packet_size: int = 1 << 20) -> None:
        self.max_packet_size = max_packet_size
        self._buffer = bytearray()

    def take_pubacks(self, data: bytes) -> tuple[list[int], bytes]:
        """Split a leading run of whole PUBACKs off ``data``: their packet ids, and the rest.

        While forwarding, most reads from the cloud are nothing but PUBACKs; this takes
        them in one pass instead of one :class:`Packet` each. Give the rest to
        :meth:`feed`. Nothing is taken while a partial packet is buffered.
        """
        if self._buffer or len(data) < 4 or not data.startswith(_PUBACK_HEADER):
            return [], data
        n = len(data) // 4
        if data[0:4 * n:4] != _PUBACK_HEADER[:1] * n or data[1:4 * n:4] != _PUBACK_HEADER[1:] * n:
            n = 1  # something else follows: count the run up to it
            while 4 * n + 4 <= len(data) and data.startswith(_PUBACK_HEADER, 4 * n):
                n += 1
        return [data[i] << 8 | data[i + 1] for i in range(2, 4 * n, 4)], data[4 * n:]

    def feed(self, data: bytes) -> list[Packet]:
        """Add ``data``; return the packets now complete.

        :raises MalformedPacket: on a bad header, a bad length or a packet type or flags a
            server must not send.
        """
        self._buffer += data
        packets: list[Packet] = []
        buffer = self._buffer
        pos = 0
        while len(buffer) - pos >= 2:
            first = buffer[pos]
            kind, flags = first >> 4, first & 0x0F
            expected = _FROM_SERVER.get(kind, -1)
            if expected == -1 or (expected is not None and flags != expected):
                raise MalformedPacket(f"server sent packet type {kind} with flags {flags:#x}")
            length, multiplier, i = 0, 1, pos + 1
            while True:
                if i >= len(buffer):
                    self._buffer = buffer[pos:]
                    return packets
                digit = buffer[i]
                length += (digit & 0x7F) * multiplier
                i += 1
                if not digit & 0x80:
                    break
                multiplier *= 128
                if i - pos > 4:
                    raise MalformedPacket("remaining length longer than 4 bytes")
            if length > self.max_packet_size:
                raise MalformedPacket(f"packet of {length} bytes is over the {self.max_packet_size} limit")
            if len(buffer) - i < length:
                break
            packets.append(_check(Packet(kind, flags, bytes(buffer[i:i + length]))))
            pos = i + length
        del buffer[:pos]
        return packets


def _check(packet: Packet) -> Packet:
    """Reject packets whose body has the wrong size for their type."""
    size = len(packet.body)
    if packet.kind == PINGRESP and size != 0:
        raise MalformedPacket("PINGRESP with a body")
    if packet.kind in (CONNACK, PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK) and size != 2:
        raise MalformedPacket(f"packet type {packet.kind} must have 2 bytes, not {size}")
    if packet.kind == CONNACK and packet.body[0] & 0xFE:
        raise MalformedPacket("CONNACK with reserved flags set")
    if packet.kind == SUBACK and (size < 3 or any(c not in (0, 1, 2, 0x80) for c in packet.body[2:])):
        raise MalformedPacket("malformed SUBACK")
    if packet.kind == PUBLISH and (packet.flags & 0x06) == 0x06:
        raise MalformedPacket("PUBLISH with QoS 3")
    return packet


@dataclass(frozen=True)
class Publish:
    """A decoded PUBLISH from the server."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    packet_id: int


def decode_publish(packet: Packet) -> Publish:
    """Decode a PUBLISH packet's body.

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
