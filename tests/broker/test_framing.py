"""The framing layer finds packet boundaries and refuses what cannot be MQTT."""

from twisted.trial.unittest import SynchronousTestCase

from gateway.broker.framing import PacketFramer, ProtocolViolation

CONNECT = bytes([0x10, 0x0C, 0x00, 0x04]) + b"MQTT" + bytes([0x04, 0x02, 0x00, 0x3C, 0x00, 0x00])
PINGREQ = bytes([0xC0, 0x00])


class PacketFramerTests(SynchronousTestCase):
    """MQTT 3.1.1 §2.2 fixed headers, §3.1 CONNECT first."""

    def test_packets_split_across_chunks(self) -> None:
        """Headers are found however the stream is cut."""
        stream = CONNECT + PINGREQ + bytes([0x30, 0x05, 0x00, 0x01]) + b"abc" + PINGREQ
        for cut in range(1, len(stream)):
            framer = PacketFramer(1024)
            headers = framer.feed(stream[:cut]) + framer.feed(stream[cut:])
            self.assertEqual([h.packet_type for h in headers], [1, 12, 3, 12])
            self.assertEqual(framer.packets_complete, 4)
        self.assertEqual(PacketFramer(1024).feed(stream)[2].length, 5)

    def test_first_packet_must_be_connect(self) -> None:
        """[MQTT-3.1.0-1] anything but CONNECT first is a violation."""
        self.assertRaises(ProtocolViolation, PacketFramer(1024).feed, PINGREQ)
        self.assertRaises(ProtocolViolation, PacketFramer(1024).feed, b"GET / HTTP/1.1\r\n")

    def test_remaining_length_over_four_bytes(self) -> None:
        """§2.2.3: the remaining length takes at most four bytes."""
        framer = PacketFramer(1 << 30)
        framer.feed(CONNECT)
        self.assertRaises(ProtocolViolation, framer.feed, bytes([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]))

    def test_oversized_packet(self) -> None:
        """A packet larger than the configured maximum is refused before its body arrives."""
        framer = PacketFramer(100)
        framer.feed(CONNECT)
        self.assertRaises(ProtocolViolation, framer.feed, bytes([0x30, 0xE5, 0x00]))  # 101 bytes
        framer = PacketFramer(101)
        framer.feed(CONNECT)
        self.assertEqual(framer.feed(bytes([0x30, 0x65]))[0].length, 101)
