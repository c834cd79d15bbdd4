"""Fails loudly if an amqtt upgrade changes the internals the gateway's broker relies on."""

import inspect

import amqtt
from amqtt.adapters import ReaderAdapter, WriterAdapter
from amqtt.broker import Broker
from amqtt.contexts import ListenerType
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler, Subscription, UnSubscription
from amqtt.plugins.manager import PluginManager
from amqtt.session import ApplicationMessage, OutgoingApplicationMessage, Session
from twisted.trial.unittest import SynchronousTestCase

from gateway.broker.amqtt_broker import GatewayBroker
from gateway.broker.handler import GatewayProtocolHandler

PINNED = "0.12.1"


def params(function: object) -> list[str]:
    return list(inspect.signature(function).parameters)  # type: ignore[arg-type]


class AmqttInternalsTests(SynchronousTestCase):
    """The amqtt names and signatures gateway/broker/ overrides or calls."""

    def test_pinned_version(self) -> None:
        """The gateway was written against this amqtt; re-check the overrides before changing it."""
        self.assertEqual(amqtt.__version__, PINNED)

    def test_external_listener_interface(self) -> None:
        """External listeners exist and take (reader, writer, listener_name)."""
        self.assertEqual(ListenerType.EXTERNAL.value, "external")
        self.assertEqual(params(Broker.external_connected), ["self", "reader", "writer", "listener_name"])
        self.assertEqual({"read", "feed_eof"}, ReaderAdapter.__abstractmethods__)
        self.assertEqual({"write", "drain", "get_peer_info", "get_ssl_info", "close"},
                         set(WriterAdapter.__abstractmethods__))

    def test_broker_overrides_keep_their_signatures(self) -> None:
        """Every Broker method GatewayBroker overrides still exists with the same parameters."""
        overridden = {
            "_initialize_client_session": ["self", "reader", "writer", "remote_address", "remote_port"],
            "create_offline_session": ["self", "client_id"],
            "_authenticate": ["self", "session", "_"],
            "_delete_session": ["self", "client_id"],
            "_session_monitor": ["self"],
            "_broadcast_message": ["self", "session", "topic", "data", "force_qos"],
            "retain_message": ["self", "source_session", "topic_name", "data", "qos"],
            "add_subscription": ["self", "subscription", "session"],
            "_del_subscription": ["self", "a_filter", "session"],
            "_del_all_subscriptions": ["self", "session"],
            "_handle_subscription": ["self", "client_session", "handler", "subscribe_waiter"],
            "_publish_retained_messages_for_subscription": ["self", "subscription", "session"],
        }
        for name, expected in overridden.items():
            self.assertEqual(params(getattr(Broker, name)), expected, name)
            self.assertIn(name, vars(GatewayBroker), f"GatewayBroker no longer overrides {name}")
            self.assertEqual(inspect.iscoroutinefunction(getattr(Broker, name)),
                             inspect.iscoroutinefunction(getattr(GatewayBroker, name)), name)
        self.assertEqual(params(Broker._topic_filtering), ["self", "session", "topic", "action"])

    def test_broker_flow_we_rely_on(self) -> None:
        """amqtt's session flow calls the hooks we override, in the order we expect."""
        source = inspect.getsource(Broker._handle_client_session)
        self.assertLess(source.index("mqtt_connack_authorize"), source.index("handler.start()"))
        self.assertIn("_publish_retained_messages_for_subscription", source)
        self.assertIn("_client_message_loop", source)
        loop = inspect.getsource(Broker._client_message_loop)
        for name in ("wait_disconnect", "get_next_pending_subscription", "get_next_pending_unsubscription",
                     "_handle_subscription", "_handle_unsubscription", "_handle_disconnect"):
            self.assertIn(name, loop)
        self.assertIn("_broadcast_message", inspect.getsource(Broker._handle_disconnect))
        # amqtt's own takeover (CleanSession=0) closes the old connection through the old handler's
        # handle_connection_closed, then stops it; GatewayBroker.take_over does the same from
        # handler.start(), which amqtt calls only for an authenticated client.
        self.assertLess(source.index("handle_connection_closed()"), source.index(".stop()"))
        self.assertLess(source.index("if not authenticated"), source.index("handler.start()"))
        # Unsubscribing goes through _del_subscription; shutdown's cleanup through _del_all_subscriptions.
        self.assertIn("_del_subscription", inspect.getsource(Broker._handle_unsubscription))
        self.assertIn("_del_all_subscriptions", inspect.getsource(Broker._cleanup_session))
        # The session expiry sweep starts with start() and stops with shutdown().
        self.assertEqual((params(Broker.start), params(Broker.shutdown)), (["self"], ["self"]))
        for name in ("_sessions", "_subscriptions", "_retained_messages"):
            self.assertIn(name, inspect.getsource(Broker.__init__))

    def test_plugin_manager_internals(self) -> None:
        """The fast path reads which plugins filter topics and which events have listeners."""
        init = inspect.getsource(PluginManager.__init__)
        self.assertIn("self._event_plugin_callbacks", init)
        self.assertIn("self._topic_plugins", init)

    def test_handler_internals(self) -> None:
        """GatewayProtocolHandler feeds amqtt's queues and waiters and replaces its publish flow."""
        self.assertTrue(issubclass(GatewayProtocolHandler, BrokerProtocolHandler))
        self.assertEqual(params(BrokerProtocolHandler.init_from_connect),
                         ["reader", "writer", "plugins_manager", "loop"])
        init = inspect.getsource(BrokerProtocolHandler.__init__)
        for name in ("_disconnect_waiter", "_pending_subscriptions", "_pending_unsubscriptions"):
            self.assertIn(name, init)
        self.assertEqual(params(Subscription), ["packet_id", "topics"])
        self.assertEqual(params(UnSubscription), ["packet_id", "topics"])
        self.assertEqual(params(BrokerProtocolHandler.mqtt_publish),
                         ["self", "topic", "data", "qos", "retain", "ack_timeout"])
        for name in ("start", "stop", "mqtt_publish", "handle_connection_closed"):
            self.assertIn(name, vars(GatewayProtocolHandler))
        self.assertTrue(inspect.iscoroutinefunction(BrokerProtocolHandler.handle_connection_closed))

    def test_session_internals(self) -> None:
        """Session state the handler, router and persistence read and write."""
        session = Session()
        for name in ("inflight_out", "inflight_in", "attributes", "clean_session", "parent", "transitions",
                     "client_id", "last_disconnect_time"):
            self.assertTrue(hasattr(session, name), name)
        self.assertEqual(session.next_packet_id, 1)
        self.assertIn("pubrec_packet", ApplicationMessage.__slots__)
        message = OutgoingApplicationMessage(1, "t", 2, b"", False)
        message.pubrec_packet = True
        self.assertEqual((message.topic, message.qos, message.data, message.retain), ("t", 2, b"", False))
