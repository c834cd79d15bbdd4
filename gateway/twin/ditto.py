"""Ditto protocol messages as Kanto's local apps exchange them: envelopes, topics, local topics.

A command is a JSON envelope ``{"topic": "<ns>/<name>/things/twin/commands/<action>",
"headers": {...}, "path": "/features/...", "value": ...}``. Kanto publishes the twin's
events for the gateway's own thing on ``command///req//<action>`` and for other things on
``command//<namespace>:<name>/req//<action>``; responses go to the same topic with
``-response`` appended (``errors-response`` for errors).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from gateway import jsontext
from gateway.mqtt.topics import matches
from gateway.shown import shown, shown_repr

#: The twin commands the local twin carries out.
ACTIONS = ("create", "modify", "merge", "delete", "retrieve")
#: The event action each command produces (``retrieve`` produces none); a ``modify`` that
#: creates what was not there produces ``created`` (:func:`event_action`).
EVENT_ACTIONS = {"create": "created", "modify": "modified", "merge": "merged", "delete": "deleted"}
#: The last level of every local topic the twin publishes on: its events, its responses and
#: errors, and the live ``merge`` commands that carry the cloud's wishes to apps.
OWN_ACTIONS = (*EVENT_ACTIONS.values(), *(f"{action}-response" for action in ACTIONS), "errors-response", "merge")


def event_action(action: str, status: int) -> str:
    """The event a change announces, as Ditto names it: ``created`` for a ``modify`` that
    created what was not there (answered 201: Ditto's AttributeCreated, FeaturePropertyCreated,
    ThingCreated...), else the command's own (``modified``, ``merged``...: a merge is
    ``merged`` whatever it made).

    :param action: the command's action (``modify``...).
    :param status: the status it is answered with.
    """
    return "created" if action == "modify" and status == 201 else EVENT_ACTIONS[action]


class DittoError(Exception):
    """A command the twin refuses, answered as a Ditto error response.

    :param status: the HTTP-like status (400, 404, 413...).
    :param error: Ditto's error code (``things:attribute.notfound``...).
    :param message: what is wrong, for people.
    :param envelope: the command's envelope as its answer repeats it (:func:`parse_command`
        sets it: mended when the payload is one :func:`jsontext.loads` refuses); else ``None``.
    """

    def __init__(self, status: int, error: str, message: str, envelope: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.envelope = envelope

    def value(self) -> dict[str, Any]:
        """The error response's ``value``."""
        return {"status": self.status, "error": self.error, "message": self.message}


@dataclass(frozen=True)
class Command:
    """One parsed twin command.

    :ivar namespace: the thing id's namespace (before the first ``:``).
    :ivar name: the rest of the thing id.
    :ivar action: one of :data:`ACTIONS`.
    :ivar path: the Ditto path (``/`` for the whole thing).
    :ivar value: the value (``None`` when absent).
    :ivar headers: the envelope's headers.
    """

    namespace: str
    name: str
    action: str
    path: str
    value: Any = None
    headers: dict[str, Any] = field(default_factory=dict)

    @property
    def thing_id(self) -> str:
        """``namespace:name``."""
        return f"{self.namespace}:{self.name}"

    @property
    def response_required(self) -> bool:
        """Ditto's ``response-required`` header (true when absent)."""
        flag = self.headers.get("response-required", True)
        return flag not in (False, "false")


def parse_command(payload: bytes) -> Command | None:
    """The twin command in ``payload``, or ``None`` when it is no Ditto twin command at all
    (other events on ``e/#`` are none of the twin's business).

    :raises DittoError: for a twin command that is malformed (bad JSON in the value, an
        unknown action, a missing path; Ditto's ``json.invalid`` for a string that is not
        Unicode text, a lone surrogate ``"\\ud800"`` or bytes that are not UTF-8, and for
        JSON that RFC 8259 does not allow: ``NaN``, ``1e400``, a key given twice...).
    """
    try:
        envelope = jsontext.loads(payload)
    except ValueError:  # (UnicodeDecodeError is one)
        envelope = None  # (answered below when it is a twin command's)
    else:
        if not _is_command(envelope):
            return None
    try:
        # (a command only, parsed again: the events on e/# are parsed as fast as before) A NaN
        # stored in a thing made things.json and the events no JSON, a key given twice was one
        # of two values taken silently, and a 5000-digit integer went unanswered.
        jsontext.loads(payload, strict=True)
    except ValueError as exc:
        mended = _mended_envelope(payload)
        if mended is None:
            return None
        fault = "not Unicode text" if isinstance(exc, (UnicodeDecodeError, jsontext.NotTextError)) else "not valid JSON"
        raise DittoError(400, "json.invalid", f"the command is {fault}: {exc}", mended) from None
    assert envelope is not None  # (strict JSON is JSON)
    try:
        return _command(envelope)
    except DittoError as exc:
        exc.envelope = envelope  # (its answer repeats the envelope's topic, path and headers)
        raise


