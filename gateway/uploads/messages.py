"""Kanto's AutoUploadable messages on the wire: inbox operations in (bare or in a Ditto
envelope), their answers (204, or a Ditto error body), and the outbox ``request``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from gateway import jsontext
from gateway.payloadlimits import too_large
from gateway.shown import id_problem, shown_repr
from gateway.uploads.errors import InvalidRequest

#: The inbox operations of the feature.
OPERATIONS = ("trigger", "start", "cancel", "activate", "deactivate")

#: Kanto's error codes (``client/uploadable.go``).
PARAMETER_INVALID = "messages:parameter.invalid"
EXECUTION_FAILED = "messages:execution.failed"


@dataclass
class Inbox:
    """One inbox message.

    :param operation: ``trigger``, ``start``, ``cancel``, ``activate`` or ``deactivate``.
    :param value: its decoded value (an object; empty for none).
    :param envelope: the Ditto envelope it came in, when it came in one.
    """

    operation: str
    value: dict[str, Any]
    envelope: dict[str, Any] | None = None


def parse_inbox(operation: str, payload: bytes, feature_id: str) -> Inbox:
    """Decode one inbox message for ``operation``.

    :param operation: the operation its topic or command name says.
    :param payload: the bare JSON value, or a Ditto envelope whose ``path`` is
        ``/features/<feature_id>/inbox/messages/<operation>``.
    :param feature_id: the feature's id.
    :raises InvalidRequest: on a payload larger than
        :data:`~gateway.payloadlimits.REQUEST_BYTES` (not read), bad JSON (RFC 8259's: no ``NaN``,
        no key given twice...), another feature
        or operation, or a non-object value.
    """
    if operation not in OPERATIONS:
        raise InvalidRequest(f"Unsupported operation: {operation}")
    oversized = too_large(payload)
    if oversized is not None:
        raise InvalidRequest(f"invalid '{operation}' operation parameters: {oversized}")
    try:
        message = jsontext.loads(payload, strict=True) if payload.strip() else {}
    except ValueError as error:
        raise InvalidRequest(f"invalid '{operation}' operation parameters: {error}") from error
    envelope = None
    if isinstance(message, dict) and "path" in message and ("topic" in message or "value" in message):
        envelope = message
        expected = f"/features/{feature_id}/inbox/messages/{operation}"
        if message["path"] != expected:
            raise InvalidRequest(f"path {shown_repr(message['path'])} is not {expected!r}")
        message = message.get("value") or {}
    if not isinstance(message, dict):
        raise InvalidRequest(f"invalid '{operation}' operation parameters: an object is required")
    return Inbox(operation, message, envelope)


def string_options(value: dict[str, Any], where: str) -> dict[str, str]:
    """The ``options`` of a message: a mapping of strings (Kanto's ``map[string]string``)."""
    options = value.get("options") or {}
    if not isinstance(options, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                for k, v in options.items()):
        raise InvalidRequest(f"invalid '{where}' operation parameters: options must map strings to strings")
    return options


def correlation_id(value: dict[str, Any], where: str, required: bool = True) -> str:
    """The ``correlationId`` of a message (empty when not required and absent: a ``trigger``'s,
    which then names a new upload, and so must be one that is shown whole,
    :func:`gateway.shown.id_problem`)."""
    cid = value.get("correlationId", "")
    if not isinstance(cid, str):
        raise InvalidRequest(f"invalid '{where}' operation parameters: correlationId must be a string, "
                             f"not {shown_repr(cid)}")
    if required and not cid:
        raise InvalidRequest(f"invalid '{where}' operation parameters: correlationId is required")
    problem = None if required or not cid else id_problem(cid)
    if problem is not None:
        raise InvalidRequest(f"invalid '{where}' operation parameters: correlationId: {problem}")
    return cid


#: RFC 3339's date-time (its section 5.6): ``T`` between the date and the time (or, as its
#: note allows, ``t`` or a space), seconds always, a fraction of any length, ``Z`` (``z``) or
#: ``±HH:MM``; the offset is optional here only to be refused with its own words.
_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\d)[Tt ](\d\d:\d\d):(\d\d)(\.\d+)?([Zz]|[+-]\d\d:\d\d)?", re.ASCII)


def parse_time(value: Any, name: str) -> float | None:
    """An RFC 3339 time (``activate``'s ``from``/``to``) as seconds since the epoch, or None.

    A leap second (``23:59:60Z``) is the instant after it, the next minute's start: POSIX time
    has no leap seconds. A time outside years 1-9999 in UTC is refused: the ``autoUpload``
    property could not say it.

    :raise InvalidRequest: for anything else, naming ``name``.
    """
    if value is None:
        return None
    where = f"invalid 'activate' operation parameters: {name}"
    match = _RFC3339.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise InvalidRequest(f"{where}: not an RFC 3339 time (2027-03-01T10:00:00Z): {shown_repr(value)}")
    date, minute, second, fraction, offset = match.groups()
    if offset is None:
        raise InvalidRequest(f"{where}: a time zone offset is required (Z or +HH:MM): {shown_repr(value)}")
    leap = second == "60"
    try:
        moment = datetime.fromisoformat(f"{date}T{minute}:{'59' if leap else second}{fraction or ''}"
                                        f"{'+00:00' if offset in 'Zz' else offset}")
    except ValueError as error:
        raise InvalidRequest(f"{where}: not an RFC 3339 time (2027-03-01T10:00:00Z): {shown_repr(value)}") from error
    try:
        moment = moment.astimezone(timezone.utc) + timedelta(seconds=1 if leap else 0)
    except OverflowError as error:
        raise InvalidRequest(f"{where}: {shown_repr(value)} is before year 1 or after year 9999 in UTC") from error
    return moment.timestamp()


def error_body(status: int, code: str, message: str) -> dict[str, Any]:
    """Kanto's ``ErrorResponse``."""
    return {"status": status, "error": code, "message": message}


def response(inbox: Inbox | None, status: int, error: dict[str, Any] | None) -> dict[str, Any]:
    """The answer to ``inbox``: a Ditto envelope on the outbox path when it came in one (as
    Kanto replies), else the bare error body (empty for 204)."""
    if inbox is None or inbox.envelope is None:
        return error or {}
    envelope = inbox.envelope
    raw_headers = envelope.get("headers")
    headers: dict[str, Any] = raw_headers if isinstance(raw_headers, dict) else {}
    reply_headers = {"content-type": "application/json"}
    if "correlation-id" in headers:
        reply_headers["correlation-id"] = headers["correlation-id"]
    return {"topic": envelope.get("topic"), "headers": reply_headers,
            "path": str(envelope["path"]).replace("/inbox/", "/outbox/", 1), "value": error, "status": status}


def outbox_request(device_id: str, tenant_id: str, feature_id: str, cid: str, options: dict[str, str]) -> dict[str, Any]:
    """The Ditto message asking the cloud where to put one file (Kanto's ``sendUploadRequest``).

    :param device_id: the gateway's device id (``namespace:name``).
    :param tenant_id: its tenant (replies go to ``command/<tenant>``).
    :param feature_id: the feature's id.
    :param cid: the file's correlation id.
    :param options: the request's options.
    """
    namespace, _, name = device_id.partition(":") if ":" in device_id else ("", "", device_id)
    return {
        "topic": f"{namespace}/{name}/things/live/messages/request",
        "headers": {"content-type": "application/json", "response-required": False,
                    "reply-to": f"command/{tenant_id}", "correlation-id": cid},
        "path": f"/features/{feature_id}/outbox/messages/request",
        "value": {"correlationId": cid, "options": options},
    }
