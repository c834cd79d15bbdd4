"""How the gateway repeats what it was sent in an answer or a log line: bounded.

An error about a request names the part that is wrong; a client's megabyte of junk there is
not sent back (twice, in the message and a field) nor logged whole. Text up to
:data:`SHOWN_CHARS` characters is repeated whole, longer text as its first characters and its
length: ``xxx... (1000000 characters)``.
"""

from __future__ import annotations

import re
import reprlib
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:
    from twisted.web.http_headers import Headers

#: The most characters of a client's text that an answer or a log line repeats.
SHOWN_CHARS = 100
#: The most characters of a dotted key path of the configuration that an answer or a log line
#: repeats whole (:func:`shown_key_path`), and the longest a configuration change may name: far
#: above any real one, of which many pass 100 (a link's name alone may have 95 characters).
KEY_PATH_CHARS = 256

#: A URL's scheme (group 1, ``scheme://``) and user information (group 2, ``user:password``,
#: up to the authority's last ``@``), which :func:`shown_url` and :func:`url_error_shown` leave
#: out: a token is often the user name.
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)([^/?#]*)@")

#: A value of another kind than JSON's and Python's plain containers (a date YAML read...) as
#: :func:`shown_repr` writes it when Python's ``repr`` cannot write the whole: cut short.
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = SHOWN_CHARS
#: The brackets Python writes a container in.
_BRACKETS: dict[type, tuple[str, str]] = {list: ("[", "]"), tuple: ("(", ")"), dict: ("{", "}")}
#: What :func:`_pieces` has on its stack: text to write, a value to write, a container left.
_TEXT, _VALUE, _LEFT = range(3)


def shown(text: str) -> str:
    """``text`` as an answer or a log line repeats it: whole up to :data:`SHOWN_CHARS`
    characters, else their first ones and how long it was.

    :param text: what a client sent (a name, a correlation id, a path).
    """
    if len(text) <= SHOWN_CHARS:
        return text
    return f"{text[:SHOWN_CHARS]}... ({len(text)} characters)"


def shown_bytes(data: bytes, limit: int) -> str:
    """Bytes of a request's head or framing as an answer quotes them: in quotes, their first
    ``limit`` bytes with control and non-ASCII bytes escaped as Python writes them (``\\x00``),
    ``...`` before the closing quote when there were more.

    :param data: what the client sent (a request line, a chunk size).
    :param limit: the most bytes shown.
    """
    text = repr(data[:limit])[2:-1]  # (b'...' -> ..., its control and non-ASCII bytes escaped)
    return "'" + text + ("...'" if len(data) > limit else "'")


def shown_key_path(path: str) -> str:
    """A dotted key path of the configuration (``links.links.hono.endpoint``) as an error or a
    report names it: whole up to :data:`KEY_PATH_CHARS` characters, so that the key at its end
    is seen, else cut as :func:`shown` cuts text; a character that is not printable (a newline,
    an escape) is escaped (:func:`escaped`), as the quoted part of an error escapes it, so the
    path cannot break or forge a line of an answer or a log.

    :param path: a key path a client or a configuration file gave.
    """
    return escaped(path if len(path) <= KEY_PATH_CHARS else shown(path))


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
    :func:`shown` cuts it (quoted, control characters escaped), anything else (a list where a
    string belongs...) as Python writes it, whole up to :data:`SHOWN_CHARS` characters, else
    its first ones and how long it is (``[1, 1, 1, ... (240 characters)``, 100 characters before
    the dots).

    A value nested deeper than Python's ``repr`` goes (JSON a thousand levels deep) is written
    without recursion, as it would write it (a container inside itself as ``[...]``).

    :param value: a value decoded from a client's JSON (or from YAML).
    """
    if isinstance(value, str):
        return repr(shown(value))
    try:
        text = repr(value)  # (C's speed: a megabyte of JSON in milliseconds)
    except (RecursionError, ValueError):  # (JSON nested deeper than it goes; an int too long)
        return _walked_repr(value)
    return text if len(text) <= SHOWN_CHARS else f"{text[:SHOWN_CHARS]}... ({len(text)} characters)"


def _walked_repr(value: Any) -> str:
    """:func:`shown_repr` of a value Python's ``repr`` does not write, written in pieces."""
    head: list[str] = []
    kept = length = 0
    for piece in _pieces(value):
        if kept <= SHOWN_CHARS:
            head.append(piece[:SHOWN_CHARS + 1 - kept])
            kept += len(head[-1])
        length += len(piece)
    text = "".join(head)
    return text if length <= SHOWN_CHARS else f"{text[:SHOWN_CHARS]}... ({length} characters)"


def _pieces(value: Any) -> Iterator[str]:
    """``repr(value)`` in pieces, in order, walked with a stack of its own."""
    inside: set[int] = set()  # the containers being written (a path from the top)
    stack: list[tuple[int, Any]] = [(_VALUE, value)]
    while stack:
        kind, item = stack.pop()
        if kind == _TEXT:
            yield item
        elif kind == _LEFT:
            inside.discard(item)
        elif type(item) not in _BRACKETS:
            yield _scalar(item)
        elif id(item) in inside:
            opening, closing = _BRACKETS[type(item)]
            yield f"{opening}...{closing}"
        else:
            inside.add(id(item))
            opening, closing = _BRACKETS[type(item)]
            parts: list[tuple[int, Any]] = [(_TEXT, opening)]
            for index, member in enumerate(item.items() if type(item) is dict else item):
                if index:
                    parts.append((_TEXT, ", "))
                if type(item) is dict:
                    parts += [(_VALUE, member[0]), (_TEXT, ": "), (_VALUE, member[1])]
                else:
                    parts.append((_VALUE, member))
            if type(item) is tuple and len(item) == 1:
                parts.append((_TEXT, ","))
            parts += [(_TEXT, closing), (_LEFT, id(item))]
            stack.extend(reversed(parts))


def _scalar(value: Any) -> str:
    """A value that is no list, tuple or dict, as Python writes it (another kind cut short)."""
    if value is None or type(value) in (str, bool, float):
        return repr(value)
    if type(value) is int:
        try:
            return repr(value)
        except ValueError:  # (more digits than Python writes: sys.set_int_max_str_digits)
            return f"<an integer of {value.bit_length()} bits>"
    return _REPR.repr(value)


def shown_url(url: str) -> str:
    """``url`` as a message or a log line names it: without its query and fragment (a
    presigned URL's signature, a SAS) nor its user information (a user name and password),
    cut as :func:`shown` cuts text (read as text, since the URL may be one
    :func:`~urllib.parse.urlsplit` refuses).

    :param url: a URL the gateway was given (an upload's target, an artifact to download).
    """
    return shown(_USERINFO.sub(r"\1", re.split(r"[?#]", url, maxsplit=1)[0]))


def shown_location(headers: Headers) -> str | None:
    """The ``Location`` of an HTTP answer (a redirect's, which the gateway does not follow) as a
    message names it (:func:`shown_url`: a redirect to a presigned URL carries its signature);
    ``None`` when the answer has none.

    :param headers: the answer's headers.
    """
    location = (headers.getRawHeaders(b"location") or [b""])[0].decode("latin-1")
    return shown_url(location) if location else None


def url_error_shown(url: str, error: ValueError) -> str:
    """Why ``url`` cannot be parsed (``urlsplit``'s, hyperlink's, idna's error), as a message
    repeats it: without the URL's user information, which such an error may quote (``netloc
    'user:password@host' contains invalid characters under NFKC normalization``), cut as
    :func:`shown` cuts text.

    :param url: the URL refused.
    :param error: what refused it.
    """
    text = str(error)
    userinfo = _USERINFO.match(url)
    if userinfo is not None:
        text = text.replace(userinfo.group(2) + "@", "")
    return shown(text)
