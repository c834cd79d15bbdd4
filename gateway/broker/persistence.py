"""Persistent sessions and retained messages on disk, so they survive a gateway restart (§3.1.2.4).

Two parts, a checkpoint and a write-ahead log:

- :class:`~gateway.broker.statelog.StateLog` appends every change the broker acknowledges
  to a journal stream (:data:`~gateway.broker.statelog.STATE_STREAM`), through the
  journal's group commit: a retained message (or its removal; with the cloud link whose
  downlink brought it, if one did), a QoS 1/2 message queued
  for an offline persistent session, a subscription or unsubscription of a persistent
  session, a persistent session cleared, a QoS 2 packet id a persistent session's client
  sent and its release, and the user name a persistent session was made or resumed with
  when it changes (nothing waits for that one). The broker holds the publisher's PUBACK/PUBREC, the SUBACK and the
  PUBCOMP until the change is durable
  (:meth:`~gateway.broker.statelog.StateLog.when_durable`), so a SIGKILL right after
  loses none of them.
- The checkpoint is one JSON file (``<state_dir>/broker/state.json``) written atomically:
  a temporary file is written and fsynced, renamed over the old one, and the directory is
  fsynced. :func:`~gateway.broker.checkpointwriter.checkpoint_content` takes the broker's state on
  the reactor thread (cheap: it only collects references) with the number of the last logged
  change it covers (``log_through``); :meth:`BrokerStateStore.save` encodes and writes it in
  a thread (:mod:`gateway.broker.checkpointwriter`). Then the log's cursor is acknowledged,
  so the journal deletes what the checkpoint covers (compaction: the log never grows past
  about one segment plus what changed since). :meth:`BrokerStateStore.load` reads it back a
  session at a time, checking each (:mod:`gateway.broker.checkpointreader`).

On start, the checkpoint is restored and the changes logged after it are replayed
(:func:`replay`). Only sessions with CleanSession=0 are kept: their client's user name (which
topic plugins decide on), subscriptions, queued messages and unacknowledged deliveries
(resent with DUP on reconnect), and when their client went offline, on the wall clock (the
checkpoint's ``offline_since``, worked out from the steady clock's idle time when it is
written; the state log's ``offline`` records), with the boot's clock beside them, so their
expiry counts the time before the start too (:mod:`gateway.broker.offlinetimes` says how,
and how a time off a wrong clock is taken). What a reconnected
client was sent from its queue is not logged: after a crash, the messages delivered since
the last checkpoint (at most about a second) are delivered again (QoS 1: at least once).
"""

from __future__ import annotations

import heapq
import itertools
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from twisted.logger import Logger

from gateway.atomic import write_parts_atomically
from gateway.broker.checkpointreader import read_checkpoint
from gateway.broker.checkpointwriter import CheckpointContent, checkpoint_content, encoded_parts
from gateway.broker.clientsession import PUBREC_SEEN, ClientSession
from gateway.broker.offlinetimes import logged_idle, offline_for, read_saved_clock, restored_idle
from gateway.broker.outbox import Outbox, QueuedMessage
from gateway.broker.retainedlimits import RetainedBudget
from gateway.configdirectory import link_to_nothing
from gateway.errors import BrokerError
from gateway.journal.record import Record
from gateway.mqtt.packets import publish
from gateway.mqtt.topics import valid_filter
from gateway.stateaccess import is_permission_error, refusal

if TYPE_CHECKING:
    from gateway.broker.core import GatewayBroker

__all__ = ["BrokerStateError", "BrokerStateStore", "CheckpointContent", "checkpoint_content", "offline_for", "replay",
           "restore"]

log = Logger()


class BrokerStateError(BrokerError):
    """The broker's state file cannot be read or written."""


