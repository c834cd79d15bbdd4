"""Durable acknowledgement: a local QoS 1/2 publish is acked only once the journal holds it.

:class:`DurableAckHandler` hands every client PUBLISH the :class:`DurableGate` wants (the
links service routes it and appends it to the journal stream of every link it goes to) to
the gate's hook, in arrival order: the PUBLISHes of one socket read together, once the
connection has handed the read's packets over. The PUBACK (QoS 1) or PUBREC (QoS 2) that
:class:`~gateway.broker.handler.SessionHandler` would send at once is held until they are
durable, and acknowledgements leave in arrival order (§4.6). If persisting
fails, nothing more is acknowledged and the connection is closed: the client sends the
message again when it reconnects. QoS 0 messages are persisted without waiting.

With topic-ACL plugins configured, the ACL is asked first (nothing refused is stored),
still in arrival order.

The broker's own state counts too: when routing a PUBLISH changed what the broker keeps
(a retained message, a message queued for an offline persistent session), the
acknowledgement also waits until the broker's state log holds the change durably
(:class:`~gateway.broker.statelog.StateLog`, the same journal group commit). A PUBLISH
that only reaches connected subscribers waits for nothing more.

A client that publishes without waiting for its acknowledgements would have the broker hold
ever more of its PUBLISHes in memory while the disk is slow (and reading it all would make
the reactor's turns long): while more than :data:`DURABLE_WAIT_LIMIT` of its PUBLISHes, or
more than :data:`DURABLE_WAIT_BYTES` of their payloads, wait, the broker stops reading from
it (what it sends waits in the socket, and TCP slows it down), and reads again once they are
down to half of both. Counted: acknowledgements waiting (for the disk, or behind one that
does), QoS 0 PUBLISHes waiting for the disk (nobody waits for them, but they are in memory
until then), and PUBLISHes waiting for the topic plugins.
"""

from __future__ import annotations

from collections import deque
from operator import attrgetter
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.broker.amqtt_adapter import Action
from gateway.broker.durablegate import DurableGate, LocalMessage
from gateway.broker.clientsession import Incoming
from gateway.broker.handler import SessionHandler
from gateway.journal.errors import RecordTooLargeError
from gateway.mqtt.packets import Packet
from gateway.mqtt.topics import topic_for_log

#: PUBLISHes of one client that may wait (acknowledgements and QoS 0 messages for the journal,
#: PUBLISHes for the topic plugins) before the broker stops reading from it: twice what a well-behaved client keeps in flight
#: (paho's ``max_inflight`` up to 1000, mosquitto_pub's 20), so it never reaches it. (16
#: clients that never wait, on a disk taking 100 ms an fsync: 2000 made about a third fewer
#: durable a second than without a bound, 1000 fewer still, 4000 as many with longer
#: reactor turns; docs/benchmarks.md.)
DURABLE_WAIT_LIMIT = 2000
#: Payload bytes of those PUBLISHes past which it stops reading too (16 MiB:
#: with the default ``max_packet_size``, 16 messages of 1 MiB; half of it per fsync is more
#: than a slow disk writes in that time, so the disk, not the pause, sets the pace).
DURABLE_WAIT_BYTES = 16 << 20
_payload = attrgetter("payload")
#: The :meth:`~gateway.broker.connection.MQTTConnection.pause_reading` key of a client whose
#: PUBLISHes wait past those bounds.
_DURABLE_WAIT = "its PUBLISHes wait to be durable"


class _Persisting:
    """Client PUBLISHes on their way into the journal through the gate's hook: those of one
    socket read (the fast path), or one (checked by topic plugins first).

    Holds what a Deferred would: whether they are durable yet, and the acknowledgements
    waiting for them (a QoS 2 PUBLISH resent before PUBREL waits on the same one); the
    QoS 2 packet ids of a persistent session to log once they are durable; and how many QoS 0
    messages (and their payload bytes) the handler counts as waiting until they are.
    """

    __slots__ = ("handler", "topic", "durable", "waiting", "qos2_ids", "qos0", "qos0_bytes")

    def __init__(self, handler: "DurableAckHandler", topic: str) -> None:
        self.handler = handler
        self.topic = topic
        self.durable = False
        self.waiting: list[list[Any]] = []
        self.qos2_ids: list[int] | None = None
        self.qos0 = 0
        self.qos0_bytes = 0

    def on_durable(self, _: object) -> None:
        self.durable = True
        if self.qos0:
            self.handler._no_longer_waiting(self.qos0, self.qos0_bytes)
        waiting, self.waiting = self.waiting, []
        if self.qos2_ids:
            # The held ids follow their messages onto disk; the acknowledgements wait for them.
            self.handler._log_qos2_then_ready(self.qos2_ids, waiting)
            return
        ready = False
        for entry in waiting:
            entry[1] -= 1
            ready = ready or not entry[1]
        if ready:
            self.handler._flush_soon()

    def on_failed(self, failure: Failure) -> None:
        self.waiting = []
        if self.qos0:
            self.handler._no_longer_waiting(self.qos0, self.qos0_bytes)
        self.handler._persist_failed(failure, self.topic)


