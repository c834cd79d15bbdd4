"""Fails loudly if an amqtt upgrade changes the internals the durable acknowledgement relies on."""

import inspect

import amqtt
from amqtt.broker import Broker
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.mqtt.protocol.handler import ProtocolHandler
from amqtt.session import INCOMING, Session
from twisted.trial.unittest import SynchronousTestCase

from gateway.broker.durable_ack import DurableAckHandler


class DurableAckInternalsTests(SynchronousTestCase):
    """The amqtt names, signatures and behaviours gateway/broker/durable_ack.py depends on."""

    def test_pinned_version(self) -> None:
        """Written against amqtt 0.12.1: re-read handler.py's QoS flows before changing it."""
        self.assertEqual(amqtt.__version__, "0.12.1")

    def test_flow_methods(self) -> None:
        """The QoS flows DurableAckHandler wraps exist, are coroutines and take one message."""
        for name in ("_handle_qos0_message_flow", "_handle_qos1_message_flow", "_handle_qos2_message_flow"):
            method = getattr(ProtocolHandler, name)
            self.assertTrue(inspect.iscoroutinefunction(method), name)
            self.assertEqual(list(inspect.signature(method).parameters), ["self", "app_message"])
            self.assertIn(name, inspect.getsource(ProtocolHandler._handle_message_flow))

    def test_incoming_qos1_acks_in_the_flow(self) -> None:
        """PUBACK is sent inside the QoS 1 flow (so waiting before it delays the PUBACK)."""
        source = inspect.getsource(ProtocolHandler._handle_qos1_message_flow)
        self.assertIn("PubackPacket.build(app_message.packet_id)", source)
        self.assertIn("app_message.direction == INCOMING", source)
        self.assertEqual(INCOMING, 1)

    def test_incoming_qos2_pubrec_in_the_flow(self) -> None:
        """PUBREC is sent inside the QoS 2 flow, after the message is put in inflight_in."""
        source = inspect.getsource(ProtocolHandler._handle_qos2_message_flow)
        self.assertIn("self.session.inflight_in[app_message.packet_id] = app_message", source)
        self.assertIn("PubrecPacket.build(app_message.packet_id)", source)
        self.assertIn("inflight_in", inspect.getsource(Session.__init__))

    def test_handler_creation_hook(self) -> None:
        """The broker gets its handler from _initialize_client_session, which returns (handler, session)."""
        params = list(inspect.signature(Broker._initialize_client_session).parameters)
        self.assertEqual(params, ["self", "reader", "writer", "remote_address", "remote_port"])
        self.assertIn("handler, client_session = await self._initialize_client_session(",
                      inspect.getsource(Broker._client_connected))
        self.assertIn("cls(plugins_manager, loop=loop)", inspect.getsource(BrokerProtocolHandler.init_from_connect))
        self.assertEqual(list(inspect.signature(Broker._topic_filtering).parameters),
                         ["self", "session", "topic", "action"])
        self.assertTrue(issubclass(DurableAckHandler, BrokerProtocolHandler))

    def test_publish_is_handled_in_order(self) -> None:
        """Each PUBLISH is handled in its own task, created in arrival order (so appends keep order)."""
        source = inspect.getsource(ProtocolHandler._reader_loop)
        self.assertIn("task = asyncio.create_task(self.handle_publish(packet))", source)
