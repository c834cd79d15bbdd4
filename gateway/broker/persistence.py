"""Persistent sessions and retained messages on disk, so they survive a gateway restart (§3.1.2.4).

Two parts, a checkpoint and a write-ahead log:

- :class:`~gateway.broker.statelog.StateLog` appends every change the broker acknowledges
  to a journal stream (:data:`~gateway.broker.statelog.STATE_STREAM`), through the
  journal's group commit: a retained message (or its removal), a QoS 1/2 message queued
  for an offline persistent session, a subscription or unsubscription of a persistent
  session, a persistent session cleared, a QoS 2 packet id a persistent session's client
  sent and its release, and the user name a persistent session was made or resumed with
  when it changes (nothing waits for that one). The broker holds the publisher's PUBACK/PUBREC, the SUBACK and the
  PUBCOMP until the change is durable
  (:meth:`~gateway.broker.statelog.StateLog.when_durable`), so a SIGKILL right after
  loses none of them.
- The checkpoint is one JSON file (``<state_dir>/broker/state.json``) written atomically:
  a temporary file is written and fsynced, renamed over the old one, and the directory is
  fsynced. :func:`snapshot` takes the broker's state on the reactor thread (cheap: it only
  collects references) with the number of the last logged change it covers
  (``log_through``); :meth:`BrokerStateStore.save` encodes and writes it in a thread. Then
  the log's cursor is acknowledged, so the journal deletes what the checkpoint covers
  (compaction: the log never grows past about one segment plus what changed since).

On start, the checkpoint is restored and the changes logged after it are replayed
(:func:`replay`). Only sessions with CleanSession=0 are kept: their client's user name (which
topic plugins decide on), subscriptions, queued messages and unacknowledged deliveries
(resent with DUP on reconnect), and when their client went offline, on the wall clock (the
checkpoint's ``offline_since``, worked out from the steady clock's idle time when it is
written; the state log's ``offline`` records), so their expiry counts the time before the
start too (:func:`offline_for` says how a time off a wrong clock is taken). What a reconnected
client was sent from its queue is not logged: after a crash, the messages delivered since
the last checkpoint (at most about a second) are delivered again (QoS 1: at least once).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable, Iterable, Iterator

from twisted.logger import Logger

from gateway import jsontext
from gateway.atomic import write_parts_atomically
from gateway.broker.clientsession import PUBREC_SEEN, ClientSession
from gateway.broker.outbox import QueuedMessage
from gateway.clockstep import CLOCK_SET_SINCE
from gateway.errors import BrokerError
from gateway.journal.record import Record
from gateway.mqtt.framing import PacketReader
from gateway.mqtt.packets import decode_publish, publish
from gateway.mqtt.topics import valid_filter, valid_topic
from gateway.stateaccess import is_permission_error, refusal

if TYPE_CHECKING:
    from gateway.broker.core import GatewayBroker

FORMAT = 1
#: Retained messages encoded together, as one part of a checkpoint (:func:`encoded_parts`).
RETAINED_PER_PART = 1000


log = Logger()


class BrokerStateError(BrokerError):
    """The broker's state file cannot be read or written."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"a payload is not base64: {text[:40]!r}") from exc


#: Why a checkpoint's retained messages are refused.
_RETAINED_WRONG = "retained: not a list of 3-item entries of the right types"


def _check_head(state: dict[str, Any]) -> None:
    """Check a checkpoint's top-level members as read (:func:`_read_state`; each session and
    retained message was checked as it came) for the shape :meth:`BrokerStateStore.save` writes.

    :raises ValueError: naming the first part that is wrong.
    """
    if state.get("format") != FORMAT:
        raise ValueError(f"unknown format {state.get('format')!r}")
    if not _is_int(state.get("log_through", 0)):
        raise ValueError("log_through: not a whole number")
    if not isinstance(state.get("sessions"), list):
        raise ValueError("sessions: not a list")
    if not isinstance(state.get("retained"), list):
        raise ValueError(_RETAINED_WRONG)


