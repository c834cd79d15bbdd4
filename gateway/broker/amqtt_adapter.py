"""The one place the broker meets amqtt: its plugins, through amqtt's public plugin API.

The broker speaks MQTT itself (:mod:`gateway.broker.core`). What users bring from amqtt
keeps working through :class:`AmqttPlugins`:

- the ``broker:`` section is read by amqtt's own ``BrokerConfig.from_dict`` (so an
  amqtt/hbmqtt config is accepted as it is);
- amqtt's :class:`~amqtt.plugins.manager.PluginManager` loads the configured plugins
  (``plugins:``, or the legacy ``auth:``/``topic-check:`` sections) with an amqtt
  :class:`~amqtt.broker.BrokerContext`;
- authentication (``map_plugin_auth``) and topic checks (``map_plugin_topic``) run as amqtt
  runs them, on an amqtt :class:`~amqtt.session.Session` made for the purpose
  (:func:`session_view`);
- broker events (``on_broker_client_connected`` ...) are fired with amqtt's names and
  arguments through ``fire_event``.

Only public amqtt names are used; ``tests/broker/test_amqtt_adapter.py`` pins them.
"""

from __future__ import annotations

import asyncio
import copy
from importlib.metadata import entry_points
from typing import Any, Iterator, Protocol

from amqtt.broker import BrokerContext, RetainedApplicationMessage
from amqtt.contexts import Action, BrokerConfig
from amqtt.events import BrokerEvents
from amqtt.plugins.base import BaseTopicPlugin
from amqtt.plugins.manager import PluginManager
from amqtt.session import IncomingApplicationMessage, Session
from twisted.internet.defer import Deferred, succeed

from gateway.broker.clientsession import ClientSession, Will
from gateway.errors import BrokerError
from gateway.mqtt.packets import SUBACK_FAILURE
from gateway.mqtt.topics import valid_filter

#: amqtt's plugin namespace for brokers (entry points, deprecated by amqtt but still read).
NAMESPACE = "amqtt.broker.plugins"

__all__ = ["Action", "AmqttPlugins", "BrokerEvents", "PeerCertificate", "PluginBroker", "check_config",
           "entry_point_plugins", "session_view"]


def entry_point_plugins() -> list[str]:
    """The names of amqtt's entry-point plugins (``auth_anonymous``, ``auth_file``, ``topic_acl``
    ...), which the deprecated ``auth:`` and ``topic-check:`` sections list, sorted."""
    return sorted({entry.name for entry in entry_points(group=NAMESPACE)})


def check_config(config: dict[str, Any]) -> None:
    """Validate an amqtt broker configuration as amqtt reads it (``BrokerConfig.from_dict``).

    :raises Exception: amqtt's (or dacite's) error, naming what is wrong.
    """
    BrokerConfig.from_dict(copy.deepcopy(config))


class PeerCertificate:
    """The slice of :class:`ssl.SSLObject` amqtt's plugins use: ``getpeercert``.

    :param x509: the peer's pyOpenSSL certificate (already verified by the TLS layer).
    """

    def __init__(self, x509: Any) -> None:
        self._x509 = x509

    def getpeercert(self, binary_form: bool = False) -> Any:
        """The peer certificate: DER bytes, or a dict with its subject like the ssl module's."""
        from OpenSSL import crypto

        if binary_form:
            return crypto.dump_certificate(crypto.FILETYPE_ASN1, self._x509)
        subject = tuple(((k.decode(), v.decode()),) for k, v in self._x509.get_subject().get_components())
        return {"subject": subject}


#: The plain attributes of a fresh amqtt ``Session`` (its state machine and queues left out).
_PLAIN_SESSION: dict[str, Any] = {
    "remote_address": None, "remote_port": None, "client_id": None, "clean_session": None, "will_flag": False,
    "will_message": None, "will_qos": None, "will_retain": None, "will_topic": None, "keep_alive": 0,
    "publish_retry_delay": 0, "broker_uri": None, "username": None, "password": None, "cafile": None,
    "capath": None, "cadata": None, "parent": 0, "last_connect_time": None, "ssl_object": None,
    "last_disconnect_time": None, "is_anonymous": False,
}


