"""amqtt behind one adapter: the public amqtt API it uses (pinned), and users' plugins running unchanged."""

from __future__ import annotations

import asyncio
import inspect
import re

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import SynchronousTestCase

from gateway.broker import amqtt_adapter
from gateway.broker.amqtt_adapter import _ContextBroker
from gateway.broker.connection import UNREAD_LIMIT
from gateway.mqtt import packets as mqtt_packets
from tests.apps.realtime import wait_until
from tests.broker import packets, userplugins
from tests.broker.harness import ANONYMOUS, port_of, start_broker
from tests.broker.mqttraw import scripted_connect
from tests.broker.test_delivery import DeliveryTestCase
from tests.broker.test_durable_ack import attached, make_broker

USER_PASS = 0x02 | 0x80 | 0x40


class PinnedAmqttAPITests(SynchronousTestCase):
    """Fails loudly when an amqtt upgrade changes a public name the adapter relies on."""

    def test_modules_and_names(self) -> None:
        """The adapter imports only these amqtt names (public modules, no underscore)."""
        source = inspect.getsource(amqtt_adapter)
        imported = re.findall(r"^from (amqtt[\w.]*) import (.+)$", source, re.M)
        self.assertEqual(sorted(imported), [
            ("amqtt.broker", "BrokerContext, RetainedApplicationMessage"),
            ("amqtt.contexts", "Action, BrokerConfig"),
            ("amqtt.events", "BrokerEvents"),
            ("amqtt.plugins.base", "BaseTopicPlugin"),
            ("amqtt.plugins.manager", "PluginManager"),
            ("amqtt.session", "IncomingApplicationMessage, Session"),
        ])
        self.assertNotRegex(source, r"manager\._|config\._|context\._")

    def test_plugin_manager(self) -> None:
        """PluginManager(namespace, context, loop) and the calls the adapter makes."""
        from amqtt.plugins.manager import PluginManager

        self.assertEqual(list(inspect.signature(PluginManager.__init__).parameters),
                         ["self", "namespace", "context", "loop"])
        self.assertEqual(list(inspect.signature(PluginManager.map_plugin_auth).parameters), ["self", "session"])
        self.assertEqual(list(inspect.signature(PluginManager.map_plugin_topic).parameters),
                         ["self", "session", "topic", "action"])
        self.assertEqual(list(inspect.signature(PluginManager.fire_event).parameters),
                         ["self", "event_name", "wait", "method_kwargs"])
        for name in ("is_topic_filtering_enabled", "close", "plugins"):
            self.assertTrue(hasattr(PluginManager, name), name)

    def test_broker_context_reaches_only_what_the_adapter_offers(self) -> None:
        """Every broker member amqtt's BrokerContext calls exists on the adapter's stand-in broker
        (``_sessions`` is reached only after ``create_offline_session``, which the adapter refuses)."""
        from amqtt.broker import BrokerContext

        used = set(re.findall(r"_broker_instance\.(\w+)", inspect.getsource(BrokerContext)))
        offered = {name for name in dir(_ContextBroker) if not name.startswith("__")}
        self.assertEqual(used - offered, {"_sessions"})
        self.assertEqual(list(inspect.signature(BrokerContext.__init__).parameters), ["self", "broker"])

    def test_session_and_messages(self) -> None:
        """The Session attributes the adapter fills, and the message classes' constructors."""
        from amqtt.broker import RetainedApplicationMessage
        from amqtt.session import IncomingApplicationMessage, Session

        session = Session()
        for name in ("client_id", "clean_session", "username", "password", "keep_alive", "remote_address",
                     "remote_port", "ssl_object", "will_flag", "will_topic", "will_message", "will_qos",
                     "will_retain"):
            self.assertTrue(hasattr(session, name), name)
        retained = RetainedApplicationMessage(None, "t", b"x", 1)
        self.assertEqual((retained.topic, retained.data, retained.qos), ("t", b"x", 1))
        incoming = IncomingApplicationMessage(3, "t", 1, b"x", True)
        self.assertEqual((incoming.packet_id, incoming.topic, incoming.qos, incoming.data, incoming.retain),
                         (3, "t", 1, b"x", True))

    def test_events_and_config(self) -> None:
        """amqtt's event names the broker fires, and its config reader."""
        from amqtt.contexts import BrokerConfig
        from amqtt.events import BrokerEvents

        self.assertEqual({e.name for e in BrokerEvents}, {
            "PRE_START", "POST_START", "PRE_SHUTDOWN", "POST_SHUTDOWN", "CLIENT_CONNECTED", "CLIENT_DISCONNECTED",
            "CLIENT_SUBSCRIBED", "CLIENT_UNSUBSCRIBED", "RETAINED_MESSAGE", "MESSAGE_RECEIVED", "MESSAGE_BROADCAST"})
        config = BrokerConfig.from_dict({"listeners": {"default": {"type": "external"}}, "plugins": ANONYMOUS})
        self.assertEqual(config.get("plugins"), ANONYMOUS)


