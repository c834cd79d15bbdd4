"""The in-process bus: other services publish to and subscribe on the local broker directly."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Protocol

from twisted.internet.defer import Deferred, fail, gatherResults, maybeDeferred, succeed
from twisted.logger import Logger

from gateway.mqtt.topics import matches, valid_filter, valid_topic
from gateway.errors import BrokerError



class BusGate(Protocol):
    """The broker's durable gate as the bus sees it (:class:`~gateway.broker.durablegate.DurableGate`)."""

    def persist(self, topic: str, payload: bytes, qos: int, retain: bool,
                reserved: bool = False) -> "Deferred[Any] | None":
        """Append to the journal where the links route ``topic`` (``reserved``: into the streams'
        reserve if need be); a Deferred for when it is durable."""


class BusBroker(Protocol):
    """What the bus uses of the running broker (:class:`~gateway.broker.core.GatewayBroker`)."""

    @property
    def durable_gate(self) -> BusGate:
        """Where the links' persist hook is."""

    @property
    def has_client_subscribers(self) -> bool:
        """Whether any client subscription exists."""

    @property
    def retained_links(self) -> dict[str, str]:
        """Topic -> the cloud link whose downlink brought its retained message."""

    def publish_internal(self, topic: str, payload: bytes, qos: int, retain: bool, link: str = "") -> None:
        """Deliver a message published on the bus to the broker's clients (and retain it if
        asked, as ``link``'s when a cloud link brought it)."""

    def state_durable(self) -> "Deferred[None] | None":
        """A Deferred for when every state change logged so far is durable (``None``: it is)."""


class BusMessage(NamedTuple):
    """One message on the local broker (also what a session's queue holds).

    :ivar topic: the topic it was published to.
    :ivar payload: its bytes.
    :ivar qos: the QoS it was published with.
    :ivar retain: whether the publisher asked to retain it.
    """

    topic: str
    payload: bytes
    qos: int
    retain: bool


Callback = Callable[[BusMessage], Any]


def request_handler(callback: Callback) -> Callback:
    """``callback`` for a topic the gateway takes requests on: it is not called for a
    publisher removing the topic's retained message (retained with an empty payload, MQTT
    3.1.1 §3.3.1.3), so that clearing a retained request is no new request."""
    def received(message: BusMessage) -> Any:
        return None if message.retain and not message.payload else callback(message)

    return received


#: Topics whose matching subscriptions are cached at most (the cache starts over past this).
MATCH_CACHE_SIZE = 10_000


class LocalBus:
    """Publish/subscribe for the gateway's own services, without a loopback socket.

    Subscribers see every message that local clients publish (after the broker's topic ACL
    allows it) and every message published on the bus. A callback may return a Deferred;
    its errors are logged, never passed back to the publisher.
    """

    log = Logger()

    def __init__(self) -> None:
        self._broker: BusBroker | None = None
        self._subscriptions: list[tuple[str, Callback]] = []
        self._matching: dict[str, list[tuple[str, Callback]]] = {}  # topic -> subscriptions it matches

    def attach(self, broker: BusBroker | None) -> None:
        """Connect the bus to the running broker (``None`` when it stops)."""
        self._broker = broker

    @property
    def has_subscribers(self) -> bool:
        """Whether any service listens (the broker skips the bus entirely otherwise)."""
        return bool(self._subscriptions)

    def subscribe(self, topic_filter: str, callback: Callback) -> Callable[[], None]:
        """Call ``callback`` with each :class:`BusMessage` matching ``topic_filter``.

        :return: a function that removes this subscription.
        :raises ValueError: if the filter is not a valid MQTT topic filter.
        """
        if not valid_filter(topic_filter):
            raise ValueError(f"invalid topic filter {topic_filter!r}")
        entry = (topic_filter, callback)
        self._subscriptions.append(entry)
        self._matching.clear()

        def unsubscribe() -> None:
            if entry in self._subscriptions:
                self._subscriptions.remove(entry)
                self._matching.clear()

        return unsubscribe

    def dispatch(self, message: BusMessage) -> None:
        """Hand ``message`` to every matching subscriber."""
        for topic_filter, callback in self._lookup(message.topic):
            maybeDeferred(callback, message).addErrback(
                lambda f, flt: self.log.failure("bus subscriber for {filter} failed", f, filter=flt), topic_filter)

    @property
    def topics_cached(self) -> int:
        """Topics whose matching subscribers are cached now (at most :data:`MATCH_CACHE_SIZE`:
        then the cache starts again empty)."""
        return len(self._matching)

    def wants(self, topic: str) -> bool:
        """Whether any subscriber matches ``topic`` (a dict lookup for topics seen before)."""
        return bool(self._lookup(topic))

    def _lookup(self, topic: str) -> list[tuple[str, Callback]]:
        matching = self._matching.get(topic)
        if matching is None:
            if len(self._matching) >= MATCH_CACHE_SIZE:
                self._matching.clear()
            matching = self._matching[topic] = [entry for entry in self._subscriptions if matches(entry[0], topic)]
        return matching

    def retained_link(self, topic: str) -> str:
        """The cloud link whose downlink brought the topic's retained message (``""``: it has
        none, or a local client, a plugin or the gateway itself retained it)."""
        broker = self._broker
        return broker.retained_links.get(topic, "") if broker is not None else ""

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False,
                reserved: bool = False, link: str = "") -> Deferred[None]:
        """Publish to local clients and bus subscribers, and to the cloud where routes say so.

        A message the links route (the durable gate wants it) is appended to their journal
        streams like a client's; for QoS 1 and 2 the result waits until that is durable.

        :param reserved: its appends may use each stream's reserve, beyond ``max_bytes``
            (``gateway.journal.retention.RESERVED_BYTES``): the command dispatcher's replies,
            which the cloud waits for, get in while a stream is full under ``reject-new`` (a
            local flood, a backlog still draining).
        :param link: the cloud link whose downlink brought it (a cloud's message): retained,
            it is kept as that link's (:meth:`retained_link`), and the result also waits until
            the broker's state holds the change durably (the link acknowledges the cloud then).
        :return: a Deferred that fires once the broker has queued the message (and the
            journal holds it, where it is routed).
        :raises BrokerError: (in the Deferred) when the broker is not running.
        :raises JournalError: (in the Deferred) when the journal could not store it.
        :raises ValueError: for an invalid topic or QoS. (``max_topic_levels`` bounds what
            clients and plugins bring, not the gateway's own publishes: their topics come from
            its configuration and its clouds, and a cloud message refused here would never be
            acknowledged, so the cloud would send it again at every reconnect.)
        """
        if not valid_topic(topic):
            raise ValueError(f"invalid topic {topic!r}")
        if qos not in (0, 1, 2):
            raise ValueError(f"invalid QoS {qos!r}")
        broker = self._broker
        if broker is None:
            return fail(BrokerError("the local broker is not running"))
        payload = bytes(payload)
        stored = broker.durable_gate.persist(topic, payload, qos, retain, reserved)
        self.dispatch(BusMessage(topic, payload, qos, retain))
        if broker.has_client_subscribers or retain:
            broker.publish_internal(topic, payload, qos, retain, link)
        state = broker.state_durable() if retain and link else None
        waits = [d for d in (stored, state) if d is not None]
        if not waits:
            return succeed(None)
        if len(waits) == 1:
            return waits[0].addCallback(lambda _: None)
        return gatherResults(waits, consumeErrors=True).addCallback(lambda _: None)
