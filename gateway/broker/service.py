"""The broker service: the MQTT broker (:mod:`gateway.broker.core`) on Twisted listeners, its state on disk."""

from __future__ import annotations

import asyncio
from functools import partial
from pathlib import Path
from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, FirstError, fail, gatherResults, maybeDeferred, succeed
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.addresses import address_text
from gateway.blocking import in_reactor_threads
from gateway.broker.amqtt_adapter import AmqttPlugins
from gateway.broker.bus import LocalBus
from gateway.broker.connection import STOP_GRACE, MQTTListenerFactory
from gateway.broker.core import GatewayBroker
from gateway.broker.endpoints import parse_endpoint
from gateway.broker.durable_ack import DurableAckHandler
from gateway.broker.durablegate import DurableGate
from gateway.broker.handler import SessionHandler
from gateway.broker.outbox import QueuedMessage
from gateway.broker.persistence import BrokerStateStore, CheckpointContent, checkpoint_content, replay, restore
from gateway.broker.retainedlimits import BY_BYTES, BY_COUNT, RetainedBudget
from gateway.broker.statelog import STATE_CURSOR, StateLog, StateStream
from gateway.broker.settings import BrokerSettings, ListenerSettings
from gateway.broker.snapshot import BrokerSnapshot, CappedClientSnapshot, ClientQueueSnapshot, ListenerSnapshot
from gateway.certinfo import CertificateInfo, at, read_certificate
from gateway.clockstep import BootClock, steady_seconds
from gateway.degraded import Failing
from gateway.endpointstrings import split_description
from gateway.errors import BrokerError, JournalError, ReactorError
from gateway.gctuning import ReleaseAfterChurn
from gateway.journal.record import Record
from gateway.logthrottle import LogThrottle
from gateway.portholder import listen_refusal
from gateway.unixsocket import listen_past_stale_lock

#: Seconds between a change of persistent state and its save (changes in between share one write).
SAVE_DELAY = 1.0
#: Seconds between two log lines about failed checkpoint saves, at least (a full disk fails one
#: about every second while clients come and go).
SAVE_FAILURE_LOG_INTERVAL = 60.0
#: Records read at a time when the state log is replayed on start.
REPLAY_BATCH = 1000
#: The clients with the most queue drops that a snapshot lists (and with the most subscriptions refused).
DROPPING_CLIENTS_SHOWN = 20


def current_loop() -> asyncio.AbstractEventLoop:
    """This thread's asyncio loop: the running one, else the current one.

    Twisted's asyncio reactor installed without a loop (``trial --reactor=asyncio``,
    ``twistd --reactor=asyncio``) makes the loop it creates the current one.

    :raises ReactorError: if this thread has no asyncio loop (amqtt's plugins need one).
    """
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        pass
    try:
        return asyncio.get_event_loop_policy().get_event_loop()
    except RuntimeError:
        raise ReactorError("the broker needs Twisted's asyncio reactor and its loop") from None


def listener_cert_files(listener: ListenerSettings) -> list[tuple[str, str]]:
    """``(kind, path)`` of the certificates a listener uses: ``server`` (an ``ssl:`` listener's
    ``certKey``, else its ``privateKey``) and ``ca`` (the CA client certificates chain to: the
    listener's ``cafile``, else its endpoint's ``cafile=``, as the TLS options take it)."""
    args, kwargs = split_description(listener.endpoint)
    files = []
    if args and args[0] == "ssl":
        cert = kwargs.get("certKey") or kwargs.get("privateKey")
        if cert:
            files.append(("server", cert))
    cafile = listener.cafile or (kwargs.get("cafile") if args and args[0] == "ssl" else None)
    if cafile:
        files.append(("ca", cafile))
    return files


