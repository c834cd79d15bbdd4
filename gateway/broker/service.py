"""The broker service: amqtt does the MQTT session work, Twisted owns the sockets."""

from __future__ import annotations

import asyncio
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, FirstError, fail, gatherResults, maybeDeferred
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.broker.amqtt_broker import GatewayBroker
from gateway.broker.bus import LocalBus
from gateway.broker.connection import MQTTListenerFactory
from gateway.broker.endpoints import parse_endpoint
from gateway.broker.settings import BrokerSettings
from gateway.errors import BrokerError, ReactorError


def asyncio_loop(reactor: Any) -> asyncio.AbstractEventLoop:
    """The asyncio loop under ``reactor``.

    :raises ReactorError: if ``reactor`` is not Twisted's asyncio reactor (amqtt needs it).
    """
    loop = getattr(reactor, "_asyncioEventloop", None)
    if loop is None:
        raise ReactorError(f"the broker needs Twisted's asyncio reactor, not {type(reactor).__name__}")
    return loop


class BrokerService(Service):
    """Runs the local MQTT broker on the configured Twisted listeners.

    :param settings: the ``broker:`` section.
    :param reactor: the reactor (an asyncio reactor: amqtt runs on its loop).
    :param bus: the in-process bus; a new one when ``None``.
    """

    name = "broker"
    log = Logger()

    def __init__(self, settings: BrokerSettings, reactor: Any, bus: LocalBus | None = None) -> None:
        self.settings = settings
        self.reactor = reactor
        self.bus = bus if bus is not None else LocalBus()
        self.broker: GatewayBroker | None = None
        self.ports: dict[str, IListeningPort] = {}
        self.factories: dict[str, MQTTListenerFactory] = {}

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The asyncio loop amqtt runs on."""
        return asyncio_loop(self.reactor)

    def _run_on_loop(self, coroutine: Any) -> Deferred[Any]:
        return Deferred.fromFuture(self.loop.create_task(coroutine))

    async def _create_broker(self) -> GatewayBroker:
        # Built inside the loop: amqtt binds its futures to the running loop.
        broker = GatewayBroker(self.settings.amqtt, self.loop, self.bus)
        await broker.start()
        return broker

    def startService(self) -> Deferred[None]:
        """Start amqtt, then listen on every endpoint; fires when all are listening.

        :raises BrokerError: (in the Deferred) naming the listener that could not listen.
        """
        Service.startService(self)
        d = self._run_on_loop(self._create_broker())

        def started(broker: GatewayBroker) -> Deferred[Any]:
            self.broker = broker
            self.bus.attach(broker)
            return gatherResults([self._listen(listener) for listener in self.settings.listeners],
                                 consumeErrors=True)

        def failed(failure: Failure) -> Deferred[None]:
            error = failure.value
            if isinstance(error, FirstError):
                error = error.subFailure.value
            if not isinstance(error, BrokerError):
                error = BrokerError(f"broker failed to start: {error}")
            return self._teardown().addCallback(lambda _: fail(error))

        return d.addCallback(started).addCallback(lambda _: self._log_started()).addErrback(failed)

    def _log_started(self) -> None:
        for name, port in self.ports.items():
            self.log.info("broker listener {name} on {address}", name=name, address=str(port.getHost()))

    def _listen(self, listener: Any) -> Deferred[None]:
        factory = MQTTListenerFactory(
            listener.name, self.broker.external_connected, self.loop, self.reactor,  # type: ignore[union-attr]
            self.settings.max_packet_size, self.settings.connect_timeout,
        )
        self.factories[listener.name] = factory
        try:
            endpoint = parse_endpoint(listener)(self.reactor)
            d = endpoint.listen(factory)
        except Exception as exc:  # endpoint construction errors are the user's config
            return fail(BrokerError(f"listener {listener.name} ({listener.endpoint}): {exc}"))

        def listening(port: IListeningPort) -> None:
            self.ports[listener.name] = port

        def refused(failure: Any) -> None:
            raise BrokerError(f"listener {listener.name} ({listener.endpoint}): {failure.getErrorMessage()}")

        return d.addCallbacks(listening, refused)

    def stopService(self) -> Deferred[None]:
        """Stop listening, end every session, wait until every connection is closed."""
        Service.stopService(self)
        return self._teardown()

    def _teardown(self) -> Deferred[None]:
        ports, self.ports = list(self.ports.values()), {}
        d: Deferred[Any] = DeferredList([maybeDeferred(p.stopListening) for p in ports])
        broker, self.broker = self.broker, None
        self.bus.attach(None)
        if broker is not None:
            d.addCallback(lambda _: self._run_on_loop(broker.shutdown()))
            d.addErrback(lambda f: self.log.failure("broker shutdown failed", f))
        d.addCallback(lambda _: self._close_connections())
        return d

    def _close_connections(self) -> Deferred[None]:
        waits = []
        for factory in self.factories.values():
            for connection in list(factory.connections):
                connection.transport.abortConnection()
            waiting: Deferred[None] = Deferred()
            factory.when_idle(lambda w=waiting: w.callback(None))
            waits.append(waiting)
        self.factories = {}
        return DeferredList(waits).addCallback(lambda _: None)