def _check_session(n: int, entry: Any) -> None:
    """Check that ``entry``, the ``n``th session of a checkpoint as read from JSON, has the
    shape :meth:`BrokerStateStore.save` writes, so that restoring it cannot fail half-way or
    load what no client sent.

    :raises ValueError: naming the first part that has not.
    """
    where = f"sessions[{n}]"
    if not (isinstance(entry, dict) and isinstance(entry.get("client_id"), str)
            and isinstance(entry.get("username"), (str, type(None)))):
        raise ValueError(f"{where}: not a session (client_id, username)")
    if not _is_time(entry.get("offline_since")):  # (absent from checkpoints before it was kept)
        raise ValueError(f"{where}.offline_since: not a time in seconds")
    # (a filter that is no valid one is dropped by restore, not refused here: _subscribe_saved)
    _check_rows(entry.get("subscriptions"), f"{where}.subscriptions", _is_text, _is_qos)
    _check_rows(entry.get("queue"), f"{where}.queue", _is_topic, _is_text, _is_qos, _is_flag)
    _check_rows(entry.get("inflight"), f"{where}.inflight", _is_int, _is_text, _is_text, _is_qos, _is_flag, _is_flag)
    # (a delivery its client has PUBREC'd keeps no message: saved with the topic "", _inflight_entry)
    if not all(pubrec or valid_topic(topic) for _, topic, _, _, _, pubrec in entry["inflight"]):
        raise ValueError(f"{where}.inflight: an unacknowledged delivery to no topic name")
    inflight_in = entry.get("inflight_in")
    if not isinstance(inflight_in, list) or not all(_is_int(i) for i in inflight_in):
        raise ValueError(f"{where}.inflight_in: not a list of packet ids")


def _check_rows(value: Any, where: str, *kinds: Callable[[Any], bool]) -> None:
    """:raises ValueError: ``value`` is not a list of rows whose items ``kinds`` take, in order."""
    if not isinstance(value, list) or not all(
            isinstance(row, list) and len(row) == len(kinds) and all(ok(v) for ok, v in zip(kinds, row))
            for row in value):
        raise ValueError(f"{where}: not a list of {len(kinds)}-item entries of the right types")


def _is_text(value: Any) -> bool:
    return isinstance(value, str)