def session_view(session: ClientSession, *, will: Will | None = None, password: bytes | None = None,
                 address: tuple[str, int] | None = None, certificate: Any = None, keep_alive: int = 0) -> Session:
    """An amqtt :class:`Session` describing ``session`` for a plugin (a copy; changes are not read back).

    It has every plain attribute of amqtt's ``Session`` (client id, credentials, will,
    address, ``ssl_object``, ``attributes`` ...) but not its state machine and message
    queues, which amqtt's broker alone used: made without ``Session.__init__``, so one
    CONNECT costs a few hundred bytes here rather than amqtt's 24 KB state machine.
    """
    view = Session.__new__(Session)
    view.__dict__.update(_PLAIN_SESSION)
    view.attributes = {}
    view.client_id = session.client_id
    view.clean_session = session.clean
    view.username = session.username
    view.password = password.decode("utf-8", "replace") if password is not None else None
    view.keep_alive = keep_alive
    if address is not None:
        view.remote_address, view.remote_port = address
    view.ssl_object = PeerCertificate(certificate) if certificate is not None else None
    if will is not None:
        view.will_flag = True
        view.will_topic, view.will_message, view.will_qos, view.will_retain = will
    return view


class PluginBroker(Protocol):
    """What amqtt's :class:`BrokerContext` may ask of the broker on a plugin's behalf."""

    def plugin_publish(self, topic: str, payload: bytes, qos: int | None, retain: bool) -> None:
        """Publish ``payload`` to local subscribers; with ``retain``, only keep it as the topic's
        retained message instead (an empty payload removes it), as amqtt's ``retain_message``.
        A topic with more levels than the broker keeps raises ValueError."""

    def plugin_sessions(self) -> Iterator[ClientSession]:
        """Every known session."""

    def plugin_subscriptions(self) -> Iterator[tuple[str, ClientSession, int]]:
        """``(filter, session, granted QoS)`` of every subscription."""

    def plugin_retained(self) -> Iterator[tuple[str, bytes, int]]:
        """``(topic, payload, qos)`` of every retained message."""

    def plugin_subscribe(self, client_id: str, topic_filter: str, qos: int) -> int:
        """Subscribe a known session to ``topic_filter``; the granted QoS, or 0x80 (refused)."""


class _ContextBroker:
    """The broker as amqtt's :class:`BrokerContext` calls it (the object it was made with):
    amqtt's names and shapes over :class:`PluginBroker`. Views are built per call."""

    def __init__(self) -> None:
        self.broker: PluginBroker | None = None

    @property
    def _broker(self) -> PluginBroker:
        if self.broker is None:
            raise BrokerError("the broker is not running")
        return self.broker

    async def internal_message_broadcast(self, topic: str, data: bytes, qos: int | None = None) -> None:
        self._broker.plugin_publish(topic, bytes(data), qos, False)

    async def retain_message(self, source_session: Session | None, topic_name: str,
                             data: bytes | bytearray | None, qos: int | None = None) -> None:
        self._broker.plugin_publish(topic_name, bytes(data or b""), qos, True)

    @property
    def sessions(self) -> dict[str, tuple[Session, None]]:
        return {s.client_id: (session_view(s), None) for s in self._broker.plugin_sessions()}

    @property
    def retained_messages(self) -> dict[str, RetainedApplicationMessage]:
        return {topic: RetainedApplicationMessage(None, topic, payload, qos)
                for topic, payload, qos in self._broker.plugin_retained()}

    @property
    def subscriptions(self) -> dict[str, list[tuple[Session, int]]]:
        found: dict[str, list[tuple[Session, int]]] = {}
        for topic_filter, session, qos in self._broker.plugin_subscriptions():
            found.setdefault(topic_filter, []).append((session_view(session), qos))
        return found

    def create_offline_session(self, client_id: str) -> Any:
        raise BrokerError(f"amqtt plugins cannot create sessions here (client {client_id!r} is unknown)")

    async def add_subscription(self, subscription: tuple[str, int], session: Session) -> int:
        # As amqtt's: an invalid filter is refused (0x80), and so is a QoS MQTT does not have
        # (amqtt keeps it; here it would make the saved state unreadable at the next start);
        # the broker refuses what a client's SUBSCRIBE would get refused (max_topic_levels,
        # max_subscriptions).
        topic_filter, qos = subscription
        if not valid_filter(topic_filter) or qos not in (0, 1, 2):
            return SUBACK_FAILURE
        return self._broker.plugin_subscribe(str(session.client_id), topic_filter, qos)