def section(plugins: dict) -> dict:
    """A broker section on a free port with ``plugins``."""
    return {"listeners": {"default": {"endpoint": "tcp:0:interface=127.0.0.1"}}, "plugins": plugins}


class IgnoredKeysTests(SynchronousTestCase):
    """Keys docs/broker.md lists as accepted and ignored stay ignored with an hbmqtt-style config."""

    def test_sys_interval_ignored_with_entry_point_plugins(self) -> None:
        """With the deprecated ``auth:`` section amqtt loads every entry-point plugin, BrokerSysPlugin
        too, which read ``sys_interval`` from the broker config and, once it came, failed on the
        sessions it is given (one asyncio error, then no $SYS). The plugins do not see it."""
        loop = asyncio.new_event_loop()
        self.addCleanup(loop.close)
        plugins = amqtt_adapter.AmqttPlugins({
            "listeners": {"default": {"type": "external"}}, "sys_interval": 1,
            "auth": {"allow-anonymous": True, "plugins": ["auth_anonymous"]}}, loop)
        self.assertIn("BrokerSysPlugin", [type(plugin).__name__ for plugin in plugins.manager.plugins])
        self.assertIsNone(plugins.config.sys_interval)


class ContextRetainTests(SynchronousTestCase):
    """A plugin's ``BrokerContext.retain_message`` works as with amqtt (docs/broker.md): it keeps the
    topic's retained message for later subscribers and sends nothing to the present ones
    (amqtt's ``broadcast_message`` is what sends). StringTransport and task.Clock, no sockets."""

    def test_retain_message_only_retains(self) -> None:
        """A subscriber of the topic gets nothing; a later SUBSCRIBE gets it as retained; an empty
        payload removes it."""
        clock = Clock()
        broker = make_broker(self, clock)
        subscriber, transport = attached(broker, "sub", clock)
        broker.subscribe_session(subscriber.session, "ctx/#", 1)
        context = broker.plugins.manager.app_context
        run = broker.plugins.loop.run_until_complete
        run(context.retain_message("ctx/kept", b"kept", 1))
        clock.advance(0)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(broker.retained, {"ctx/kept": (b"kept", 1)})
        broker.send_retained("ctx/#", 1, subscriber)
        clock.advance(0)
        self.assertEqual(transport.value(), mqtt_packets.publish("ctx/kept", b"kept", 1, True, 1))
        run(context.retain_message("ctx/kept", b""))
        self.assertEqual(broker.retained, {})


class ContextSubscriptionTests(SynchronousTestCase):
    """A plugin's ``BrokerContext.add_subscription`` refuses an invalid filter as amqtt's does
    (0x80, nothing subscribed), and a QoS over 2 as well (amqtt keeps it; here it would make
    the saved state unreadable at the next start)."""

    def test_add_subscription_checks_filter_and_qos(self) -> None:
        """A valid filter subscribes the client; ``a/#/b``, ``a+`` or QoS 3 change nothing."""
        clock = Clock()
        broker = make_broker(self, clock)
        subscriber, _ = attached(broker, "sub", clock)
        context = broker.plugins.manager.app_context
        run = broker.plugins.loop.run_until_complete
        for topic_filter, qos in [("a/#/b", 1), ("a+", 0), ("a/+", 3)]:
            run(context.add_subscription("sub", topic_filter, qos))
        self.assertEqual(broker.subscriptions, {})
        run(context.add_subscription("sub", "a/+", 1))
        self.assertEqual(list(broker.subscriptions), ["a/+"])


