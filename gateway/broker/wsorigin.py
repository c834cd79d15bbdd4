"""Which browser pages a WebSocket listener (``type: ws``) takes: the ``Origin`` of an opening
handshake against the listener's ``allowed_origins``.

Local topics drive the gateway (installs, app commands, its configuration), so a web page the
operator opens must not connect to ``ws://127.0.0.1:PORT/`` and publish there. A browser names
the page in ``Origin`` (``Sec-WebSocket-Origin`` in RFC 6455's drafts). A handshake without
one is not a browser's (paho-mqtt, aiomqtt, a Node MQTT.js) and is always taken. One with an
``Origin`` is taken when that origin's host is the listener's own host as the request's ``Host``
names it (any scheme and port: a dashboard on ``http://127.0.0.1:8080`` connecting to
``ws://127.0.0.1:9001``), or when it is listed; ``*`` takes any. This is no access control:
any program that is not a browser can send any ``Origin``, or none (the auth plugins are).
"""

from __future__ import annotations

from typing import Any, Iterable

from gateway.browserguard import origin_parts
from gateway.shown import shown

#: The entry of ``allowed_origins`` that takes every origin.
ANY_ORIGIN = "*"
#: The origin of a page opened from a file (or a sandboxed one): an entry of its own.
NULL_ORIGIN = "null"
#: The headers that name a browser page's origin (RFC 6455's, and its drafts').
ORIGIN_HEADERS = (b"origin", b"sec-websocket-origin")


def entry_problem(entry: Any) -> str | None:
    """What is wrong with ``entry`` as an item of ``allowed_origins``, or None.

    :param entry: one item of the list, as the configuration holds it.
    """
    if entry in (ANY_ORIGIN, NULL_ORIGIN):
        return None
    # (urlsplit drops tabs and newlines: "http://a\nb" would parse as http://ab)
    parts = (origin_parts(entry) if isinstance(entry, str) and entry.isascii() and entry.isprintable()
             and " " not in entry else None)
    if parts is not None and parts[2] != 0:  # (no page is served from port 0: no browser sends it)
        return None
    return (f"must be scheme://host[:port] (http or https, a port from 1 to 65535, no path: the Origin a browser "
            f"sends, such as http://dashboard.example:8080), {ANY_ORIGIN!r} (any) or {NULL_ORIGIN!r} (pages opened "
            f"from files)")


def head_fields(head: bytes) -> list[tuple[bytes | None, list[bytes]]]:
    """The lines of an HTTP request head, grouped: the request line, then each header line with
    a folded header's continuation lines after it; each group with its header's name in lower
    case (None for the request line and for a line with no colon)."""
    fields: list[tuple[bytes | None, list[bytes]]] = []
    for line in head.split(b"\r\n"):
        if fields and line[:1] in (b" ", b"\t"):  # (a folded header's continuation)
            fields[-1][1].append(line)
            continue
        name, colon, _ = line.partition(b":")
        fields.append((name.strip().lower() if colon and fields else None, [line]))
    return fields


def head_headers(head: bytes) -> list[tuple[bytes, bytes]]:
    """The headers of an HTTP request head (its request line skipped): ``(name in lower case,
    value)``, a folded header's continuation lines joined to its value."""
    return [(name, b" ".join(part.strip() for part in (lines[0].partition(b":")[2], *lines[1:])))
            for name, lines in head_fields(head) if name is not None]


def without_origin(head: bytes) -> bytes:
    """An opening handshake's head without its ``Origin`` headers (and their continuation
    lines). The listener checks the origin itself (:class:`AllowedOrigins`), so autobahn need
    not read it; it refused with HTTP 400 one it could not parse, as paho-mqtt writes for an
    IPv6 address (``http://::1:8083``), and one sent twice."""
    return b"\r\n".join(line for name, lines in head_fields(head) if name not in ORIGIN_HEADERS for line in lines)


class AllowedOrigins:
    """One WebSocket listener's rule for the ``Origin`` of its handshakes (the module docstring).

    :param entries: the listener's ``allowed_origins``, checked (:func:`entry_problem`).
    """

    def __init__(self, entries: Iterable[str]) -> None:
        listed = tuple(entries)
        self._any = ANY_ORIGIN in listed
        self._null = NULL_ORIGIN in listed
        self._listed = {origin_parts(entry) for entry in listed} - {None}

    def refusal(self, head: bytes) -> str | None:
        """Why the handshake whose head is ``head`` is refused, or None when it is taken.

        :param head: the opening handshake's whole HTTP request head.
        """
        if self._any:
            return None
        headers = head_headers(head)
        origins = [value.decode("latin-1") for name, value in headers if name in ORIGIN_HEADERS]
        if not origins:
            return None
        host = next((value.decode("latin-1") for name, value in headers if name == b"host"), "")
        for origin in origins:
            if not self._takes(origin, host):
                where = f"host {shown(host)}" if host else "a request without Host"
                return f"Origin {shown(origin)} is not this listener's ({where}) nor in its allowed_origins"
        return None

    def _takes(self, origin: str, host: str) -> bool:
        """Whether ``origin`` is the host's (``Host``: ``host``) or listed."""
        if origin.lower() == NULL_ORIGIN:
            return self._null
        parts = origin_parts(origin)
        if parts is not None and parts in self._listed:
            return True
        if not host:
            return False
        own = origin_parts(f"http://{host}")
        if parts is not None and own is not None:
            return parts[1] == own[1]
        # paho-mqtt writes an IPv6 address without brackets, in Host and Origin alike
        # (``Host: ::1:8083``, ``Origin: http://::1:8083``): neither parses, but they are one
        scheme, sep, rest = origin.partition("://")
        return bool(sep) and scheme.lower() in ("http", "https") and rest.lower() == host.lower()