class AmqttPlugins:
    """amqtt's plugin manager, loaded from the ``broker:`` section, behind Deferred-returning calls.

    :param config: the amqtt broker configuration (a dict in amqtt's format).
    :param loop: the asyncio loop under the reactor (amqtt's plugins are coroutines).
    :raises BrokerError: the configuration or a plugin cannot be loaded.
    """

    def __init__(self, config: dict[str, Any], loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._context_broker = _ContextBroker()
        try:
            # sys_interval is ignored (docs/broker.md): with the deprecated auth:/topic-check:
            # sections amqtt loads BrokerSysPlugin from its entry point, which would read it here.
            kept = {key: value for key, value in config.items() if key != "sys_interval"}
            self.config = BrokerConfig.from_dict(copy.deepcopy(kept))
            context = BrokerContext(self._context_broker)
            context.config = self.config
            self.manager: PluginManager[BrokerContext] = PluginManager(NAMESPACE, context, loop)
        except Exception as exc:  # amqtt raises many kinds for a config or plugin it cannot load
            raise BrokerError(f"cannot load the broker's amqtt plugins: {exc}") from exc
        #: whether any topic-checking plugin is on (then every PUBLISH and SUBSCRIBE asks it).
        #: (amqtt turns filtering on for any ``plugins:`` section; only topic plugins answer.)
        self.checks_topics = self.manager.is_topic_filtering_enabled() and any(
            isinstance(plugin, BaseTopicPlugin) for plugin in self.manager.plugins)
        #: the broker events some plugin listens to (others are never fired).
        self.events = frozenset(event for event in BrokerEvents
                                if any(hasattr(plugin, f"on_{event}") for plugin in self.manager.plugins))

    def bind(self, broker: PluginBroker) -> None:
        """What the plugins' :class:`BrokerContext` reaches from now on (the broker, once made)."""
        self._context_broker.broker = broker

    def _run(self, coroutine: Any) -> Deferred[Any]:
        return Deferred.fromFuture(self.loop.create_task(coroutine))

    def authenticate(self, view: Session) -> Deferred[bool]:
        """amqtt's rule: accepted when at least one plugin answers and every answer is true
        (``None`` abstains)."""
        def decide(answers: dict[Any, Any] | None) -> bool:
            results = [result for result in (answers or {}).values() if result is not None]
            return bool(results) and all(results)

        return self._run(self.manager.map_plugin_auth(session=view)).addCallback(decide)

    def topic_allowed(self, view: Session, topic: str, action: Action) -> Deferred[bool]:
        """Whether the topic-checking plugins let ``view``'s client do ``action`` on ``topic``."""
        if not self.checks_topics:
            return succeed(True)
        return self._run(self.manager.map_plugin_topic(session=view, topic=topic, action=action)).addCallback(
            lambda answers: all(answer for answer in (answers or {}).values()))

    def fire(self, event: BrokerEvents, **kwargs: Any) -> None:
        """Fire ``event`` to the plugins that listen (not waited for; errors are amqtt's to log)."""
        if event in self.events:
            self.loop.create_task(self.manager.fire_event(event, **kwargs))

    def wants(self, event: BrokerEvents) -> bool:
        """Whether a plugin listens to ``event``."""
        return event in self.events

    @staticmethod
    def message(topic: str, payload: bytes, qos: int, retain: bool, packet_id: int | None = None
                ) -> IncomingApplicationMessage:
        """A message as amqtt's message events carry it."""
        return IncomingApplicationMessage(packet_id, topic, qos, payload, retain)

    @staticmethod
    def retained(topic: str, payload: bytes, qos: int) -> RetainedApplicationMessage:
        """A retained message as amqtt's ``RETAINED_MESSAGE`` event carries it."""
        return RetainedApplicationMessage(None, topic, payload, qos)

    def start(self) -> Deferred[None]:
        """Fire amqtt's ``PRE_START`` and ``POST_START`` events, waiting for the plugins."""
        async def started() -> None:
            await self.manager.fire_event(BrokerEvents.PRE_START, wait=True)
            await self.manager.fire_event(BrokerEvents.POST_START, wait=True)

        return self._run(started())

    def close(self) -> Deferred[None]:
        """Fire the shutdown events, wait for fired events, close the plugins."""
        async def closed() -> None:
            await self.manager.fire_event(BrokerEvents.PRE_SHUTDOWN, wait=True)
            await self.manager.fire_event(BrokerEvents.POST_SHUTDOWN, wait=True)
            await self.manager.close()

        return self._run(closed())
