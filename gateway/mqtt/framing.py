"""Splitting an MQTT byte stream into packets, refusing what breaks MQTT 3.1.1.

:class:`PacketFramer` is the broker's view of a client: it checks each packet's fixed
header as soon as it arrives (§2.2: packet type, reserved flag bits, a remaining length of
at most four bytes under the configured maximum, CONNECT first and only once) and, once
the packet is whole, its variable header and payload (:mod:`gateway.mqtt.validation`).
A violation raises :class:`ProtocolViolation`; the connection is closed without a reply
(or, where §3.1.2.2 asks for one, after a CONNACK naming the refusal). A PUBACK, the
packet a broker gets most (one per QoS 1 delivery), comes out as its packet id alone (an
``int``), not as a :class:`~gateway.mqtt.packets.Packet`.

:class:`PacketReader` is a cloud link's view of its server: it refuses any packet a server
must not send (:class:`MalformedPacket`). Both yield :class:`~gateway.mqtt.packets.Packet`.
"""

from __future__ import annotations

from gateway.mqtt.errors import MalformedPacket, ProtocolViolation
from gateway.mqtt.packets import (
    CONNACK, CONNECT, PINGRESP, PUBACK, PUBCOMP, PUBLISH, PUBREC, PUBREL, SUBACK, UNSUBACK, Packet,
)
from gateway.mqtt.validation import check_body

#: Packet types a client never sends (§2.2.1: they go server -> client only).
SERVER_ONLY = {2: "CONNACK", 9: "SUBACK", 11: "UNSUBACK", 13: "PINGRESP"}
#: The only flag bits allowed per packet type (§2.2.2, Table 2.2); PUBLISH has its own.
REQUIRED_FLAGS = {1: 0, 4: 0, 5: 0, 6: 2, 7: 0, 8: 2, 10: 2, 12: 0, 14: 0}
#: Packet types a server may send, with the fixed-header flags each must carry (None: any).
_FROM_SERVER: dict[int, int | None] = {
    CONNACK: 0, PUBLISH: None, PUBACK: 0, PUBREC: 0, PUBREL: 2, PUBCOMP: 0, SUBACK: 0, UNSUBACK: 0, PINGRESP: 0,
}

__all__ = ["MalformedPacket", "Packet", "PacketFramer", "PacketReader", "ProtocolViolation"]


class PacketFramer:
    """Incremental splitter of a client's MQTT byte stream into validated packets.

    :param max_packet_size: the largest remaining length accepted, in bytes.
    :param max_topic_levels: the most levels of a PUBLISH or will topic (0: any).
    :ivar packets_complete: packets that have arrived whole (and passed validation).
    :ivar before_violation: once :meth:`feed` raised, the whole packets its bytes held
        before the violation, in order (for the broker to handle before it closes).
    """

    def __init__(self, max_packet_size: int, max_topic_levels: int = 0) -> None:
        self.max_packet_size = max_packet_size
        self.max_topic_levels = max_topic_levels
        self.packets_complete = 0
        self.before_violation: list[Packet | int] = []
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Packet | int]:
        """Consume ``data``; return the packets it completes, in order, each PUBACK as its
        packet id (an ``int``).

        :raises ProtocolViolation: on the first packet that breaks the protocol (checked as
            soon as the part of it that a rule needs has arrived); the whole packets of
            ``data`` before it are then in :attr:`before_violation`.
        """
        buf = self._buffer
        buf += data
        size = len(buf)
        packets: list[Packet | int] = []
        pos = 0
        try:
            while pos < size:
                first = buf[pos]
                if first == 0x40 and pos + 4 <= size and buf[pos + 1] == 2 and self.packets_complete:
                    packets.append(buf[pos + 2] << 8 | buf[pos + 3])  # a PUBACK (§3.4): its packet id
                    self.packets_complete += 1
                    pos += 4
                    continue
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
                check_body(packet, self.max_topic_levels)
                self.packets_complete += 1
                # (a PUBACK the fast path above missed: its length field takes more bytes than it needs)
                packets.append(packet.fields["packet_id"] if first == 0x40 else packet)
                pos = end
        except ProtocolViolation:
            self.before_violation = packets  # whole and valid: the client's all the same
            raise
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


_PUBACK_HEADER = bytes((PUBACK << 4, 2))  # a PUBACK's fixed header: type, flags 0, length 2


class PacketReader:
    """Splits the server's byte stream into packets, refusing anything a server must not send.

    :param max_packet_size: the largest packet accepted, in bytes.
    :ivar before_violation: after :meth:`feed` raised, the whole and valid packets the same
        data held before the malformed one (the server's all the same: its PUBACKs count).
    """

    def __init__(self, max_packet_size: int = 1 << 20) -> None:
        self.max_packet_size = max_packet_size
        self._buffer = bytearray()
        self.before_violation: list[Packet] = []

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
            server must not send (the packets before it: :attr:`before_violation`).
        """
        self._buffer += data
        packets: list[Packet] = []
        try:
            return self._split(packets)
        except MalformedPacket:
            self.before_violation = packets
            raise

    def _split(self, packets: list[Packet]) -> list[Packet]:
        """:meth:`feed`'s loop: appends each complete packet to ``packets`` as it is found."""
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
    """Reject server packets whose body has the wrong size for their type."""
    size = len(packet.body)
    if packet.packet_type == PINGRESP and size != 0:
        raise MalformedPacket("PINGRESP with a body")
    if packet.packet_type in (CONNACK, PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK) and size != 2:
        raise MalformedPacket(f"packet type {packet.packet_type} must have 2 bytes, not {size}")
    if packet.packet_type == CONNACK and packet.body[0] & 0xFE:
        raise MalformedPacket("CONNACK with reserved flags set")
    if packet.packet_type == SUBACK and (size < 3 or any(c not in (0, 1, 2, 0x80) for c in packet.body[2:])):
        raise MalformedPacket("malformed SUBACK")
    if packet.packet_type == PUBLISH and (packet.flags & 0x06) == 0x06:
        raise MalformedPacket("PUBLISH with QoS 3")
    return packet