def restore(broker: "GatewayBroker", state: CheckpointContent) -> None:
    """Recreate the sessions (offline) and retained messages of ``state`` in a started broker
    whose state log is not attached yet (what is restored is not logged again).

    Each session counts as offline since its ``offline_since``, read with the checkpoint's
    ``clock`` (:func:`~gateway.broker.offlinetimes.restored_idle`); one without (a checkpoint
    written before it was kept, a client connected then) since now.
    The broker's next look for due sessions ends those that have been offline too long.

    The queued messages of all sessions are queued again in the order they came
    (``queue_arrivals``), which ``max_queued_bytes_total`` drops the oldest first by
    (:meth:`~gateway.broker.outbox.QueuePolicy.apply_total`). A checkpoint written before that
    order was kept has the sessions restored longest offline first instead, so that their
    messages count as the oldest.
    """
    assert broker.state_log is None, "restore before the state log is attached"
    now = broker.clock.seconds()
    # One object for a message queued for many sessions, as it was before the restart (one
    # per session took three times the memory): the payloads are shared already (load).
    shared: dict[QueuedMessage, QueuedMessage] = {}
    entries = state.get("sessions", [])
    clock = read_saved_clock(state["clock"]) if "clock" in state else None  # (absent from checkpoints before it)
    idle = [restored_idle(entry.get("offline_since"), clock, now, broker.boot_clock) for entry in entries]
    numbered = all("queue_arrivals" in entry for entry in entries)
    order = range(len(entries)) if numbered else sorted(range(len(entries)), key=lambda n: -idle[n])  # (stable)
    queues: list[Iterator[tuple[int, Outbox, list[Any]]]] = []
    for n in order:
        entry = entries[n]
        session = broker.create_offline_session(entry["client_id"])
        session.username = entry.get("username")  # (absent from checkpoints before it was kept)
        broker.offline.restored(session.client_id, idle[n])
        for topic_filter, qos in entry["subscriptions"]:
            _subscribe_saved(broker, session, topic_filter, qos)
        outbox = broker.outbox_for(session)
        # (without arrival numbers, each session's messages after those of the sessions before it)
        arrivals = entry["queue_arrivals"] if numbered else itertools.count(len(queues) << 32)
        queues.append(zip(arrivals, itertools.repeat(outbox), entry["queue"]))
        for packet_id, topic, payload, qos, retain, pubrec in entry["inflight"]:
            session.inflight_out[packet_id] = PUBREC_SEEN if pubrec else publish(topic, payload, qos, bool(retain),
                                                                                 packet_id)
        session.inflight_bytes = sum(map(len, session.inflight_out.values()))
        if entry["inflight_in"]:
            session.inflight_in = set(entry["inflight_in"])
    for _, outbox, (topic, payload, qos, retain) in heapq.merge(*queues, key=itemgetter(0)):
        message = QueuedMessage(topic, payload, qos, retain)
        outbox.push(shared.setdefault(message, message))
    links = dict(state.get("retained_links", ()))  # (absent from checkpoints before it was kept)
    own = set(state.get("retained_own", ()))  # (absent from checkpoints before it was kept)
    for topic, payload, qos in state.get("retained", []):
        # (not retain_now: no plugin event for old news)
        broker.keep_retained(topic, payload, qos, links.get(topic, ""), topic in own)
    broker.offline.reorder()