def _is_topic(value: Any) -> bool:
    """A topic name a client could have published to (no wildcard, not empty)."""
    return isinstance(value, str) and valid_topic(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_time(value: Any) -> bool:
    """Seconds since the epoch, a finite number, or ``None`` (not known)."""
    if value is None:
        return True
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # (an int too large for a float)
        return False


def _is_qos(value: Any) -> bool:
    return _is_int(value) and 0 <= value <= 2


def _is_flag(value: Any) -> bool:
    return isinstance(value, bool) or value in (0, 1)


def offline_for(since: float | None, now: float) -> float:
    """Seconds a restored session's client has been offline at ``now``, from the wall-clock
    time it went offline (``since``), both of the wall clock: none (offline from now) when
    ``since`` is not known, is later than ``now`` (the clock was stepped back, or this boot's
    is not set yet) or either of them is before :data:`~gateway.clockstep.CLOCK_SET_SINCE` (a clock not set)."""
    if since is None or since < CLOCK_SET_SINCE or now < CLOCK_SET_SINCE:
        return 0.0
    return max(now - since, 0.0)


def snapshot(broker: "GatewayBroker") -> dict[str, Any]:
    """The broker's persistent state as plain data (payloads still bytes).

    A session whose client is offline has the wall-clock time it went offline
    (``offline_since``): now less its idle time, which the steady clock counts, so a step of
    the wall clock since it left does not move it; ``None`` for a connected client, and for
    all while the wall clock is not set (:data:`~gateway.clockstep.CLOCK_SET_SINCE`).
    """
    sessions = []
    now = broker.clock.seconds()
    clock_set = now >= CLOCK_SET_SINCE
    for client_id, session in broker.sessions.items():
        if session.clean:
            continue
        idle = broker.offline.idle_for(client_id) if clock_set and client_id not in broker.live else None
        sessions.append({
            "client_id": client_id,
            "username": session.username,
            "offline_since": None if idle is None else now - idle,
            "subscriptions": [[topic_filter, broker.subscriptions[topic_filter][client_id][1]]
                              for topic_filter in session.filters
                              if client_id in broker.subscriptions.get(topic_filter, {})],
            "queue": session.outbox.messages if session.outbox is not None else [],
            "inflight": [_inflight_entry(packet_id, sent) for packet_id, sent in session.inflight_out.items()],
            "inflight_in": sorted(_held_qos2(broker, client_id, session)),
        })
    retained = [[topic, m.payload, m.qos] for topic, m in broker.retained.items()]
    log = broker.state_log
    return {"format": FORMAT, "sessions": sessions, "retained": retained,
            "log_through": log.appended if log is not None else 0}


def _held_qos2(broker: "GatewayBroker", client_id: str, session: ClientSession) -> set[int] | frozenset[int]:
    """``session``'s held QoS 2 packet ids, less those whose PUBLISH is not stored yet: held
    after a crash, such an id would make the client's resend look like a duplicate."""
    handler = broker.live.get(client_id)
    unstored = handler.qos2_ids_not_logged() if handler is not None else ()
    return session.inflight_in.difference(unstored) if unstored else session.inflight_in


def _inflight_entry(packet_id: int, sent: bytes) -> list[Any]:
    """``[packet id, topic, payload, qos, retain, pubrec]`` for an ``inflight_out`` entry."""
    if sent == PUBREC_SEEN:
        return [packet_id, "", b"", 2, False, True]
    message = decode_publish(PacketReader(max_packet_size=len(sent)).feed(sent)[0])
    return [packet_id, message.topic, message.payload, message.qos, message.retain, False]


def restore(broker: "GatewayBroker", state: dict[str, Any]) -> None:
    """Recreate the sessions (offline) and retained messages of ``state`` in a started broker
    whose state log is not attached yet (what is restored is not logged again).

    Each session counts as offline since its ``offline_since`` (:func:`offline_for`); one
    without (a checkpoint written before it was kept, a client connected then) since now.
    The broker's next look for due sessions ends those that have been offline too long.
    """
    assert broker.state_log is None, "restore before the state log is attached"
    now = broker.clock.seconds()
    # One object for a message queued for many sessions, as it was before the restart (one
    # per session took three times the memory): the payloads are shared already (load).
    shared: dict[QueuedMessage, QueuedMessage] = {}
    for entry in state.get("sessions", []):
        session = broker.create_offline_session(entry["client_id"])
        session.username = entry.get("username")  # (absent from checkpoints before it was kept)
        broker.offline.restored(session.client_id, offline_for(entry.get("offline_since"), now))
        for topic_filter, qos in entry["subscriptions"]:
            _subscribe_saved(broker, session, topic_filter, qos)
        outbox = broker.outbox_for(session)
        for topic, payload, qos, retain in entry["queue"]:
            message = QueuedMessage(topic, payload, qos, retain)
            outbox.push(shared.setdefault(message, message))
        for packet_id, topic, payload, qos, retain, pubrec in entry["inflight"]:
            session.inflight_out[packet_id] = PUBREC_SEEN if pubrec else publish(topic, payload, qos, bool(retain),
                                                                                 packet_id)
        session.inflight_bytes = sum(map(len, session.inflight_out.values()))
        if entry["inflight_in"]:
            session.inflight_in = set(entry["inflight_in"])
    for topic, payload, qos in state.get("retained", []):
        broker.keep_retained(topic, payload, qos)  # not retain_now: no plugin event for old news
    broker.offline.reorder()


class BrokerStateStore:
    """The state file of one broker.

    :param directory: where ``state.json`` lives (created when first saved).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / "state.json"

    def load(self) -> dict[str, Any] | None:
        """The saved state with payloads decoded, or ``None`` when nothing was saved yet.

        The file is read as it is parsed, a session (or retained message) at a time, each
        checked and its payloads decoded before the next is read (:func:`_read_state`): the
        whole file's text, or its state parsed and not decoded yet, is never held.

        :raises BrokerStateError: when the file exists but cannot be used.
        """
        try:
            file = self.path.open("rb")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._unreadable(exc) from exc
        with file:
            try:
                return _read_state(file)
            except OSError as exc:
                raise self._unreadable(exc) from exc
            except ValueError as exc:
                raise BrokerStateError(f"{self.path} is not a broker state file ({exc}); it holds the broker's"
                                       " retained messages and persistent sessions: move it away to start without"
                                       " them") from exc

    def _unreadable(self, exc: OSError) -> BrokerStateError:
        if is_permission_error(exc):  # (not damage: its owner, its mode and the fix, as for every state file)
            return BrokerStateError(str(refusal(self.path)))
        return BrokerStateError(f"cannot read {self.path}: {exc.strerror or exc}; it holds the broker's retained"
                                " messages and persistent sessions: make it a file the gateway's user may read,"
                                " or move it away to start without them")

    def save(self, state: dict[str, Any]) -> int:
        """Write ``state`` (from :func:`snapshot`) atomically; blocking: call it from a thread.

        :return: the file's size in bytes.
        """
        return write_parts_atomically(self.path, encoded_parts(state))


def encoded_parts(state: dict[str, Any]) -> Iterator[bytes]:
    """``state`` (from :func:`snapshot`) as the checkpoint's JSON, a part at a time: one per
    session, one per :data:`RETAINED_PER_PART` retained messages.

    Encoded whole, a large state (a thousand offline sessions with full queues) took as
    much again as text several times over (the payloads as base64, the JSON, its bytes),
    and ``json.dumps``, one C call, held the GIL for its whole length, which the reactor
    thread waited out (a second and more). A part at a time, the writer holds one part and
    the reactor thread gets the GIL back between parts.
    """
    head = {"format": FORMAT}
    if "log_through" in state:
        head["log_through"] = state["log_through"]
    yield _dumps(head)[:-1].encode() + b',"sessions":['
    for n, entry in enumerate(state["sessions"]):
        encoded = {**entry,
                   "queue": [[t, _b64(p), q, r] for t, p, q, r in entry["queue"]],
                   "inflight": [[i, t, _b64(p), q, r, c] for i, t, p, q, r, c in entry["inflight"]]}
        yield (b"," if n else b"") + _dumps(encoded).encode()
    yield b'],"retained":['
    retained = state["retained"]
    for start in range(0, len(retained), RETAINED_PER_PART):
        rows = [[t, _b64(p), q] for t, p, q in retained[start:start + RETAINED_PER_PART]]
        yield (b"," if start else b"") + _dumps(rows)[1:-1].encode()
    yield b"]}"


def _read_state(file: IO[bytes]) -> dict[str, Any]:
    """The checkpoint in ``file``, read a session (or a retained message) at a time, each
    checked and its payloads decoded as it comes, so that what is held at once is the state
    built so far and one session's text (it was the file's text and all the state parsed from
    it: about twice the file, on top of the gateway's own memory at start).

    :raises ValueError: naming the first part that is wrong (:func:`_check_head`,
        :func:`_check_session`, :func:`gateway.jsontext.members`).
    """
    state: dict[str, Any] = {}
    payloads = _Payloads()
    for key, value in jsontext.members(file, arrays=("sessions", "retained")):
        if key == "format" and value != FORMAT:
            raise ValueError(f"unknown format {value!r}")  # (at once: not a file of another format read through)
        if key == "sessions" and isinstance(value, Iterator):
            sessions = []
            for n, entry in enumerate(value):
                _check_session(n, entry)
                entry["queue"] = [[t, payloads.decoded(p), q, r] for t, p, q, r in entry["queue"]]
                entry["inflight"] = [[i, t, _unb64(p), q, r, c] for i, t, p, q, r, c in entry["inflight"]]
                payloads.next_session()
                sessions.append(entry)
            value = sessions
        elif key == "retained" and isinstance(value, Iterator):
            retained = []
            for row in value:  # (checked here, not by _check_rows: a hundred thousand rows take half the time)
                if not (isinstance(row, list) and len(row) == 3 and _is_topic(row[0]) and _is_text(row[1])
                        and _is_qos(row[2])):
                    raise ValueError(_RETAINED_WRONG)
                topic, text, qos = row
                retained.append([topic, _unb64(text), qos])
            value = retained
        elif key not in ("format", "log_through"):
            continue  # (nothing restore reads)
        state[key] = value
    _check_head(state)
    return state


class _Payloads:
    """The queued payloads of a checkpoint being read, decoded: a message queued for many
    sessions (a topic many subscribe to) is one object, as it was before the restart.

    Found by its bytes, as each is decoded; and decoded once when the session before queued
    it too (the usual way: every session subscribed to that topic queued the same messages),
    whose texts are kept until the next session is read. Keeping every payload's text, as the
    key that found it, held all the payloads' text to the end of the load.
    """

    def __init__(self) -> None:
        self._kept: dict[bytes, bytes] = {}
        self._previous: dict[str, bytes] = {}
        self._current: dict[str, bytes] = {}

    def decoded(self, text: str) -> bytes:
        """The payload whose base64 is ``text``.

        :raises ValueError: ``text`` is no base64.
        """
        found = self._previous.get(text)
        if found is None:
            found = _unb64(text)
            found = self._kept.setdefault(found, found)
        self._current[text] = found
        return found

    def next_session(self) -> None:
        """A session's payloads are all decoded: the next one's come."""
        self._previous, self._current = self._current, {}


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def replay(broker: "GatewayBroker", records: Iterable[Record], through: int) -> int:
    """Apply the logged changes after ``through`` (the checkpoint's) to a restored broker.

    Like :func:`restore`, before the state log is attached. A session's client that went
    offline (``offline``) counts as offline since that record's ``received`` time
    (:func:`offline_for`); one that connected again (``online``), as one connected at the
    checkpoint, since now.

    :returns: the number of the last change found (``through`` if none is newer).
    """
    assert broker.state_log is None, "replay before the state log is attached"
    last = through
    # A message queued for many sessions is logged once per session: one object again, as restore makes it.
    shared: dict[QueuedMessage, QueuedMessage] = {}
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
            broker.keep_retained(record.topic, bytes(record.payload), record.qos)
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
            broker.offline.restored(client_id, offline_for(record.received, now) if op == "offline" else 0.0)
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
