"""A CONNECT is authenticated before its client id touches any session (real sockets, paho clients).

amqtt looked the client id up, took the session over (closing the connected client),
cleared it (CleanSession=1) or rewrote its credentials, and only then asked the auth
plugins: a wrong password could knock a connected client off and wipe its queued messages.
"""

from __future__ import annotations


from twisted.internet.defer import inlineCallbacks

from tests.broker.harness import port_of
from tests.broker.test_integration import BrokerTestCase

REFUSED = (4, 5, 134, 135)  # paho reports 3.1.1 codes 4/5 as reason codes 134/135


class ConnectAuthenticationTests(BrokerTestCase):
    """A refused CONNECT gets CONNACK 4/5 and leaves the connected client and its session alone."""

    timeout = 60

    @inlineCallbacks
    def test_bad_credentials_do_not_take_over_a_connected_client(self):
        """Wrong password, same client id, CleanSession 1 and 0: refused; the connected client keeps receiving."""
        service = yield self.start_with_password_file()
        port = port_of(service)
        device = self.client(client_id="device-1", clean_session=False, username="alice", password="s3cret")
        self.assertEqual((yield device.connect(port)), 0)
        self.assertEqual(list((yield device.subscribe("t/#", 1))), [1])
        session = service.broker.sessions["device-1"]
        handler = service.broker.live["device-1"]
        for clean in (True, False):
            intruder = self.client(client_id="device-1", clean_session=clean, username="alice", password="guess")
            self.assertIn((yield intruder.connect(port)), REFUSED)
            anonymous = self.client(client_id="device-1", clean_session=clean)
            self.assertIn((yield anonymous.connect(port)), REFUSED)
        self.assertIs(service.broker.sessions["device-1"], session)
        self.assertIs(service.broker.live["device-1"], handler)  # not taken over by the refused CONNECTs
        publisher = self.client(username="alice", password="s3cret")
        self.assertEqual((yield publisher.connect(port)), 0)
        yield publisher.publish("t/live", b"still here", 1)
        message = yield device.next_message()
        self.assertEqual((message.topic, message.payload), ("t/live", b"still here"))
        self.assertFalse(device.disconnected().called)

    @inlineCallbacks
    def test_bad_credentials_do_not_clear_a_persistent_session(self):
        """An offline persistent session with queued messages survives a refused CleanSession=1 CONNECT."""
        service = yield self.start_with_password_file()
        port = port_of(service)
        device = self.client(client_id="device-2", clean_session=False, username="alice", password="s3cret")
        self.assertEqual((yield device.connect(port)), 0)
        yield device.subscribe("q/#", 1)
        device.stop()
        yield device.disconnected()
        publisher = self.client(username="alice", password="s3cret")
        self.assertEqual((yield publisher.connect(port)), 0)
        for n in range(3):
            yield publisher.publish(f"q/{n}", b"queued %d" % n, 1)
        for clean in (True, False):
            intruder = self.client(client_id="device-2", clean_session=clean, username="alice", password="guess")
            self.assertIn((yield intruder.connect(port)), REFUSED)
        again = self.client(client_id="device-2", clean_session=False, username="alice", password="s3cret")
        self.assertEqual((yield again.connect(port)), 0)
        received = []
        for _ in range(3):
            received.append((yield again.next_message()).payload)
        self.assertEqual(received, [b"queued 0", b"queued 1", b"queued 2"])
