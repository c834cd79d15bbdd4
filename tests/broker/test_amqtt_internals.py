"""Fails loudly if an amqtt upgrade changes the internals the gateway's broker relies on."""

import inspect

import amqtt
from amqtt.adapters import ReaderAdapter, WriterAdapter
from amqtt.broker import Broker
from amqtt.contexts import ListenerType
from twisted.trial.unittest import SynchronousTestCase

PINNED = "0.12.1"


class AmqttInternalsTests(SynchronousTestCase):
    """The amqtt names and signatures gateway/broker/ overrides or calls."""

    def test_pinned_version(self) -> None:
        """The gateway was written against this amqtt; re-check the overrides before changing it."""
        self.assertEqual(amqtt.__version__, PINNED)

    def test_external_listener_interface(self) -> None:
        """External listeners exist and take (reader, writer, listener_name)."""
        self.assertEqual(ListenerType.EXTERNAL.value, "external")
        params = list(inspect.signature(Broker.external_connected).parameters)
        self.assertEqual(params, ["self", "reader", "writer", "listener_name"])
        self.assertEqual({"read", "feed_eof"}, ReaderAdapter.__abstractmethods__)
        self.assertEqual({"write", "drain", "get_peer_info", "get_ssl_info", "close"},
                         set(WriterAdapter.__abstractmethods__))

    def test_overridden_methods(self) -> None:
        """GatewayBroker overrides these private methods with these signatures."""
        self.assertEqual(list(inspect.signature(Broker._handle_message_delivery).parameters),
                         ["self", "client_session", "handler", "wait_deliver"])
        self.assertEqual(list(inspect.signature(Broker._broadcast_message).parameters),
                         ["self", "session", "topic", "data", "force_qos"])
        self.assertTrue(inspect.iscoroutinefunction(Broker.retain_message))
        self.assertIn("_subscriptions", inspect.getsource(Broker.__init__))
