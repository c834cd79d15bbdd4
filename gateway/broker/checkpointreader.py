"""The read side of the broker's checkpoint: the file parsed a session (or a retained
message) at a time, each part checked for the shape
:func:`~gateway.broker.checkpointwriter.encoded_parts` writes and its payloads decoded as it
comes (:func:`read_checkpoint`), for
:meth:`~gateway.broker.persistence.BrokerStateStore.load`.
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import IO, Any, Callable, Iterator

from gateway import jsontext
from gateway.broker.checkpointwriter import FORMAT, CheckpointContent
from gateway.broker.offlinetimes import read_saved_clock
from gateway.broker.retainedlimits import RetainedBudget, retained_size
from gateway.mqtt.topics import valid_topic
from gateway.shown import shown_repr

#: Why a checkpoint's retained messages are refused when they are no list.
_RETAINED_WRONG = "retained: not a list"


def read_checkpoint(file: IO[bytes], budget: RetainedBudget | None = None) -> CheckpointContent:
    """The checkpoint in ``file``, read a session (or a retained message) at a time, each
    checked and its payloads decoded as it comes, so that what is held at once is the state
    built so far and one session's text (it was the file's text and all the state parsed from
    it: about twice the file, on top of the gateway's own memory at start).

    :param budget: the bounds on the clients' retained messages kept: one that does not fit
        them is checked and dropped as it is read, counted there (a file written under larger
        bounds must not take the start past what the gateway may hold); a link's or the
        gateway's own (``retained_links``, ``retained_own``, ahead of them) is kept, as the
        running broker kept it; ``None``: all are kept.

    :raises ValueError: naming the first part that is wrong (:func:`_check_head`,
        :func:`_check_session`, :func:`gateway.jsontext.members`).
    """
    state: CheckpointContent = {}
    payloads = _Payloads()
    # (the topics whose retained message is a link's or the gateway's own: written before the
    # messages, they are kept whatever the bounds, which count the clients' only)
    not_clients: set[str] = set()
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
            for n, row in enumerate(value):  # (checked here, not by _check_rows: a hundred thousand rows take half the time)
                if not (isinstance(row, list) and len(row) == 3 and _is_topic(row[0]) and _is_text(row[1])
                        and _is_qos(row[2])):
                    raise ValueError(f"retained[{n}]: {_row_problem(row, _RETAINED_KINDS)}")
                topic, text, qos = row
                payload = _unb64(text)
                if (budget is None or topic in not_clients
                        or budget.admit(topic, retained_size(topic, payload))):
                    retained.append([topic, payload, qos])
            value = retained
        elif key == "retained_links":
            if not (isinstance(value, list) and all(isinstance(row, list) and len(row) == 2 and _is_topic(row[0])
                                                    and _is_text(row[1]) and row[1] for row in value)):
                raise ValueError("retained_links: not a list of [topic, link name] pairs")
            not_clients.update(topic for topic, _ in value)
        elif key == "retained_own":
            if not (isinstance(value, list) and all(_is_topic(topic) for topic in value)):
                raise ValueError("retained_own: not a list of topics")
            not_clients.update(value)
        elif key == "clock":
            read_saved_clock(value)
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


def _unb64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"a payload is not base64: {text[:40]!r}") from exc


def _check_head(state: CheckpointContent) -> None:
    """Check a checkpoint's top-level members as read (:func:`read_checkpoint`; each session and
    retained message was checked as it came) for the shape
    :func:`~gateway.broker.checkpointwriter.encoded_parts` writes.

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
    shape :func:`~gateway.broker.checkpointwriter.encoded_parts` writes, so that restoring it
    cannot fail half-way or load what no client sent.

    :raises ValueError: naming the first part that has not.
    """
    where = f"sessions[{n}]"
    if not (isinstance(entry, dict) and isinstance(entry.get("client_id"), str)
            and isinstance(entry.get("username"), (str, type(None)))):
        raise ValueError(f"{where}: not a session (client_id, username)")
    if not _is_time(entry.get("offline_since")):  # (absent from checkpoints before it was kept)
        raise ValueError(f"{where}.offline_since: not a time in seconds")
    # (a filter that is no valid one is dropped by restore, not refused here: persistence._subscribe_saved)
    _check_rows(entry.get("subscriptions"), f"{where}.subscriptions", _is_text, _is_qos)
    _check_rows(entry.get("queue"), f"{where}.queue", _is_topic, _is_text, _is_qos, _is_flag)
    arrivals = entry.get("queue_arrivals")  # (absent from checkpoints before it was kept)
    if arrivals is not None and not (isinstance(arrivals, list) and len(arrivals) == len(entry["queue"])
                                     and all(_is_int(a) for a in arrivals)):
        raise ValueError(f"{where}.queue_arrivals: not a list of arrival numbers, one for each queued message")
    _check_rows(entry.get("inflight"), f"{where}.inflight", _is_int, _is_text, _is_text, _is_qos, _is_flag, _is_flag)
    # (a delivery its client has PUBREC'd keeps no message: saved with the topic "",
    # checkpointwriter._inflight_entry)
    if not all(pubrec or valid_topic(topic) for _, topic, _, _, _, pubrec in entry["inflight"]):
        raise ValueError(f"{where}.inflight: an unacknowledged delivery to no topic name")
    inflight_in = entry.get("inflight_in")
    if not isinstance(inflight_in, list) or not all(_is_int(i) for i in inflight_in):
        raise ValueError(f"{where}.inflight_in: not a list of packet ids")


def _check_rows(value: Any, where: str, *kinds: Callable[[Any], bool]) -> None:
    """:raises ValueError: ``value`` is not a list of rows whose items ``kinds`` take, in order;
    naming the first row that is not (``sessions[0].queue[3]: ...``) and why."""
    if not isinstance(value, list):
        raise ValueError(f"{where}: not a list")
    for n, row in enumerate(value):
        if not (isinstance(row, list) and len(row) == len(kinds) and all(ok(v) for ok, v in zip(kinds, row))):
            raise ValueError(f"{where}[{n}]: {_row_problem(row, kinds)}")


def _row_problem(row: Any, kinds: tuple[Callable[[Any], bool], ...]) -> str:
    """Why ``row`` is no entry whose items ``kinds`` take: its length, or its first wrong item."""
    if not isinstance(row, list) or len(row) != len(kinds):
        return f"not a {len(kinds)}-item entry: {shown_repr(row)}"
    n, ok, item = next((n, ok, item) for n, (ok, item) in enumerate(zip(kinds, row)) if not ok(item))
    return f"item {n} is not {_WANTED[ok]}: {shown_repr(item)}"


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


#: What each check takes, for :func:`_row_problem`.
_WANTED: dict[Callable[[Any], bool], str] = {
    _is_text: "text", _is_topic: "a topic name a client could have published to (not empty, no wildcard)",
    _is_int: "a whole number", _is_qos: "a QoS (0, 1 or 2)", _is_flag: "true or false"}
#: The items of a retained message: topic, base64 payload, QoS.
_RETAINED_KINDS = (_is_topic, _is_text, _is_qos)