class BrokerStateStore:
    """The state file of one broker.

    :param directory: where ``state.json`` lives (created when first saved).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / "state.json"

    def load(self, budget: RetainedBudget | None = None) -> CheckpointContent | None:
        """The saved state with payloads decoded, or ``None`` when nothing was saved yet.

        :param budget: the bounds on the retained messages restored: those past them are
            dropped as they are read, and counted there.

        The file is read as it is parsed, a session (or retained message) at a time, each
        checked and its payloads decoded before the next is read
        (:func:`~gateway.broker.checkpointreader.read_checkpoint`): the whole file's text, or
        its state parsed and not decoded yet, is never held.

        :raises BrokerStateError: when the file exists but cannot be used.
        """
        try:
            file = self.path.open("rb")
        except FileNotFoundError as exc:
            dangling = link_to_nothing(self.path)
            if dangling is None:
                return None
            # (a link to nothing is damage, not a first start: starting empty would lose, at the
            # next save, the sessions and retained messages it stood for)
            raise self._unreadable(exc, dangling) from exc
        except OSError as exc:
            raise self._unreadable(exc) from exc
        with file:
            try:
                return read_checkpoint(file, budget)
            except OSError as exc:
                raise self._unreadable(exc) from exc
            except ValueError as exc:
                raise BrokerStateError(f"{self.path} is not a broker state file ({exc}); it holds the broker's"
                                       " retained messages and persistent sessions: move it away to start without"
                                       " them") from exc

    def _unreadable(self, exc: OSError, why: str | None = None) -> BrokerStateError:
        """The error told when the state file cannot be read: ``why`` it cannot (default: ``exc``'s words)."""
        if is_permission_error(exc):  # (not damage: its owner, its mode and the fix, as for every state file)
            return BrokerStateError(str(refusal(self.path)))
        return BrokerStateError(f"cannot read {self.path}: {why or exc.strerror or exc}; it holds the broker's retained"
                                " messages and persistent sessions: make it a file the gateway's user may read,"
                                " or move it away to start without them")

    def save(self, state: CheckpointContent) -> int:
        """Write ``state`` (from :func:`checkpoint_content`) atomically; blocking: call it from a thread.

        :return: the file's size in bytes.
        """
        return write_parts_atomically(self.path, encoded_parts(state))


def replay(broker: "GatewayBroker", records: Iterable[Record], through: int, budget: RetainedBudget,
           shared: dict[QueuedMessage, QueuedMessage] | None = None) -> int:
    """Apply the logged changes after ``through`` (the checkpoint's) to a restored broker:
    all of them, or the next part when the log is replayed a read at a time.

    A retained message past the bounds (``max_retained_messages``, ``max_retained_bytes``)
    is dropped and counted in ``budget`` (:meth:`~gateway.broker.routing.Router.restore_retained`).
    A message queued for many sessions is logged once per session: ``shared`` makes it one
    object again (as :func:`restore` does), across the parts when the same dict is given to each.

    Like :func:`restore`, before the state log is attached. A session's client that went
    offline (``offline``) counts as offline since that record's ``received`` time, or its
    ``boot`` header's reading of this boot's clock
    (:func:`~gateway.broker.offlinetimes.logged_idle`); one that connected again (``online``), as one connected at the
    checkpoint, since now.

    :returns: the number of the last change found (``through`` if none is newer).
    """
    assert broker.state_log is None, "replay before the state log is attached"
    last = through
    if shared is None:
        shared = {}
    now = broker.clock.seconds()
    for record in records:
        headers = dict(record.headers)
        try:
            n = int(headers["n"])
            op, client_id = headers["op"], headers.get("client", "")
        except (KeyError, ValueError):
            continue
        last = max(last, n)
        if n <= through:
            continue
        if op == "retain":
            broker.restore_retained(record.topic, bytes(record.payload), record.qos, budget, headers.get("link", ""),
                                    headers.get("own") == "1")
        elif op == "drop":
            broker.forget_session(client_id)
        elif op == "unsub":
            session = broker.sessions.get(client_id)
            if session is not None:
                broker.unsubscribe_session(session, record.topic)
        elif op == "rel":
            session = broker.sessions.get(client_id)
            if session is not None:
                session.released(int.from_bytes(record.payload, "big"))
        elif op == "user":
            _offline_session(broker, client_id).username = headers.get("user")
        elif op == "rec":
            _offline_session(broker, client_id).received_qos2(int.from_bytes(record.payload, "big"))
        elif op in ("offline", "online"):
            _offline_session(broker, client_id)
            idle = logged_idle(record.received, headers, now, broker.boot_clock) if op == "offline" else 0.0
            broker.offline.restored(client_id, idle)
        elif op in ("sub", "queue"):
            session = _offline_session(broker, client_id)
            if op == "sub":
                _subscribe_saved(broker, session, record.topic, record.qos)
            else:
                message = QueuedMessage(record.topic, bytes(record.payload), record.qos, record.retain)
                broker.outbox_for(session).push(shared.setdefault(message, message))
    broker.offline.reorder()
    return last


def _subscribe_saved(broker: "GatewayBroker", session: ClientSession, topic_filter: str, qos: int) -> None:
    """Restore a saved subscription; one to no valid filter (``a/#/b``) is dropped with a warning.

    Earlier versions kept such a filter when an amqtt plugin's ``add_subscription`` gave it (a
    client's SUBSCRIBE was refused): their checkpoint and state log may hold one. The
    routing tree would take it as plain levels, matching nothing, and the next checkpoint would
    hold it again; refusing the file would lose every session and retained message instead.
    """
    if valid_filter(topic_filter):
        broker.subscribe_session(session, topic_filter, qos)
        return
    log.warn("broker: the saved subscription of client {client!r} to {filter!r} is dropped: it is no valid"
             " topic filter (MQTT 3.1.1 §4.7.1; earlier versions kept one an amqtt plugin added)",
             client=session.client_id, filter=topic_filter)


def _offline_session(broker: "GatewayBroker", client_id: str) -> ClientSession:
    known = broker.sessions.get(client_id)
    return known if known is not None else broker.create_offline_session(client_id)
