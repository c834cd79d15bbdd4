"""How the gateway repeats what it was sent in an answer or a log line: bounded.

An error about a request names the part that is wrong; a client's megabyte of junk there is
not sent back (twice, in the message and a field) nor logged whole. Text up to
:data:`SHOWN_CHARS` characters is repeated whole, longer text as its first characters and its
length: ``xxx... (1000000 characters)``.
"""

from __future__ import annotations

import re
import reprlib
from typing import Any

#: The most characters of a client's text that an answer or a log line repeats.
SHOWN_CHARS = 100

#: A URL's user information (``scheme://user:password@``, up to the authority's last ``@``),
#: what :func:`shown_url` leaves out of it: a token is often the user name.
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#]*@")

#: Other values (a list where a string belongs...) as Python writes them, a few items of each
#: container and a few levels deep: bounded, and without recursing through deep JSON.
_REPR = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = SHOWN_CHARS


def shown(text: str) -> str:
    """``text`` as an answer or a log line repeats it: whole up to :data:`SHOWN_CHARS`
    characters, else their first ones and how long it was.

    :param text: what a client sent (a name, a correlation id, a path).
    """
    if len(text) <= SHOWN_CHARS:
        return text
    return f"{text[:SHOWN_CHARS]}... ({len(text)} characters)"


def escaped(text: str) -> str:
    """``text`` with every character that is not printable (a control character such as a
    newline or a carriage return, a line separator, a lone surrogate) escaped as Python writes
    it (``\\n``, ``\\x1b``, ``\\u2028``), so that words from outside quoted in a log line keep
    it one line and cannot forge another.

    :param text: what a client or a server sent (a topic, an error's words).
    """
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def id_problem(value: str) -> str | None:
    """What keeps ``value`` from naming an operation (an update's or upload's correlation id),
    or ``None``: an id is repeated in every status of its operation and logged with each step,
    so it must be one that is shown whole, on one line: at most :data:`SHOWN_CHARS`
    characters, every one printable (no control character, line separator or lone surrogate).

    :param value: a non-empty string.
    """
    if len(value) > SHOWN_CHARS:
        return f"at most {SHOWN_CHARS} characters, not {len(value)}"
    if not value.isprintable():
        return f"printable characters only, not {shown_repr(value)}"
    return None


def shown_repr(value: Any) -> str:
    """``repr(value)`` as an error message quotes a client's value: a string as
    :func:`shown` cuts it (quoted, control characters escaped), anything else with a few of
    its items (``[1, 1, 1, 1, 1, 1, ...]``).

    :param value: a value decoded from a client's JSON.
    """
    return repr(shown(value)) if isinstance(value, str) else shown(_REPR.repr(value))


def shown_url(url: str) -> str:
    """``url`` as a message or a log line names it: without its query and fragment (a
    presigned URL's signature, a SAS) nor its user information (a user name and password),
    cut as :func:`shown` cuts text (read as text, since the URL may be one
    :func:`~urllib.parse.urlsplit` refuses).

    :param url: a URL the gateway was given (an upload's target, an artifact to download).
    """
    return shown(_USERINFO.sub(r"\1", re.split(r"[?#]", url, maxsplit=1)[0]))