class UserPluginTests(DeliveryTestCase):
    """A user's own amqtt plugins (dotted paths in ``plugins:``) and amqtt's ACL plugin run unchanged."""

    def setUp(self) -> None:
        userplugins.EVENTS.clear()
        userplugins.CONTEXTS.clear()

    @inlineCallbacks
    def test_users_auth_plugin_decides(self):
        """Right password: CONNACK 0; wrong: 5; the plugin raising: 3 (server unavailable), logged."""
        service = yield start_broker(self, reactor, section({"tests.broker.userplugins.PasswordPrefixAuth": {}}))
        good = yield self.client(service, "a", flags=USER_PASS, username="alice", password=b"alice-ok")
        self.assertEqual(good.others[0], (0x20, b"\x00\x00"))
        bad = yield self.client(service, "b", flags=USER_PASS, username="bob", password=b"guess")
        self.assertEqual(bad.others[0], (0x20, b"\x00\x05"))
        broken = yield start_broker(self, reactor, section({"tests.broker.userplugins.ExplodingAuth": {}}))
        victim = yield self.client(broken, "c", flags=USER_PASS, username="carol", password=b"carol-ok")
        self.assertEqual(victim.others[0], (0x20, b"\x00\x03"))
        yield victim.lost.addTimeout(5, reactor)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    @inlineCallbacks
    def test_auth_plugin_that_never_answers(self):
        """No answer within connect_timeout: the connection is closed without a CONNACK, and the
        late answer changes nothing."""
        config = section({"tests.broker.userplugins.StalledAuth": {}})
        config["connect_timeout"] = 0.5
        service = yield start_broker(self, reactor, config)
        self.addCleanup(lambda: [event.set() for event in userplugins.RELEASE])
        client = yield scripted_connect(reactor, port_of(service), True)
        client.transport.write(packets.connect("waiting"))
        yield client.lost.addTimeout(5, reactor)
        self.assertEqual(client.others, [])
        for event in userplugins.RELEASE:
            event.set()
        yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual((service.broker.sessions, service.broker.live), ({}, {}))

    @inlineCallbacks
    def test_client_that_hangs_up_before_its_connect_is_decided(self):
        """§3.1.4: a client need not wait for CONNACK. One that sends CONNECT, PUBLISH and
        DISCONNECT in one write and closes before authentication answers still has its
        message delivered (no will: it disconnected); one that sends CONNECT with a will and a
        PUBLISH and vanishes has both delivered, the will as its connection ends."""
        service = yield start_broker(self, reactor, section({"tests.broker.userplugins.StalledAuth": {}}))
        self.addCleanup(lambda: [event.set() for event in userplugins.RELEASE])
        userplugins.RELEASE.clear()

        @inlineCallbacks
        def released():  # the CONNECT waiting for authentication is let through
            yield wait_until(lambda: userplugins.RELEASE, 5, what="a CONNECT waiting for authentication")
            userplugins.RELEASE.pop().set()

        sub = yield scripted_connect(reactor, port_of(service), True)
        self.addCleanup(lambda: sub.transport.abortConnection())
        sub.transport.write(packets.connect("sub") + packets.subscribe(("#", 1)))
        yield released()
        yield sub.until(lambda: len(sub.others) >= 2, reactor)  # CONNACK, SUBACK
        for client_id, ending, will in (("polite", packets.DISCONNECT, None),
                                        ("vanished", b"", ("wills/vanished", b"gone"))):
            client = yield scripted_connect(reactor, port_of(service), True)
            connect = packets.connect(client_id, flags=0x02 | 0x04, will=will) if will else packets.connect(client_id)
            client.transport.write(connect + packets.publish(f"data/{client_id}", b"hello", qos=1, packet_id=1)
                                   + ending)
            client.transport.loseConnection()
            yield client.lost.addTimeout(5, reactor)
            yield released()
        yield sub.until(lambda: len(sub.publishes) >= 3, reactor)
        self.assertEqual(sorted(p[:2] for p in sub.publishes),
                         [("data/polite", b"hello"), ("data/vanished", b"hello"), ("wills/vanished", b"gone")])
        self.assertEqual(service.broker.live, {"sub": service.broker.live["sub"]})

    @inlineCallbacks
    def test_a_client_flooding_before_its_connect_is_decided(self):
        """A client sends CONNECT and 1 MiB of PUBLISHes without waiting, and authentication
        takes its time: the broker holds at most 64 KiB (and one read) of it, the rest waits in
        the socket; once accepted, every message reaches the subscriber, in order."""
        service = yield start_broker(self, reactor, section({"tests.broker.userplugins.StalledAuth": {}}))
        self.addCleanup(lambda: [event.set() for event in userplugins.RELEASE])
        userplugins.RELEASE.clear()
        sub = yield scripted_connect(reactor, port_of(service), True)
        self.addCleanup(lambda: sub.transport.abortConnection())
        sub.transport.write(packets.connect("sub") + packets.subscribe(("flood/#", 0)))
        yield wait_until(lambda: userplugins.RELEASE, 5, what="the subscriber's CONNECT waiting")
        userplugins.RELEASE.pop().set()
        yield sub.until(lambda: len(sub.others) >= 2, reactor)  # CONNACK, SUBACK
        flooder = yield scripted_connect(reactor, port_of(service), True)
        self.addCleanup(lambda: flooder.transport.abortConnection())
        payloads = [b"%06d" % n + b"x" * 4090 for n in range(256)]
        flooder.transport.write(packets.connect("flooder") + b"".join(
            packets.publish("flood/x", payload) for payload in payloads))
        yield wait_until(lambda: userplugins.RELEASE, 5, what="the flooder's CONNECT waiting")
        [connection] = [c for c in service.factories["default"].connections if c.handler is None]
        yield wait_until(lambda: connection.reading_paused, 5, what="reading stopped")
        yield deferLater(reactor, 0.2, lambda: None)  # (nothing more is read meanwhile)
        held = sum(len(p.body) for p in connection.pending if not isinstance(p, int))
        self.assertLessEqual(held, UNREAD_LIMIT + (64 << 10))  # the limit, and at most one read past it
        self.assertLessEqual(connection.undecided_bytes, UNREAD_LIMIT + (64 << 10))
        userplugins.RELEASE.pop().set()
        yield sub.until(lambda: len(sub.publishes) >= len(payloads), reactor)
        self.assertEqual([p[1] for p in sub.publishes], payloads)

    @inlineCallbacks
    def test_users_topic_plugin_filters(self):
        """Refused publishes are acknowledged but go nowhere; refused filters get 0x80; refused receipt is skipped."""
        service = yield start_broker(self, reactor, section({
            "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
            "tests.broker.userplugins.NoSecrets": {}}))
        sub = yield self.subscribed(service, "sub", ("#", 1), ("forbidden/#", 1))
        self.assertEqual(sub.others[1], (0x90, b"\x00\x01\x01\x80"))
        pub = yield self.client(service, "pub")
        pub.transport.write(packets.publish("secret/x", b"no", qos=1, packet_id=1)
                            + packets.publish("hidden/x", b"not for sub", qos=1, packet_id=2)
                            + packets.publish("open/x", b"yes", qos=1, packet_id=3))
        yield pub.until(lambda: len(pub.others) >= 4, reactor)  # CONNACK and three PUBACKs, in order
        self.assertEqual([body for _, body in pub.others[1:]], [b"\x00\x01", b"\x00\x02", b"\x00\x03"])
        yield sub.until(lambda: sub.publishes, reactor)
        yield deferLater(reactor, 0.1, lambda: None)
        self.assertEqual([p[:2] for p in sub.publishes], [("open/x", b"yes")])

    @inlineCallbacks
    def test_topic_plugin_is_asked_for_retained_and_internal_deliveries(self):
        """A client the topic plugin does not let receive ``hidden/`` topics gets neither their
        retained messages when it subscribes (by name or by wildcard) nor the gateway's own
        publishes to them; the topics it may read still come, retained and live."""
        service = yield start_broker(self, reactor, section({
            "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
            "tests.broker.userplugins.NoSecrets": {}}))
        pub = yield self.client(service, "pub")
        pub.transport.write(packets.publish("hidden/x", b"not for sub", qos=1, packet_id=1, retain=True)
                            + packets.publish("open/x", b"kept", qos=1, packet_id=2, retain=True))
        yield pub.until(lambda: len(pub.others) >= 3, reactor)  # CONNACK and two PUBACKs
        sub = yield self.subscribed(service, "sub", ("hidden/x", 1), ("#", 1))
        yield sub.until(lambda: sub.publishes, reactor)
        yield service.bus.publish("hidden/y", b"internal", 1)
        yield service.bus.publish("open/y", b"internal", 1)
        yield sub.until(lambda: len(sub.publishes) >= 2, reactor)
        yield deferLater(reactor, 0.1, lambda: None)
        self.assertEqual([p[:2] for p in sub.publishes], [("open/x", b"kept"), ("open/y", b"internal")])

    @inlineCallbacks
    def test_failing_topic_plugin_leaves_the_publish_unacknowledged(self):
        """A topic plugin that raises on a PUBLISH: no PUBACK, the connection closes (the client
        sends it again), nothing is delivered; the error is logged."""
        service = yield start_broker(self, reactor, section({
            "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
            "tests.broker.userplugins.ExplodingTopics": {}}))
        sub = yield self.subscribed(service, "sub", ("#", 1))
        pub = yield self.client(service, "pub")
        pub.transport.write(packets.publish("fine/x", b"ok", qos=1, packet_id=1)
                            + packets.publish("boom/x", b"lost?", qos=1, packet_id=2))
        yield pub.lost.addTimeout(5, reactor)
        self.assertEqual([body for _, body in pub.others[1:]], [b"\x00\x01"])  # PUBACK 1 only
        yield deferLater(reactor, 0.1, lambda: None)
        self.assertEqual([p[:2] for p in sub.publishes], [("fine/x", b"ok")])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    @inlineCallbacks
    def test_amqtt_acl_plugin(self):
        """amqtt's TopicAccessControlListPlugin: subscribe and publish ACLs by user name."""
        service = yield start_broker(self, reactor, section({
            "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
            "amqtt.plugins.topic_checking.TopicAccessControlListPlugin": {
                "acl": {"anonymous": ["allowed/#"]}, "publish_acl": {"anonymous": ["allowed/#"]}}}))
        sub = yield self.subscribed(service, "sub", ("allowed/#", 1), ("other/#", 1))
        self.assertEqual(sub.others[1], (0x90, b"\x00\x01\x01\x80"))
        pub = yield self.client(service, "pub")
        pub.transport.write(packets.publish("allowed/x", b"ok", qos=1, packet_id=1))
        yield sub.until(lambda: sub.publishes, reactor)
        self.assertEqual(sub.publishes[0][:2], ("allowed/x", b"ok"))

    @inlineCallbacks
    def test_topic_check_section_alone(self):
        """A deprecated ``topic-check:`` section without ``plugins`` or ``auth``: anonymous
        clients are refused and a client with a user name accepted, as with no section at all
        (docs/configuration.md: with no plugins and no auth, anonymous clients are refused), and
        its ACL applies. amqtt's own defaults for that config let anonymous clients in and
        ignored the section."""
        service = yield start_broker(self, reactor, {
            "listeners": {"default": {"endpoint": "tcp:0:interface=127.0.0.1"}},
            "topic-check": {"enabled": True, "plugins": ["topic_acl"], "acl": {"alice": ["allowed/#"]}}})
        anonymous = yield self.client(service, "anonymous")
        self.assertEqual(anonymous.others[0], (0x20, b"\x00\x05"))
        sub = yield self.subscribed(service, "alice", ("allowed/#", 1), ("other/#", 1), flags=0x02 | 0x80,
                                    username="alice")
        self.assertEqual(sub.others[0], (0x20, b"\x00\x00"))
        self.assertEqual(sub.others[1], (0x90, b"\x00\x01\x01\x80"))

    @inlineCallbacks
    def test_auth_section_without_allow_anonymous_refuses_anonymous_clients(self):
        """A deprecated ``auth:`` section that does not say ``allow-anonymous`` (``auth: {}``, or
        a plugin list alone) refuses clients without a user name (CONNACK 5), as the broker does
        with no section at all; amqtt's own default (``allow-anonymous: true``) let them in.
        Saying ``allow-anonymous: true`` lets them in."""
        for auth in ({}, {"plugins": ["auth_anonymous"]}):
            service = yield start_broker(self, reactor, {
                "listeners": {"default": {"endpoint": "tcp:0:interface=127.0.0.1"}}, "auth": auth})
            anonymous = yield self.client(service, "anonymous")
            self.assertEqual(anonymous.others[0], (0x20, b"\x00\x05"), auth)
            yield service.stopService()
        service = yield start_broker(self, reactor, {
            "listeners": {"default": {"endpoint": "tcp:0:interface=127.0.0.1"}},
            "auth": {"plugins": ["auth_anonymous"], "allow-anonymous": True}})
        anonymous = yield self.client(service, "anonymous")
        self.assertEqual(anonymous.others[0], (0x20, b"\x00\x00"))

    @inlineCallbacks
    def test_users_event_plugin_and_context(self):
        """Broker events reach the plugin with amqtt's arguments; its BrokerContext publishes and reads state."""
        service = yield start_broker(self, reactor, section({
            "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
            "tests.broker.userplugins.RecordingEvents": {"note": "mine"}}))
        sub = yield self.subscribed(service, "sub", ("e/#", 1))
        pub = yield self.client(service, "pub")
        pub.transport.write(packets.publish("e/1", b"hello", qos=1, packet_id=1, retain=True))
        yield sub.until(lambda: sub.publishes, reactor)
        sub.transport.write(packets.unsubscribe("e/#", packet_id=2))
        yield sub.until(lambda: (0xB0, b"\x00\x02") in sub.others, reactor)
        context = userplugins.CONTEXTS[0]
        self.assertEqual(sorted(s.client_id for s in context.sessions), ["pub", "sub"])
        self.assertEqual(context.get_session("pub").client_id, "pub")
        self.assertEqual(bytes(context.retained_messages["e/1"].data), b"hello")
        watcher = yield self.subscribed(service, "watcher", ("ctx/#", 0))
        self.assertEqual([s.client_id for s, _ in context.subscriptions["ctx/#"]], ["watcher"])
        yield context.broadcast_message("ctx/hi", b"from a plugin")
        yield watcher.until(lambda: watcher.publishes, reactor)
        self.assertEqual(watcher.publishes[0][:2], ("ctx/hi", b"from a plugin"))
        pub.transport.write(packets.DISCONNECT)
        yield pub.lost
        yield deferLater(reactor, 0.1, lambda: None)
        kinds = [kind for kind, _ in userplugins.EVENTS]
        for kind in ("connected", "subscribed", "received", "retained", "unsubscribed", "disconnected"):
            self.assertIn(kind, kinds)
        self.assertIn(("received", ("pub", "e/1", b"hello")), userplugins.EVENTS)
        self.assertIn(("subscribed", ("sub", "e/#", 1)), userplugins.EVENTS)
        self.assertIn(("disconnected", "pub"), userplugins.EVENTS)
