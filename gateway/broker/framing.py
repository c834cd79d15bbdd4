"""MQTT packet framing: find packet boundaries in a byte stream and refuse what cannot be MQTT.

Twisted hands us every byte before amqtt sees it. The framer checks the fixed header
(MQTT 3.1.1 §2.2): the remaining length takes at most four bytes and stays under the
configured maximum, and the first packet is a CONNECT (§3.1). A violation raises
:class:`ProtocolViolation` and the connection is closed without a reply.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.errors import BrokerError

CONNECT = 1


class ProtocolViolation(BrokerError):
    """The peer sent bytes that break the MQTT protocol; its connection must close."""


@dataclass
class PacketHeader:
    """The fixed header of one complete packet seen on the stream.

    :ivar packet_type: the control packet type (1 CONNECT ... 14 DISCONNECT).
    :ivar flags: the low four bits of the first byte.
    :ivar length: the remaining length (variable header + payload).
    """

    packet_type: int
    flags: int
    length: int


class PacketFramer:
    """Incremental splitter of an MQTT byte stream into packet headers.

    :param max_packet_size: the largest remaining length accepted, in bytes.
    :ivar packets_seen: packets whose fixed header has arrived.
    :ivar packets_complete: packets that have arrived whole.
    """

    def __init__(self, max_packet_size: int) -> None:
        self.max_packet_size = max_packet_size
        self.packets_seen = 0
        self.packets_complete = 0
        self._skip = 0  # body bytes of the current packet still to pass
        self._header = bytearray()

    def feed(self, data: bytes) -> list[PacketHeader]:
        """Consume ``data``; return the headers of the packets that start in it.

        :raises ProtocolViolation: on a malformed fixed header or an oversized packet.
        """
        headers: list[PacketHeader] = []
        view = memoryview(data)
        pos, end = 0, len(data)
        while pos < end:
            if self._skip:
                step = min(self._skip, end - pos)
                self._skip -= step
                pos += step
                if not self._skip:
                    self.packets_complete += 1
                continue
            self._header.append(view[pos])
            pos += 1
            header = self._parse_header()
            if header is not None:
                headers.append(header)
        return headers

    def _parse_header(self) -> PacketHeader | None:
        buf = self._header
        if len(buf) == 1:
            if self.packets_seen == 0 and buf[0] >> 4 != CONNECT:
                raise ProtocolViolation(f"first packet is type {buf[0] >> 4}, not CONNECT [MQTT-3.1.0-1]")
            return None
        length, multiplier = 0, 1
        for i, byte in enumerate(buf[1:], start=1):
            length += (byte & 0x7F) * multiplier
            if byte & 0x80 == 0:
                break
            if i == 4:
                raise ProtocolViolation("remaining length longer than four bytes [MQTT-2.2.3]")
            multiplier *= 128
        else:
            return None
        if length > self.max_packet_size:
            raise ProtocolViolation(f"packet of {length} bytes exceeds the maximum of {self.max_packet_size}")
        header = PacketHeader(buf[0] >> 4, buf[0] & 0x0F, length)
        self.packets_seen += 1
        self._skip = length
        if not length:
            self.packets_complete += 1
        self._header = bytearray()
        return header
