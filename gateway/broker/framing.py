"""MQTT packet framing: split a client's byte stream into packets and refuse what is not MQTT 3.1.1.

Twisted hands us every byte before amqtt sees it. The framer checks each packet's fixed
header as soon as it arrives (§2.2: packet type, reserved flag bits, a remaining length of
at most four bytes under the configured maximum, CONNECT first and only once) and, once
the packet is whole, its variable header and payload (:mod:`gateway.broker.validation`).
A violation raises :class:`ProtocolViolation`; the connection is closed without a reply
(or, where §3.1.2.2 asks for one, after a CONNACK naming the refusal).
"""

from __future__ import annotations

from gateway.broker.validation import ProtocolViolation, check_body

CONNECT, PUBLISH = 1, 3
#: Packet types a client never sends (§2.2.1: they go server -> client only).
SERVER_ONLY = {2: "CONNACK", 9: "SUBACK", 11: "UNSUBACK", 13: "PINGRESP"}
#: The only flag bits allowed per packet type (§2.2.2, Table 2.2); PUBLISH has its own.
REQUIRED_FLAGS = {1: 0, 4: 0, 5: 0, 6: 2, 7: 0, 8: 2, 10: 2, 12: 0, 14: 0}

__all__ = ["Packet", "PacketFramer", "ProtocolViolation", "encode_packet"]


class Packet:
    """One complete, validated packet from a client.

    :ivar packet_type: the control packet type (1 CONNECT ... 14 DISCONNECT).
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
        self.fields: dict[str, object] = {}

    @property
    def length(self) -> int:
        """The remaining length (variable header + payload)."""
        return len(self.body)

    def __repr__(self) -> str:
        return f"Packet(type={self.packet_type}, flags={self.flags}, length={len(self.body)})"


def encode_length(length: int) -> bytes:
    """The remaining-length field for ``length`` (§2.2.3)."""
    out = bytearray()
    while True:
        byte, length = length & 0x7F, length >> 7
        out.append(byte | 0x80 if length else byte)
        if not length:
            return bytes(out)


def encode_packet(packet: Packet) -> bytes:
    """The packet's bytes as they were on the wire."""
    return bytes([packet.packet_type << 4 | packet.flags]) + encode_length(len(packet.body)) + packet.body


class PacketFramer:
    """Incremental splitter of a client's MQTT byte stream into validated packets.

    :param max_packet_size: the largest remaining length accepted, in bytes.
    :ivar packets_complete: packets that have arrived whole (and passed validation).
    """

    def __init__(self, max_packet_size: int) -> None:
        self.max_packet_size = max_packet_size
        self.packets_complete = 0
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Packet]:
        """Consume ``data``; return the packets it completes, in order.

        :raises ProtocolViolation: on the first packet that breaks the protocol (checked as
            soon as the part of it that a rule needs has arrived).
        """
        buf = self._buffer
        buf += data
        size = len(buf)
        packets: list[Packet] = []
        pos = 0
        while pos < size:
            first = buf[pos]
            self._check_first_byte(first)
            length, shift, i, known = 0, 0, pos + 1, False
            while i < size:
                byte = buf[i]
                i += 1
                length |= (byte & 0x7F) << shift
                if not byte & 0x80:
                    known = True
                    break
                shift += 7
                if shift == 28:
                    raise ProtocolViolation("remaining length longer than four bytes [MQTT-2.2.3]")
            if not known:
                break
            if length > self.max_packet_size:
                raise ProtocolViolation(f"packet of {length} bytes exceeds the maximum of {self.max_packet_size}")
            end = i + length
            if end > size:
                break
            packet = Packet(first >> 4, first & 0x0F, bytes(buf[i:end]))
            check_body(packet)
            self.packets_complete += 1
            packets.append(packet)
            pos = end
        if pos:
            del buf[:pos]
        return packets

    def _check_first_byte(self, first: int) -> None:
        """The rules that need only the packet type and flags (§2.2.1, §2.2.2, §3.1.0, §3.3.1)."""
        packet_type, flags = first >> 4, first & 0x0F
        if self.packets_complete == 0:
            if packet_type != CONNECT:
                raise ProtocolViolation(f"first packet is type {packet_type}, not CONNECT [MQTT-3.1.0-1]")
        elif packet_type == CONNECT:
            raise ProtocolViolation("a second CONNECT [MQTT-3.1.0-2]")
        if packet_type == PUBLISH:
            if flags & 0x06 == 0x06:
                raise ProtocolViolation("PUBLISH with QoS 3 [MQTT-3.3.1-4]")
            if flags & 0x08 and not flags & 0x06:
                raise ProtocolViolation("PUBLISH with DUP set at QoS 0 [MQTT-3.3.1-2]")
            return
        if packet_type in (0, 15):
            raise ProtocolViolation(f"reserved packet type {packet_type} [MQTT-2.2.1]")
        if packet_type in SERVER_ONLY:
            raise ProtocolViolation(f"a client sent {SERVER_ONLY[packet_type]}, which only servers send [MQTT-2.2.1]")
        if flags != REQUIRED_FLAGS[packet_type]:
            raise ProtocolViolation(f"packet type {packet_type} with flags {flags:#x}, not "
                                    f"{REQUIRED_FLAGS[packet_type]:#x} [MQTT-2.2.2-2]")