class BrokerService(Service):
    """Runs the local MQTT broker on the configured Twisted listeners.

    :param settings: the ``broker:`` section.
    :param reactor: the reactor (an asyncio reactor: amqtt's plugins run on its loop).
    :param bus: the in-process bus; a new one when ``None``.
    :param state_dir: the gateway's state directory: persistent sessions and retained
        messages are kept in ``<state_dir>/broker/`` and restored on start; ``None`` keeps
        them in memory only.
    :param handler_class: the per-connection protocol handler (see :mod:`gateway.broker.handler`).
    :param loop: the asyncio loop under ``reactor`` (``tap.py`` creates it); amqtt's plugins
        run on it. ``None``: this thread's loop when the service starts (:func:`current_loop`).
    :param state_stream: returns the journal stream the broker logs its state changes to
        (:data:`~gateway.broker.statelog.STATE_STREAM`), called once the journal runs.
        With it (and ``state_dir``), what the broker acknowledges is durable before the
        acknowledgement (see :mod:`gateway.broker.persistence`); without it the state
        file alone is saved up to :data:`SAVE_DELAY` after a change.
    :param stop_grace: seconds the stop gives each connection, closed in order, to send what
        it holds before it is aborted (:meth:`~gateway.broker.connection.MQTTConnection.close_in_order`);
        ``tree.py`` keeps it within ``gateway.shutdown_timeout``.
    :param boot: this boot's clock, kept with the persistent sessions' offline times
        (:mod:`gateway.broker.offlinetimes`; None: the wall clock's alone).
    """

    name = "broker"  # type: ignore[assignment]
    log = Logger()

    def __init__(self, settings: BrokerSettings, reactor: Any, bus: LocalBus | None = None,
                 state_dir: Path | None = None,
                 handler_class: type[SessionHandler] = DurableAckHandler,
                 loop: asyncio.AbstractEventLoop | None = None,
                 state_stream: Callable[[], StateStream] | None = None, stop_grace: float = STOP_GRACE,
                 boot: BootClock | None = None) -> None:
        self.settings = settings
        self.boot = boot
        self.stop_grace = stop_grace
        self._loop = loop
        #: Where the durable acknowledgement's persist hook is installed (``tree.py`` hands it
        #: to the links service); it outlives broker restarts.
        self.durable_gate = DurableGate()
        self.reactor = reactor
        self.bus = bus if bus is not None else LocalBus()
        self.store = BrokerStateStore(Path(state_dir) / "broker") if state_dir is not None else None
        self.handler_class = handler_class
        self._state_stream_factory = state_stream if self.store is not None else None
        self.state_stream: StateStream | None = None
        self.broker: GatewayBroker | None = None
        self.ports: dict[str, IListeningPort] = {}
        self.factories: dict[str, MQTTListenerFactory] = {}
        self._save_call: Any = None
        #: the save being written (a Deferred that fires once it is on disk), if any.
        self._saving: Deferred[None] | None = None
        self._save_failures = 0  # checkpoint saves failed in a row
        self._checkpoint = Failing()  # the same, for the read side
        #: the last checkpoint written: its seconds (hand-over to the thread to durable) and bytes
        self._last_checkpoint: tuple[float, int] | None = None
        self._save_failure_lines = LogThrottle(SAVE_FAILURE_LOG_INTERVAL, lambda: steady_seconds(reactor))
        self._changed_while_saving = False
        self._saves_pending = 0  # saves chained on _saving and not done yet
        self.certificates: tuple[CertificateInfo, ...] = ()
        #: hands memory back to the kernel after a wave of clients has left.
        self.churn = ReleaseAfterChurn(reactor)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The asyncio loop amqtt's plugins run on.

        :raises ReactorError: none was given and none is running.
        """
        if self._loop is None:
            self._loop = current_loop()
        return self._loop

    def _replay_log(self, broker: GatewayBroker, through: int, budget: RetainedBudget) -> Deferred[tuple[int, int]]:
        """Replay the state-log records the last checkpoint has not acknowledged (those after
        ``through``) into ``broker``, a read at a time (:data:`REPLAY_BATCH` records or 1 MiB
        of payloads): the start holds one read of the log, never all of it.

        :returns: the number of the last change found (``through`` if none is newer) and how
            many records were read.
        """
        stream = self.state_stream = self._state_stream_factory() if self._state_stream_factory else None
        if stream is None:
            return succeed((through, 0))
        # The log is read here, at start, and never again while the broker runs: records kept
        # in memory for live readers would be copies of every queued message nobody asks for.
        stream.keep_no_tail()
        last, read = through, 0
        shared: dict[QueuedMessage, QueuedMessage] = {}  # (one object for a message queued for many sessions)

        def more(batch: list[Record] | None) -> Any:
            nonlocal last, read
            if batch is None or batch:
                if batch:
                    last = max(last, replay(broker, batch, through, budget, shared))
                    read += len(batch)
                return stream.read(STATE_CURSOR, REPLAY_BATCH).addCallback(more)
            return last, read

        return stream.cursor(STATE_CURSOR).addCallback(lambda _: more(None))

    def _start_broker(self, state: CheckpointContent | None, budget: RetainedBudget) -> Deferred[GatewayBroker]:
        settings = self.settings
        broker = GatewayBroker(AmqttPlugins(settings.amqtt, self.loop), self.bus, self.reactor,
                               handler_class=self.handler_class, durable_gate=self.durable_gate,
                               max_inflight=settings.max_inflight_messages,
                               max_inflight_bytes=settings.max_inflight_bytes,
                               max_queued_messages=settings.max_queued_messages,
                               max_queued_bytes=settings.max_queued_bytes,
                               queue_overflow=settings.queue_overflow,
                               max_queued_bytes_total=settings.max_queued_bytes_total,
                               persistent_client_expiration=settings.persistent_client_expiration,
                               max_offline_sessions=settings.max_offline_sessions,
                               max_topic_levels=settings.max_topic_levels,
                               max_subscriptions=settings.max_subscriptions,
                               max_retained_messages=settings.max_retained_messages,
                               max_retained_bytes=settings.max_retained_bytes, boot_clock=self.boot)
        through = state.get("log_through", 0) if state is not None else 0
        broker.queue_policy.holding = True  # (max_queued_bytes_total is applied once all is restored, oldest first)

        def not_restored(failure: Failure) -> Deferred[GatewayBroker]:
            # (the broker is started, not the service's yet: its timers and plugins end here)
            return broker.shutdown().addBoth(lambda _: failure)

        restoring = broker.start().addCallback(lambda _: self._restore_checkpoint(broker, state)).addCallback(
            lambda _: self._replay_log(broker, through, budget)).addCallback(
            lambda replayed: self._restored(broker, state, through, replayed, budget))
        return restoring.addErrback(not_restored)

    def _restore_checkpoint(self, broker: GatewayBroker, state: CheckpointContent | None) -> None:
        """Restore the checkpoint read (if any) into the started ``broker``."""
        if state is not None:
            restore(broker, state)
            self.log.info("broker restored {sessions} sessions and {retained} retained messages",
                          sessions=len(state["sessions"]), retained=len(state["retained"]))

    def _restored(self, broker: GatewayBroker, state: CheckpointContent | None, through: int,
                  replayed: tuple[int, int], budget: RetainedBudget) -> GatewayBroker:
        """The checkpoint and the state log after it are restored: attach the state log, say
        what was over the bounds (``budget``: what the bounds on retained messages dropped)."""
        last, read = replayed
        if self.state_stream is not None:
            if last > through:
                self.log.info("broker replayed {count} state changes logged after its last checkpoint",
                              count=last - through)
            broker.state_log = StateLog(self.state_stream, self.reactor, start=last, boot=self.boot)
        if state is not None or read:
            broker.limits.warn_restored({client_id: session.filters for client_id, session in broker.sessions.items()},
                                        broker.retained)
            broker.retained_limits.warn_dropped(budget, broker.clients_retained_count,
                                                 broker.clients_retained_bytes)
        broker.on_state_changed = self._state_changed
        broker.end_due_sessions()  # offline too long before the start (their end logged, then checkpointed)
        self._apply_queued_total(broker)  # (after: an expired session's messages are no reason to drop others)
        return broker

    def _apply_queued_total(self, broker: GatewayBroker) -> None:
        """Drop what the restored queues hold over ``max_queued_bytes_total`` (a state saved
        under a larger bound, or by a version without it), oldest first, and say so."""
        policy = broker.queue_policy
        dropped, sessions = policy.apply_total()
        if dropped:
            self.log.warn("broker: the saved persistent sessions' queues hold more than max_queued_bytes_total"
                          " ({max_total}) lets them keep: dropped their {count} oldest message{ms} (from {sessions}"
                          " session{s}), kept {total} bytes; the next checkpoint holds them no more",
                          max_total=policy.max_total, count=dropped, ms="" if dropped == 1 else "s", sessions=sessions,
                          s="" if sessions == 1 else "s", total=policy.total)

    def _state_changed(self) -> None:
        # (once stopping, the final save takes the state; a timer then would outlive the broker)
        if self.store is None or not self.running:
            return
        if self._saving is not None:
            # A copy of the whole state per change-second would queue up behind a write that
            # takes longer (a large state): the next copy is taken once this write is done.
            self._changed_while_saving = True
        elif self._save_call is None:
            self._save_call = self.reactor.callLater(SAVE_DELAY, self._save)

    def _save(self) -> Deferred[None]:
        """Write a checkpoint in a thread, after any save still running (saves never overlap)."""
        self._save_call = None
        if self.broker is None or self.store is None:
            return succeed(None)
        state, store = checkpoint_content(self.broker), self.store
        # The checkpoint covers every change logged so far; the log records written so far
        # (none of them reused after a failed write) can go once it is on disk.
        stream = self.state_stream
        covered = stream.written_seq if stream is not None else 0
        previous = self._saving if self._saving is not None else succeed(None)
        saving = previous.addCallback(lambda _: self._write_checkpoint(store, state))
        if stream is not None and covered:
            saving.addCallback(lambda _: stream.ack(STATE_CURSOR, covered))
        saving.addCallbacks(self._saved, self._not_saved)
        self._saving = saving
        self._saves_pending += 1
        saving.addCallback(self._save_done)
        return saving

    def _write_checkpoint(self, store: BrokerStateStore, state: CheckpointContent) -> Deferred[None]:
        """Write ``state`` to ``store`` in a thread, timed on the steady clock from the hand-over
        to the thread until it is durable (the snapshot's ``checkpoint_save_s``, with its size)."""
        started = steady_seconds(self.reactor)
        return in_reactor_threads(self.reactor)(store.save, state).addCallback(self._checkpoint_written, started)

    def _checkpoint_written(self, size: int, started: float) -> None:
        self._last_checkpoint = (steady_seconds(self.reactor) - started, size)

    def _saved(self, _: object) -> None:
        """A checkpoint is on disk: after failed saves, say it works again."""
        if self._save_failures:
            self.log.info("broker: the checkpoint {path} is saved again, after {count} failed saves",
                          path=str(self.store.path) if self.store is not None else "", count=self._save_failures)
            self._save_failures = 0
            self._save_failure_lines.reset()
        self._checkpoint.recovered()

    def _not_saved(self, failure: Failure) -> None:
        """A checkpoint was not saved: a disk that refuses it (full, read-only) is one error
        line, at the first failure and then at most once a minute; anything else is a bug's
        traceback. The changes stay in the state log, which is not compacted meanwhile."""
        if not failure.check(OSError, JournalError):
            self.log.failure("cannot save the broker's sessions", failure)
            return
        self._save_failures += 1
        self._checkpoint.failed("checkpoint-not-saved", failure.getErrorMessage(), self.reactor.seconds())
        if self._save_failure_lines.note() is not None:
            self.log.error("broker: saving the checkpoint {path} failed ({count} in a row; logged at most once a"
                           " minute): {error}; what it holds stays in the state log, and the next change saves"
                           " it again", path=str(self.store.path) if self.store is not None else "",
                           count=self._save_failures, error=failure.getErrorMessage())

    def _save_done(self, result: None) -> None:
        """A save is on disk (or failed, and was logged): once no other is chained after it
        (the final save at a stop is), the changes made meanwhile get theirs."""
        self._saves_pending -= 1
        if not self._saves_pending:
            self._saving = None
            if self._changed_while_saving:
                self._changed_while_saving = False
                self._state_changed()
        return result

    def startService(self) -> Deferred[None]:
        """Start the broker (and amqtt's plugins), then listen on every endpoint; fires when all are listening.

        :raises BrokerError: (in the Deferred) naming the listener that could not listen.
        """
        Service.startService(self)
        self.certificates = tuple(read_certificate(f"broker listener {listener.name} {kind}", path)
                                  for listener in self.settings.listeners
                                  for kind, path in listener_cert_files(listener))
        # (saved retained messages past the bounds are dropped as the checkpoint is read: a
        # state written under larger ones must not take the start past what the gateway may hold)
        budget = RetainedBudget(self.settings.max_retained_messages, self.settings.max_retained_bytes)
        d: Deferred[Any] = (in_reactor_threads(self.reactor)(self.store.load, budget) if self.store is not None
                            else succeed(None))
        d.addCallback(self._start_broker, budget)

        def started(broker: GatewayBroker) -> Deferred[Any]:
            self.broker = broker
            self.bus.attach(broker)
            if (broker.state_log is not None and broker.state_log.appended or broker.retained_limits.dropped_at_start
                    or broker.queue_policy.dropped_at_start):
                self._state_changed()  # a fresh checkpoint compacts the log replayed (and holds no dropped message)
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
            self.log.info("broker listener {name} on {address}", name=name, address=address_text(port.getHost()))

    def _listen(self, listener: Any) -> Deferred[None]:
        assert self.broker is not None
        factory = MQTTListenerFactory(listener.name, self.broker, self.reactor, self.settings.max_packet_size,
                                      self.settings.connect_timeout, listener.max_connections, self.churn,
                                      self.settings.max_topic_levels)
        self.factories[listener.name] = factory
        served: Any = factory
        if listener.websocket:
            from gateway.broker.websocket import MQTTWebSocketFactory  # autobahn: only for ws listeners
            served = MQTTWebSocketFactory(factory, listener.allowed_origins)
        try:
            endpoint = parse_endpoint(listener)(self.reactor)
            d = listen_past_stale_lock(lambda: endpoint.listen(served))
        except Exception as exc:  # endpoint construction errors are the user's config
            return fail(BrokerError(f"listener {listener.name} ({listener.endpoint}): {exc}"))

        def listening(port: IListeningPort) -> None:
            self.ports[listener.name] = port

        def refused(failure: Any) -> None:
            raise BrokerError(f"listener {listener.name} ({listener.endpoint}): {listen_refusal(failure)}")

        return d.addCallbacks(listening, refused)

    def snapshot(self) -> BrokerSnapshot:
        """The read side's view of the broker (O(listeners + sessions), no I/O)."""
        broker = self.broker
        listeners = []
        for listener in self.settings.listeners:
            factory = self.factories.get(listener.name)
            port = self.ports.get(listener.name)
            listeners.append(ListenerSnapshot(
                listener.name, listener.endpoint, address_text(port.getHost()) if port is not None else "",
                len(factory.connections) if factory is not None else 0,
                factory.bytes_received if factory is not None else 0,
                factory.violations if factory is not None else 0,
                factory.bytes_sent if factory is not None else 0,
                factory.origins_refused if factory is not None else 0))
        now = self.reactor.seconds()
        certificates = tuple(at(info, now) for info in self.certificates)
        too_deep = sum(factory.topics_too_deep for factory in self.factories.values())
        seconds, size = self._last_checkpoint if self._last_checkpoint is not None else (None, None)
        if broker is None:
            return BrokerSnapshot(False, sum(ls.connections for ls in listeners), 0, 0, 0, (0, 0, 0), (0, 0, 0), 0, 0,
                                  sum(ls.violations for ls in listeners), 0, 0, 0, tuple(listeners), certificates,
                                  topics_too_deep=too_deep, checkpoint_failing=self._checkpoint.now,
                                  checkpoint_save_s=seconds, checkpoint_bytes=size)
        return BrokerSnapshot(
            True, sum(ls.connections for ls in listeners), broker.session_count, broker.subscription_count,
            broker.retained_count, tuple(broker.messages_in), tuple(broker.messages_out),  # type: ignore[arg-type]
            broker.payload_bytes_in, broker.payload_bytes_out, sum(ls.violations for ls in listeners),
            broker.messages_dropped, broker.dollar_publishes_dropped, broker.durable_gate.failures,
            tuple(listeners), certificates,
            queue_drops_by_qos=tuple(broker.queue_policy.dropped),  # type: ignore[arg-type]
            offline_sessions=len(broker.offline), sessions_expired=broker.offline.expired,
            sessions_evicted=broker.offline.evicted, dropping_clients=self._dropping_clients(broker),
            topics_too_deep=too_deep, filters_too_deep=broker.limits.filters_too_deep,
            subscriptions_refused=broker.limits.subscriptions_refused, capped_clients=self._capped_clients(broker),
            checkpoint_failing=self._checkpoint.now, durable_holds=broker.durable_gate.holds,
            checkpoint_save_s=seconds, checkpoint_bytes=size, messages_resent=broker.messages_resent,
            retained_bytes=broker.retained_bytes, retained_over_messages=broker.retained_limits.refused[BY_COUNT],
            retained_over_bytes=broker.retained_limits.refused[BY_BYTES],
            retained_dropped_at_start=broker.retained_limits.dropped_at_start,
            queued_total=broker.queue_policy.total, queue_drops_over_total=broker.queue_policy.total_drops,
            route_cache=broker.routes_cached, bus_cache=broker.bus.topics_cached)

    @staticmethod
    def _dropping_clients(broker: GatewayBroker) -> tuple[ClientQueueSnapshot, ...]:
        """The sessions that dropped the most messages (at most :data:`DROPPING_CLIENTS_SHOWN`)."""
        live = broker.live_client_ids
        worst = sorted(broker.queue_policy.dropping.values(), key=lambda outbox: outbox.dropped,
                       reverse=True)[:DROPPING_CLIENTS_SHOWN]
        return tuple(ClientQueueSnapshot(outbox.client_id, outbox.client_id in live, len(outbox), outbox.bytes,
                                         outbox.dropped_qos0, outbox.dropped_qos12) for outbox in worst)

    @staticmethod
    def _capped_clients(broker: GatewayBroker) -> tuple[CappedClientSnapshot, ...]:
        """The sessions with the most subscriptions refused (at most :data:`DROPPING_CLIENTS_SHOWN`)."""
        live = broker.live_client_ids
        worst = sorted(broker.limits.refused_by_client.items(), key=lambda item: item[1],
                       reverse=True)[:DROPPING_CLIENTS_SHOWN]
        return tuple(CappedClientSnapshot(client_id, client_id in live, len(broker.sessions[client_id].filters), refused)
                     for client_id, refused in worst if client_id in broker.sessions)

    def stopService(self) -> Deferred[None]:
        """Stop listening, end every session, wait until every connection is closed."""
        Service.stopService(self)
        return self._teardown()

    def _teardown(self) -> Deferred[None]:
        self.churn.stop()
        ports, self.ports = list(self.ports.values()), {}
        d: Deferred[Any] = DeferredList([maybeDeferred(p.stopListening) for p in ports])
        if self._save_call is not None:
            self._save_call.cancel()
            self._save_call = None
        if self.broker is not None and self.store is not None:
            d.addCallback(lambda _: self._final_save())
        d.addCallback(lambda _: self._shutdown_broker())
        return d

    def _final_save(self) -> Deferred[None]:
        """Stop reading from every client, then save what the sessions hold now."""
        for factory in self.factories.values():
            for connection in factory.connections:
                connection.pause_reading(self)
        return self._save()

    def _shutdown_broker(self) -> Deferred[None]:
        d: Deferred[Any] = succeed(None)
        broker, self.broker = self.broker, None
        self.bus.attach(None)
        if broker is not None:
            broker.on_state_changed = None
            broker.state_log = None  # what the shutdown clears from memory stays on disk
            d.addCallback(lambda _: broker.shutdown(self.stop_grace))
            d.addErrback(lambda f: self.log.failure("broker shutdown failed", f))
        d.addCallback(lambda _: self._close_connections())
        return d

    def _close_connections(self) -> Deferred[None]:
        """Close every connection in order (those without a session yet too), and fire once all
        have closed: within :attr:`stop_grace`, the stragglers aborted."""
        waits = []
        for factory in self.factories.values():
            factory.flush()
            for connection in list(factory.connections):
                connection.close_in_order(self.stop_grace)
            waiting: Deferred[None] = Deferred()
            factory.when_idle(partial(waiting.callback, None))
            waits.append(waiting)
        self.factories = {}
        return DeferredList(waits).addCallback(lambda _: None)

