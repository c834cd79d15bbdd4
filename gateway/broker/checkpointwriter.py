"""The write side of the broker's checkpoint: the broker's persistent state taken as plain
data on the reactor thread (:func:`checkpoint_content`), and encoded as the checkpoint's JSON a part
at a time (:func:`encoded_parts`), which
:meth:`~gateway.broker.persistence.BrokerStateStore.save` writes atomically in a thread.
"""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any, Iterator

from gateway.broker.clientsession import PUBREC_SEEN, ClientSession
from gateway.broker.offlinetimes import saved_clock
from gateway.clockstep import CLOCK_SET_SINCE
from gateway.mqtt.framing import PacketReader
from gateway.mqtt.packets import decode_publish

if TYPE_CHECKING:
    from gateway.broker.core import GatewayBroker

#: The checkpoint's format, its ``format`` member (:mod:`gateway.broker.checkpointreader` refuses another).
FORMAT = 1
#: Retained messages encoded together, as one part of a checkpoint (:func:`encoded_parts`): at
#: most this many, and with no more than :data:`RETAINED_PART_BYTES` of payloads.
RETAINED_PER_PART = 1000
#: The payload bytes of one part's retained messages (one message alone may have more).
RETAINED_PART_BYTES = 2**20

#: What a checkpoint holds: the broker's persistent state as plain data (:func:`checkpoint_content`
#: takes it, :func:`gateway.broker.checkpointreader.read_checkpoint` reads it back). Not the read
#: side's :class:`gateway.broker.snapshot.BrokerSnapshot`, which only reports.
CheckpointContent = dict[str, Any]


def checkpoint_content(broker: "GatewayBroker") -> CheckpointContent:
    """The broker's persistent state as plain data (payloads still bytes).

    A session whose client is offline has the wall-clock time it went offline
    (``offline_since``): now less its idle time, which the steady clock counts, so a step of
    the wall clock since it left does not move it; ``None`` for a connected client. With the
    broker's boot clock, the checkpoint keeps the clock it was taken on (``clock``:
    :func:`~gateway.broker.offlinetimes.saved_clock`), which tells the idle time at the save
    and in this boot the time since; without it, no time is saved while the wall clock is not
    set (:data:`~gateway.clockstep.CLOCK_SET_SINCE`): it would look decades old once it is.
    """
    sessions = []
    now = broker.clock.seconds()
    nothing: tuple[list[int], list[Any]] = ([], [])
    boot = broker.boot_clock
    # (a time read off a clock not set is kept only beside the boot's clock, which tells what it is worth)
    times_kept = now >= CLOCK_SET_SINCE or boot is not None
    for client_id, session in broker.sessions.items():
        if session.clean:
            continue
        idle = broker.offline.idle_for(client_id) if times_kept and client_id not in broker.live else None
        arrivals, queue = session.outbox.numbered() if session.outbox is not None else nothing
        sessions.append({
            "client_id": client_id,
            "username": session.username,
            "offline_since": None if idle is None else now - idle,
            "subscriptions": [[topic_filter, broker.subscriptions[topic_filter][client_id][1]]
                              for topic_filter in session.filters
                              if client_id in broker.subscriptions.get(topic_filter, {})],
            "queue": queue,
            # (their order among every session's: max_queued_bytes_total drops the oldest first)
            "queue_arrivals": arrivals,
            "inflight": [_inflight_entry(packet_id, sent) for packet_id, sent in session.inflight_out.items()],
            "inflight_in": sorted(_held_qos2(broker, client_id, session)),
        })
    # The clients' first: a version before retained_own (rolled back to) bounds every retained
    # message as it reads them in order, and so drops the gateway's own and the links' past the
    # bounds, which come again, rather than the clients' acknowledged ones, which fit them.
    others = broker.retained_links.keys() | broker.retained_own
    retained = [[topic, m.payload, m.qos] for topic, m in broker.retained.items() if topic not in others]
    retained += [[topic, m.payload, m.qos] for topic, m in broker.retained.items() if topic in others]
    log = broker.state_log
    content = {"format": FORMAT, "sessions": sessions, "retained": retained,
               "retained_links": sorted(map(list, broker.retained_links.items())),
               "retained_own": sorted(broker.retained_own),
               "log_through": log.appended if log is not None else 0}
    if boot is not None:
        content["clock"] = saved_clock(boot, now)
    return content


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


def encoded_parts(state: CheckpointContent) -> Iterator[bytes]:
    """``state`` (from :func:`checkpoint_content`) as the checkpoint's JSON, a part at a time: one per
    session, one per :data:`RETAINED_PER_PART` retained messages or :data:`RETAINED_PART_BYTES`
    of their payloads, whichever comes first (a thousand retained messages of 1 MB made one
    part of 1.3 GB of text, held several times over: a gateway in a 160 MiB memory limit with
    81 of them was taken by the OOM killer at each start, as it wrote its first checkpoint).

    Encoded whole, a large state (a thousand offline sessions with full queues) took as
    much again as text several times over (the payloads as base64, the JSON, its bytes),
    and ``json.dumps``, one C call, held the GIL for its whole length, which the reactor
    thread waited out (a second and more). A part at a time, the writer holds one part and
    the reactor thread gets the GIL back between parts.
    """
    head = {"format": FORMAT}
    if "log_through" in state:
        head["log_through"] = state["log_through"]
    # (whose the retained messages are, before them: the reader bounds the clients' as it reads
    # them; members versions before them skip, or read after the messages)
    if "clock" in state:  # (the clock the sessions' times were read on: versions before it skip it)
        head["clock"] = state["clock"]
    for key in ("retained_links", "retained_own"):
        if state.get(key):
            head[key] = state[key]
    yield _dumps(head)[:-1].encode() + b',"sessions":['
    for n, entry in enumerate(state["sessions"]):
        encoded = {**entry,
                   "queue": [[t, _b64(p), q, r] for t, p, q, r in entry["queue"]],
                   "inflight": [[i, t, _b64(p), q, r, c] for i, t, p, q, r, c in entry["inflight"]]}
        yield (b"," if n else b"") + _dumps(encoded).encode()
    yield b'],"retained":['
    for n, part in enumerate(_retained_parts(state["retained"])):
        rows = [[t, _b64(p), q] for t, p, q in part]
        yield (b"," if n else b"") + _dumps(rows)[1:-1].encode()
    yield b"]}"


def _retained_parts(retained: list[list[Any]]) -> Iterator[list[list[Any]]]:
    """``retained`` (``[topic, payload, qos]`` rows) in parts of at most :data:`RETAINED_PER_PART`
    rows and :data:`RETAINED_PART_BYTES` of payloads (a larger payload is a part of its own)."""
    part: list[list[Any]] = []
    size = 0
    for row in retained:
        if part and (len(part) >= RETAINED_PER_PART or size + len(row[1]) > RETAINED_PART_BYTES):
            yield part
            part, size = [], 0
        part.append(row)
        size += len(row[1])
    if part:
        yield part


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))