def _command(envelope: dict[str, Any]) -> Command:
    """The twin command a twin command's ``envelope`` holds (:func:`parse_command`).

    :raises DittoError: for one that is malformed.
    """
    parts = envelope["topic"].split("/")
    namespace, name, action = parts[0], parts[1], parts[5]
    if action not in ACTIONS:
        raise DittoError(400, "things:command.unsupported", f"the local twin does not support {shown_repr(action)}")
    if not namespace or not name:
        raise DittoError(400, "things:id.invalid", f"topic {shown_repr(envelope['topic'])} names no thing")
    path = envelope.get("path")
    if path is None:
        raise DittoError(400, "things:path.invalid", "the envelope has no path")
    if not isinstance(path, str):
        raise DittoError(400, "things:path.invalid", f"path must be a string, not {shown_repr(path)}")
    headers = envelope.get("headers")
    headers = {} if headers is None else headers  # (absent or null: none)
    if not isinstance(headers, dict):
        raise DittoError(400, "things:headers.invalid", "headers must be an object")
    if action in ("create", "modify", "merge") and "value" not in envelope:
        raise DittoError(400, "things:value.missing", f"{action} needs a value")
    if jsontext.nesting(envelope) > jsontext.MAX_NESTING:
        raise DittoError(400, "things:value.invalid", f"the command's JSON nests deeper than {jsontext.MAX_NESTING} levels")
    # A value goes where its path says, creating the objects on the way: a long path nested
    # the thing past what the twin's recursive code takes, and every later command on that
    # thing failed with no answer (a modify of /attributes/a/a/... 500 levels deep).
    # (/attributes/a/b: the objects a and b, beside the value's own levels)
    if action in ("create", "modify", "merge") and path.count("/") - 1 + jsontext.nesting(envelope.get("value")) > \
            jsontext.MAX_NESTING:
        raise DittoError(400, "things:value.invalid",
                         f"the value at this path would nest deeper than {jsontext.MAX_NESTING} levels")
    return Command(namespace, name, action, path, envelope.get("value"), headers)


def _is_command(envelope: Any) -> bool:
    """Whether a parsed payload is a twin command's envelope (its topic says so)."""
    return isinstance(envelope, dict) and isinstance(envelope.get("topic"), str) and is_command_topic(envelope["topic"])


def is_command_topic(topic: str) -> bool:
    """Whether an envelope's ``topic`` names a twin command:
    ``<namespace>/<name>/things/twin/commands/<action>``."""
    parts = topic.split("/")
    return len(parts) == 6 and parts[2:5] == ["things", "twin", "commands"]


def _mended_envelope(payload: bytes) -> dict[str, Any] | None:
    """The topic, path and headers of a twin command whose JSON :func:`jsontext.loads` refuses
    (strict), what is not Unicode text mended (U+FFFD), for its error answer (which could not
    be encoded else); a header that is no JSON (``NaN``) is left out; ``None`` when the payload
    is no twin command's JSON at all."""
    try:
        envelope = json.loads(payload.decode(json.detect_encoding(payload), "replace"), parse_int=_any_int)
    except (ValueError, RecursionError):
        return None
    if not _is_command(envelope):
        return None
    headers = envelope.get("headers")
    kept = {_mended(key): _mended(value) if isinstance(value, str) else value
            for key, value in (headers.items() if isinstance(headers, dict) else ())
            if isinstance(value, str) or _is_text(value)}
    path = envelope.get("path", "/")
    return {"topic": _mended(envelope["topic"]), "path": _mended(path) if isinstance(path, str) else path,
            "headers": kept}


def _any_int(text: str) -> int | float:
    """An integer of the JSON text, one of more digits than Python converts as a float (an
    infinity: a header holding it is left out of the answer)."""
    try:
        return int(text)
    except ValueError:
        return float(text)


def _mended(text: str) -> str:
    """``text`` with each lone surrogate replaced by U+FFFD."""
    return "".join("\ufffd" if "\ud800" <= char <= "\udfff" else char for char in text)


def _is_text(value: Any) -> bool:
    """Whether a parsed JSON value holds Unicode text only (no lone surrogate anywhere)."""
    try:
        json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (UnicodeEncodeError, ValueError, RecursionError):
        return False
    return True


def error_envelope(topic: str, path: str, headers: dict[str, Any], error: DittoError) -> dict[str, Any]:
    """A Ditto error response for a command on ``topic`` (``.../things/twin/errors``)."""
    parts = topic.split("/")
    error_topic = "/".join(parts[:4] + ["errors"]) if len(parts) >= 4 else topic
    return {"topic": shown(error_topic), "headers": response_headers(headers), "path": shown(path),
            "value": error.value(), "status": error.status}


def response_headers(headers: dict[str, Any]) -> dict[str, Any]:
    """A response's headers: the command's, with ``response-required`` false."""
    out = dict(headers)
    out["response-required"] = False
    return out


def local_topic(root_thing: str, thing_id: str, action: str) -> str:
    """The local topic of an event or response for ``thing_id`` (Kanto's convention).

    :param root_thing: the gateway's own thing id (its events have no device in the topic).
    :param action: ``modified``, ``modify-response``...
    """
    if thing_id == root_thing:
        return f"command///req//{action}"
    return f"command//{thing_id}/req//{action}"


def own_topic_matched(topic_filter: str) -> str | None:
    """A local topic the twin publishes on that ``topic_filter`` matches, or None: a command
    topic that matches one would bring the twin its own answers back as commands. A child
    thing's topics are tried with the thing id the filter names at that level, if it names one.

    :param topic_filter: a valid MQTT topic filter.
    """
    levels = topic_filter.split("/")
    child = levels[2] if len(levels) > 2 and levels[2] not in ("", "+", "#") else "namespace:child"
    for thing_id in ("namespace:root", child):
        for action in OWN_ACTIONS:
            topic = local_topic("namespace:root", thing_id, action)
            if matches(topic_filter, topic):
                return topic
    return None
