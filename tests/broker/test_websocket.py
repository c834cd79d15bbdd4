"""amqtt's own websocket listener stays available beside the Twisted-owned ones."""


from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.broker.harness import ANONYMOUS, port_of, start_broker
from tests.ports import free_port
from tests.mqttclient import TestClient



class WebsocketListenerTests(TestCase):
    """A browser-style MQTT-over-websocket client talks to a TCP client through one broker."""

    timeout = 30

    @inlineCallbacks
    def test_websocket_and_tcp_clients_share_the_broker(self):
        """A ``type: ws`` listener is served by amqtt; its clients see TCP clients' messages."""
        ws_port = free_port()
        service = yield start_broker(self, reactor, {
            "listeners": {"default": {"endpoint": "tcp:0:interface=127.0.0.1"},
                          "ws": {"type": "ws", "bind": f"127.0.0.1:{ws_port}"}},
            "plugins": ANONYMOUS})
        browser = TestClient(reactor, transport="websockets")
        self.addCleanup(browser.stop)
        self.assertEqual((yield browser.connect(ws_port)), 0)
        yield browser.subscribe("dashboard/#", 1)
        device = TestClient(reactor)
        self.addCleanup(device.stop)
        yield device.connect(port_of(service))
        yield device.publish("dashboard/temp", b"22", 1)
        self.assertEqual((yield browser.next_message()).payload, b"22")