class DurableAckHandler(SessionHandler):
    """A protocol handler that acknowledges a client's QoS 1/2 PUBLISH only once it is durable.

    On the fast path (no topic plugins) the PUBLISHes of one socket read are handed to the
    gate's hook together, when the connection says the read's packets are done
    (:meth:`packets_done`): one append per link stream for all of them, one callback when
    they are durable. Its bookkeeping is made on first use: an idle connection carries none of it.
    """

    log = Logger()
    __slots__ = ("_durable", "_acks", "_acks_bytes", "_held", "_held_bytes", "_holding", "_state_mark", "_acl_tail",
                 "_failed", "_flush_due", "_batch", "_batched", "_qos2_at_ack")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._durable: dict[int, _Persisting] | None = None  # packet id -> persist of that PUBLISH
        self._acks: deque[list[Any]] | None = None  # [message, conditions still awaited] in arrival order
        self._acks_bytes = 0  # payload bytes of the messages in _acks
        self._held = 0  # PUBLISHes waiting without an acknowledgement in _acks: QoS 0 for the disk, any for the plugins
        self._held_bytes = 0  # their payload bytes
        self._holding = False  # reading is paused: too many PUBLISHes wait (DURABLE_WAIT_LIMIT)
        self._state_mark = 0  # the broker's state log, as the PUBLISH being routed found it
        self._acl_tail: Deferred[Any] | None = None  # the checked path's chain, in arrival order
        self._failed = False
        self._flush_due = False
        self._batch: list[LocalMessage] | None = None  # this read's PUBLISHes to persist (fast path)
        self._batched: _Persisting | None = None  # their persist, until packets_done
        self._qos2_at_ack: set[int] | None = None  # QoS 2 ids to log once routed (no journal to wait for)

    @property
    def gate(self) -> DurableGate:
        """The broker's gate."""
        return self.broker.durable_gate

    def packet_received(self, packet: Packet) -> None:
        """Note a PUBLISH to persist before the broker routes it; forget QoS 2 ids at PUBREL."""
        if packet.packet_type == 3 and not self._failed:
            log = self.broker.state_log
            if log is not None:
                self._state_mark = log.appended
            self._start_persist(packet)
        elif packet.packet_type == 6 and self._durable:
            self._durable.pop(packet.fields["packet_id"], None)
        if not self._failed:
            super().packet_received(packet)

    def stop(self) -> None:
        """As :meth:`SessionHandler.stop`; and the session forgets the QoS 2 packet ids whose
        PUBLISH is not durable yet (never PUBREC'd, or its append failed): the client sends
        those again, and they are stored as new messages rather than taken as stored already."""
        super().stop()
        for packet_id, persisting in (self._durable or {}).items():
            if not persisting.durable:
                self.broker.qos2_released(self.session, packet_id)

    def qos2_noted(self, packet_id: int) -> None:
        """Log a new QoS 2 packet id of a persistent session only once its PUBLISH is stored:
        after the journal's write, or after the state changes routing it made (logged first,
        a crash in between would leave the id held and the message unstored, and the
        client's resend would be taken for a duplicate)."""
        if self.session.clean:
            return
        persisting = self._durable.get(packet_id) if self._durable else None
        if persisting is None or persisting.durable:
            if self._qos2_at_ack is None:
                self._qos2_at_ack = set()
            self._qos2_at_ack.add(packet_id)  # logged by acknowledge(), once routed
        elif persisting.qos2_ids is None:
            persisting.qos2_ids = [packet_id]
        else:
            persisting.qos2_ids.append(packet_id)

    def qos2_ids_not_logged(self) -> set[int]:
        """The QoS 2 packet ids of this persistent session whose PUBLISH is not journaled yet
        (the broker's checkpoint leaves them out, as the state log does)."""
        journaling = {packet_id for persisting in (self._durable or {}).values()
                      if persisting.qos2_ids and not persisting.durable for packet_id in persisting.qos2_ids}
        return journaling | self._qos2_at_ack if self._qos2_at_ack else journaling

    def _log_qos2_then_ready(self, packet_ids: list[int], waiting: list[list[Any]]) -> None:
        """Log ``packet_ids`` (their PUBLISHes are durable now); the ``waiting`` acknowledgements
        may leave once that is durable too."""
        logged = 0
        for packet_id in packet_ids:
            logged = self.broker.log_qos2_received(self.session, packet_id) or logged
        log = self.broker.state_log
        if not waiting:
            return
        if not logged or log is None:
            self._all_ready(waiting)
            return
        topic: str = waiting[0][0].topic
        log.when_durable(logged, lambda: self._all_ready(waiting),
                         lambda failure: self._persist_failed(failure, topic))

    def _all_ready(self, entries: list[list[Any]]) -> None:
        for entry in entries:
            self._ready(entry)

    def packets_done(self) -> None:
        """The packets of one read are handled: persist the PUBLISHes they brought, in one call."""
        persisting = self._batched
        if persisting is None:
            return
        batch, self._batch, self._batched = self._batch, None, None
        if batch and not self._failed:
            self._persist(persisting, batch)

    def _start_persist(self, packet: Packet) -> None:
        gate = self.broker.durable_gate  # (self.gate, without the property call: once per PUBLISH)
        fields = packet.fields
        topic: str = fields["topic"]
        if gate.persist_many is None or topic[:1] == "$" or not gate.wants(topic):
            return
        qos = (packet.flags >> 1) & 3
        packet_id = fields.get("packet_id", 0)
        if qos == 2 and packet_id in self.session.inflight_in:
            return  # a resent QoS 2 PUBLISH before PUBREL, on this connection or an earlier one: stored already (§4.3.3)
        payload = bytes(packet.body[fields["offset"]:])
        retain = bool(packet.flags & 1)
        fast = self.broker.fast_path
        persisting = self._batched if fast else None
        if persisting is None:
            persisting = _Persisting(self, topic)
        if qos:
            if self._durable is None:
                self._durable = {}
            self._durable[packet_id] = persisting
        elif fast:  # (counted by _persist; on the checked path once the plugins allowed it)
            persisting.qos0 += 1
            persisting.qos0_bytes += len(payload)
        if fast:
            batch = self._batch
            if batch is None:
                self._batched, self._batch = persisting, [(topic, payload, qos, retain)]
            else:
                batch.append((topic, payload, qos, retain))
        else:
            self._persist_after_check(persisting, topic, payload, qos, retain)

    def _persist(self, persisting: _Persisting, messages: list[LocalMessage]) -> None:
        if persisting.qos0:  # in memory until the hook says the journal is done with them
            self._held += persisting.qos0
            self._held_bytes += persisting.qos0_bytes
            self._hold_if_past_bound()
        hook = self.gate.persist_many
        try:
            waits = hook is not None and hook(messages, persisting.on_durable, persisting.on_failed)
        except Exception:
            persisting.on_failed(Failure())
            return
        if not waits:
            persisting.on_durable(None)  # nothing to wait for (QoS 0, or routed nowhere after all)

    def _persist_after_check(self, persisting: _Persisting, topic: str, payload: bytes, qos: int,
                             retain: bool) -> None:
        """Ask the topic plugins, then persist; one after another so the journal keeps arrival order."""
        def allowed(ok: bool) -> None:
            if not ok:
                persisting.on_durable(None)  # refused: nothing to store
                return
            if not qos:
                persisting.qos0, persisting.qos0_bytes = 1, len(payload)
            self._persist(persisting, [(topic, payload, qos, retain)])

        def step(_: object) -> Deferred[Any]:
            asked = self.broker.plugins.topic_allowed(self.plugin_view(), topic, Action.PUBLISH)
            return asked.addCallback(allowed).addErrback(persisting.on_failed)

        tail = self._acl_tail if self._acl_tail is not None else succeed(None)
        self._acl_tail = tail.addCallback(step)

    def acknowledge(self, message: Incoming) -> None:
        """Queue the acknowledgement; it leaves once this and every earlier PUBLISH is durable
        (in the journal, and in the broker's state log if routing it changed the state)."""
        if self._failed:
            return
        routed = self._qos2_at_ack
        if routed and message.qos == 2 and message.packet_id in routed:
            routed.discard(message.packet_id)
            self.broker.log_qos2_received(self.session, message.packet_id)  # after what routing logged
        entry: list[Any] = [message, 0]
        packet_id = message.packet_id or 0
        durable = self._durable
        persisting = None if not durable else (durable.get(packet_id) if message.qos == 2
                                               else durable.pop(packet_id, None))
        log = self.broker.state_log
        # Routed at once (fast path): what the log got since the packet came is this PUBLISH's.
        # Routed later (topic plugins): whatever the log holds now, to be sure.
        state = log.appended if log is not None and log.durable < log.appended and (
            log.appended > self._state_mark or not self.broker.fast_path) else 0
        if state:
            entry[1] += 1
        if persisting is not None and not persisting.durable:
            entry[1] += 1
        if not entry[1] and not self._acks:
            self.acknowledge_all([message])  # nothing to wait for, nothing ahead of it
            return
        acks = self._acks
        if acks is None:
            acks = self._acks = deque()
        acks.append(entry)
        self._acks_bytes += len(message.payload)
        if len(acks) + self._held > DURABLE_WAIT_LIMIT or self._acks_bytes + self._held_bytes > DURABLE_WAIT_BYTES:
            self._hold_if_past_bound()  # (its test first, inline: this runs once per PUBLISH)
        if not entry[1]:
            self._flush_acks()
            return
        if state:
            assert log is not None
            log.when_durable(state, lambda: self._ready(entry),
                             lambda failure: self._persist_failed(failure, message.topic))
        if persisting is not None and not persisting.durable:
            persisting.waiting.append(entry)

    def _ready(self, entry: list[Any]) -> None:
        """One thing ``entry``'s PUBLISH waited for is durable; its acknowledgement may leave
        once nothing else is awaited."""
        entry[1] -= 1
        if not entry[1]:
            self._flush_soon()

    def _flush_soon(self) -> None:
        """Send the acknowledgements that are ready at the end of this turn: a group commit
        makes many appends durable at once, and theirs leave together, in one write (with
        every other client's, on one timer: :meth:`DurableGate.flush_soon`)."""
        if not self._flush_due:
            self._flush_due = True
            self.gate.flush_soon(self._flush_acks, self.broker.clock)

    def _flush_acks(self) -> None:
        self._flush_due = False
        acks, ready = self._acks, []
        if not self._failed:
            while acks and not acks[0][1]:
                ready.append(acks.popleft()[0])
        if ready:
            self._acks_bytes -= sum(map(len, map(_payload, ready)))
            if self.live:
                self.acknowledge_all(ready)
        if self._holding:
            self._resume_below_half()
        self.answered()

    def _hold_if_past_bound(self) -> None:
        """Stop reading from the client while more than :data:`DURABLE_WAIT_LIMIT` of its
        PUBLISHes, or :data:`DURABLE_WAIT_BYTES` of their payloads, wait (see the module docstring)."""
        if (len(self._acks or ()) + self._held > DURABLE_WAIT_LIMIT
                or self._acks_bytes + self._held_bytes > DURABLE_WAIT_BYTES) and not self._holding:
            self._holding = True
            self.gate.holds += 1
            self.connection.pause_reading(_DURABLE_WAIT)

    def _resume_below_half(self) -> None:
        """Read from the client again once its waiting PUBLISHes are down to half of both
        bounds (not at once below them: the reads would stop and start by the message)."""
        if len(self._acks or ()) + self._held <= DURABLE_WAIT_LIMIT // 2 and \
                self._acks_bytes + self._held_bytes <= DURABLE_WAIT_BYTES // 2:
            self._holding = False
            self.connection.resume_reading(_DURABLE_WAIT)

    def _no_longer_waiting(self, count: int, size: int) -> None:
        """``count`` PUBLISHes of ``size`` payload bytes counted in :attr:`_held` wait no more;
        reading starts again at the end of the turn if that takes them down to half the bounds."""
        self._held -= count
        self._held_bytes -= size
        if self._holding:
            self._flush_soon()

    def undecided(self, message: Incoming) -> None:
        """``message`` waits for the topic plugins: counted until :meth:`decided`."""
        self._held += 1
        self._held_bytes += len(message.payload)
        self._hold_if_past_bound()

    def decided(self, message: Incoming) -> None:
        """The topic plugins decided ``message``: no longer counted as waiting for them."""
        self._no_longer_waiting(1, len(message.payload))

    def answers_owed(self) -> bool:
        """Whether an acknowledgement is still to be written: one waiting for the journal or
        the broker's state log, or for the topic plugins."""
        return bool(self._acks) or super().answers_owed()

    def _persist_failed(self, failure: Failure, topic: str) -> None:
        if self._failed:
            return None
        self._failed = True
        self.gate.failures += 1
        if self._acks is not None:
            self._acks.clear()
        self._acks_bytes = 0
        # (logged like a bad client's connection: a full disk fails every client's PUBLISH).
        # A message no stream can ever hold is not acknowledged either (a PUBACK says it is
        # durable; MQTT 3.1.1 has no refusal of a PUBLISH): the line says it is for good.
        never = "; it can never be stored (the client is closed each time it sends it)" \
            if failure.check(RecordTooLargeError) else ""
        self.connection.factory.not_acknowledged(f"not acknowledging {topic_for_log(topic)} from "
                                                 f"{self.session.client_id!r}: {failure.getErrorMessage()}{never}; "
                                                 "closing the connection")
        self.connection.abort()
        return None
