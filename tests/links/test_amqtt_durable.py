"""Fails loudly if the internals the durable acknowledgement relies on change."""

import inspect

import amqtt
from amqtt.broker import Broker
from twisted.trial.unittest import SynchronousTestCase

from gateway.broker.amqtt_broker import GatewayBroker
from gateway.broker.durable_ack import DurableAckHandler
from gateway.broker.handler import GatewayProtocolHandler


class DurableAckInternalsTests(SynchronousTestCase):
    """The names and signatures gateway/broker/durable_ack.py depends on."""

    def test_pinned_version(self) -> None:
        """Written against amqtt 0.12.1."""
        self.assertEqual(amqtt.__version__, "0.12.1")

    def test_handler_hooks(self) -> None:
        """The gateway handler's hooks: packets arrive whole, acknowledgements go through one method."""
        self.assertTrue(issubclass(DurableAckHandler, GatewayProtocolHandler))
        self.assertEqual(list(inspect.signature(GatewayProtocolHandler.acknowledge).parameters), ["self", "message"])
        self.assertEqual(list(inspect.signature(GatewayProtocolHandler.packet_received).parameters),
                         ["self", "packet"])
        self.assertIn("self.acknowledge(message)", inspect.getsource(GatewayProtocolHandler._publish_received))

    def test_broker_is_durable_by_default(self) -> None:
        """The broker builds durable-ack handlers unless told otherwise."""
        default = inspect.signature(GatewayBroker.__init__).parameters["handler_class"].default
        self.assertIs(default, DurableAckHandler)

    def test_acl_check(self) -> None:
        """amqtt's topic ACL check, asked before anything is stored when ACL plugins exist."""
        self.assertEqual(list(inspect.signature(Broker._topic_filtering).parameters),
                         ["self", "session", "topic", "action"])
        self.assertTrue(inspect.iscoroutinefunction(Broker._topic_filtering))
