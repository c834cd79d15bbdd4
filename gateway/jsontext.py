"""Parsing JSON that comes from outside the code: whatever is wrong with it is a ValueError."""

from __future__ import annotations

import codecs
import datetime
import json
import math
import re
import sys
from typing import IO, Any, Collection, Iterator

from gateway.shown import shown_repr

#: The deepest nesting of objects and arrays that messages to the gateway may have (its
#: handlers recurse over what they take: ``copy.deepcopy`` and YAML's emitter run out of
#: stack a few hundred levels down, while ``json`` parses about a thousand).
MAX_NESTING = 100
#: A ``\\u`` escape of a UTF-16 surrogate: half of a pair (one character), or a lone one (none).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
#: Bytes :func:`members` reads from its file at a time (more when one value is longer).
READ_SIZE = 1 << 16
#: JSON's whitespace.
_SPACE = " \t\n\r"
_SPACES = re.compile(f"[{_SPACE}]*")
_DECODER = json.JSONDecoder()


class NotTextError(ValueError):
    """JSON holding a string that is not Unicode text (a lone surrogate): :func:`loads` refuses
    it as it refuses bytes that are no text (:class:`UnicodeDecodeError`), apart from JSON that
    is malformed, so that an answer can say which it was."""


def loads(data: str | bytes, *, strict: bool = False) -> Any:
    """``json.loads(data)``, with JSON nested deeper than Python's recursion limit refused
    as the :class:`ValueError` every other malformed text is (``json.loads`` raises
    :class:`RecursionError` for it), so a caller's ``except ValueError`` covers all bad input.

    A string that is not Unicode text is refused too: a lone surrogate, written as
    ``"\\ud800"`` or as its three UTF-8-like bytes (which ``json.loads`` decodes with
    ``surrogatepass``). It cannot be encoded again, so it failed far from here (a configuration
    change by the admin API was taken, and the gateway's reports then could not be published).

    With ``strict``, what ``json.loads`` takes beyond RFC 8259 is refused too: ``NaN``,
    ``Infinity`` and ``-Infinity``, a number too large for a float (``1e400``, which Python
    reads as infinity) or an integer of more digits than Python converts (it said ``use
    sys.set_int_max_str_digits()``), and a key given twice in one object (Python kept the last
    silently): a request's author learns of it, where the gateway would have acted on a value
    it could not write back as JSON, or on one of two it was given.

    :param data: the JSON text (bytes: UTF-8, UTF-16 or UTF-32, as ``json.loads`` detects).
    :param strict: refuse what RFC 8259 does not allow, as said above.
    :raises ValueError: ``data`` is not valid JSON, not text, or nested too deeply.
    """
    text = data.decode(json.detect_encoding(data)) if isinstance(data, bytes) else data
    hooks: dict[str, Any] = ({"parse_constant": _no_constant, "parse_float": _finite_float,
                              "parse_int": _convertible_int, "object_pairs_hook": _unique_keys} if strict else {})
    try:
        value = json.loads(text, **hooks)
    except RecursionError:
        raise ValueError("JSON nested too deeply to parse") from None
    if _SURROGATE_ESCAPE.search(text) is not None or not isinstance(data, bytes) and _has_surrogate(text):
        _check_text(value)
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON: a number is finite")


def _finite_float(text: str) -> float:
    number = float(text)
    if number in (math.inf, -math.inf):
        raise ValueError(f"the number {text[:40]} is too large (at most about 1.8e308)")
    return number


def _convertible_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:  # (JSON's digits: only past Python's limit on converting text)
        digits = len(text.lstrip("-"))
        raise ValueError(f"an integer of {digits} digits is too long"
                         f" (at most {sys.get_int_max_str_digits()})") from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for key, item in pairs:
        if key in value:
            raise ValueError(f"key {shown_repr(key)} given twice in one object")
        value[key] = item
    return value


def _has_surrogate(text: str) -> bool:
    if text.isascii():  # (most JSON: no copy of a large text to find out)
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _check_text(value: Any) -> None:
    """Refuse a parsed JSON value holding a string (a key too) that is not Unicode text.

    :raises NotTextError: for a lone surrogate.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str) and _has_surrogate(item):
            raise NotTextError(f"JSON string {item[:40]!r} holds a lone surrogate: it is not Unicode text")


def members(file: IO[bytes], arrays: Collection[str] = ()) -> Iterator[tuple[str, Any]]:
    """The members of the JSON object that ``file`` holds, as ``(key, value)`` in the file's
    order, each parsed when it is reached: what is held at once is one member (for a key in
    ``arrays``, one item of its array) and about :data:`READ_SIZE` bytes of text, never the
    whole text (a large state file's text and what it parses to were twice the file at once).

    The text is refused as :func:`loads` refuses it, each fault as a ValueError raised when it
    is reached (the members before it have been given already): bad syntax or a text cut
    short, bytes that are no text (UTF-8, UTF-16 or UTF-32, detected as :func:`loads` detects
    them), a lone surrogate, nesting too deep to parse, anything after the object. JSON that
    is no object is parsed whole, then refused: ``not a JSON object``.

    :param file: read from where it is, in binary; not closed.
    :param arrays: keys whose value, when it is an array, comes as an iterator of its items,
        each parsed as it is taken; what is left of it untaken is parsed and dropped before the
        next member comes.
    """
    text = _Text(file)
    if text.peek() != "{":
        text.value()
        text.end()
        raise ValueError("not a JSON object")
    text.pos += 1
    if text.peek() == "}":
        text.pos += 1
        text.end()
        return
    while True:
        if text.peek() != '"':
            raise text.error("Expecting property name enclosed in double quotes")
        key = text.value()
        text.take(":", "':' delimiter")
        if key in arrays and text.peek() == "[":
            items = _items(text)
            yield key, items
            for _ in items:
                pass
        else:
            yield key, text.value()
        if text.peek() == ",":
            text.pos += 1
            continue
        text.take("}", "',' delimiter")
        text.end()
        return


def _items(text: "_Text") -> Iterator[Any]:
    """The items of the array at ``text``'s position, each parsed when it is taken."""
    text.pos += 1
    if text.peek() == "]":
        text.pos += 1
        return
    while True:
        yield text.value()
        if text.peek() == ",":
            text.pos += 1
            continue
        text.take("]", "',' delimiter")
        return


class _Text:
    """The text of a binary file, decoded as it is read: :attr:`text` from :attr:`pos` on
    is what is not parsed yet, :attr:`parsed` the characters before :attr:`text` (dropped)."""

    def __init__(self, file: IO[bytes]) -> None:
        self._file = file
        head = file.read(4)  # (enough to tell UTF-8, UTF-16 and UTF-32 apart)
        self._decoder = codecs.getincrementaldecoder(json.detect_encoding(head))()
        self._ended = not head
        self.text = self._decoder.decode(head, final=self._ended)
        self.pos = 0
        self.parsed = 0
        self._longest = 0  # characters of the longest value parsed

    def more(self, at_least: int = 0) -> bool:
        """Read on, :data:`READ_SIZE` bytes or ``at_least`` if more, dropping what is parsed.

        :return: ``False`` at the end of the file (nothing more to read).
        """
        if self._ended:
            return False
        data = self._file.read(max(READ_SIZE, at_least))
        self._ended = not data
        chunk = self._decoder.decode(data, final=self._ended)  # (a character cut short at the end: a ValueError)
        self.parsed += self.pos
        self.text = self.text[self.pos:] + chunk
        self.pos = 0
        return not self._ended

    def peek(self) -> str:
        """The next character that is not whitespace, not taken (``""`` at the end of the file)."""
        while True:
            if self.pos < len(self.text) and self.text[self.pos] not in _SPACE:  # (most often: no regex)
                return self.text[self.pos]
            self.pos = _SPACES.match(self.text, self.pos).end()  # type: ignore[union-attr]  # (it matches "" too)
            if self.pos < len(self.text):
                return self.text[self.pos]
            if not self.more():
                return ""

    def take(self, char: str, what: str) -> None:
        """Take the next character (after whitespace), which must be ``char``.

        :raises ValueError: ``Expecting <what>`` when it is not.
        """
        if self.peek() != char:
            raise self.error(f"Expecting {what}")
        self.pos += 1

    def value(self) -> Any:
        """Parse the next value (after whitespace), reading on while it is cut short."""
        self.peek()
        # (values alike, the sessions of a state file: each is read whole before its first parse)
        if len(self.text) - self.pos < self._longest:
            self.more(self._longest - (len(self.text) - self.pos))
        while True:
            start = self.pos
            try:
                value, end = _DECODER.raw_decode(self.text, start)
            except json.JSONDecodeError as exc:
                # (cut short, or wrong: only the end of the file tells; the text read grows
                # by as much again each time, so a long value is parsed about twice, not once per read)
                if self.more(len(self.text) - start):
                    continue
                raise ValueError(f"{exc.msg}: char {self.parsed + exc.pos}") from None
            except RecursionError:
                raise ValueError("JSON nested too deeply to parse") from None
            if end == len(self.text) and self.more(len(self.text) - start):
                continue  # (a number may go on in what is not read yet)
            break
        if _SURROGATE_ESCAPE.search(self.text, start, end) is not None:
            _check_text(value)
        self._longest = max(self._longest, end - start)
        self.pos = end
        return value

    def end(self) -> None:
        """:raises ValueError: something but whitespace follows."""
        if self.peek():
            raise self.error("Extra data")

    def error(self, message: str) -> ValueError:
        """A syntax error at the current position, counted from the start of the file."""
        return ValueError(f"{message}: char {self.parsed + self.pos}")


def nesting(value: Any) -> int:
    """How deep objects and arrays nest in the parsed JSON ``value`` (a scalar: 0, ``{}``
    and ``[]``: 1, ``{"a": [1]}``: 2), counted without recursion: JSON that :func:`loads`
    takes may nest too deeply for the recursive code it is handed to (``copy.deepcopy``
    runs out of stack at a few hundred levels).

    :param value: what :func:`loads` returned.
    """
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in children)
    return deepest


#: The most unknown keys of an object that :func:`unknown_keys` names (the rest are counted).
NAMED_KEYS = 3


def unknown_keys(value: dict[str, Any], keys: Collection[str],
                 none: str = "this request takes none: send {} or no body") -> str | None:
    """Why the JSON object ``value`` sent as a request is refused for keys the request does
    not take (``None`` when it holds none): a typo must not be dropped silently. The first
    few unknown keys are named, cut as :func:`gateway.shown.shown` cuts a client's text, and
    then the keys the request takes: ``unknown key 'confirm_whithin' (known: changes,
    confirm_within)``.

    :param value: the request's body, an object.
    :param keys: the keys it may hold (none: it takes an empty object, or no body).
    :param none: what the parenthesis says when ``keys`` is empty.
    """
    unknown = [key for key in value if key not in keys]
    if not unknown:
        return None
    named = ", ".join(shown_repr(key) for key in unknown[:NAMED_KEYS])
    more = f" and {len(unknown) - NAMED_KEYS} more" if len(unknown) > NAMED_KEYS else ""
    known = f"known: {', '.join(sorted(keys))}" if keys else none
    return f"unknown key{'s' if len(unknown) > 1 else ''} {named}{more} ({known})"


def kind(value: Any, *, yaml: bool = False) -> str:
    """What a parsed JSON ``value`` is, in JSON's words, for an error that says what was sent
    instead of an object (``an array``, ``a string``, ``null``...), not Python's type names
    (``list``, ``str``, ``NoneType``).

    :param value: what :func:`loads` returned, or (with ``yaml``) what a YAML file holds.
    :param yaml: name it in a configuration's words instead (``a list``, ``a mapping``,
        ``empty (null)``, ``the boolean true``), YAML's own scalars among them (``a date``,
        ``binary data``).
    """
    if value is None:
        return "empty (null)" if yaml else "null"
    if isinstance(value, bool):
        # (in YAML, yes/on are true too: say what it was read as)
        word = "true" if value else "false"
        return f"the boolean {word}" if yaml else word
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list" if yaml else "an array"
    if isinstance(value, dict):
        return "a mapping" if yaml else "an object"
    # only YAML gives these (its timestamps, !!binary, !!set)
    if isinstance(value, datetime.datetime):
        return "a date and time"
    if isinstance(value, datetime.date):
        return "a date"
    if isinstance(value, bytes):
        return "binary data"
    return "a set"


def given(value: Any) -> str:
    """What a configuration error says was given instead of what a key takes: text and
    numbers with their value (``the text '7'``, ``the number 7``; text cut as
    :func:`gateway.shown.shown` cuts it), a date as written, anything else as :func:`kind`
    names it in YAML's words (``a list``, ``empty (null)``, ``the boolean true``).

    :param value: a value of a YAML file (or of JSON, for a configuration sent remotely).
    """
    if isinstance(value, str):
        return f"the text {shown_repr(value)}"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"the number {shown_repr(value)}"
    if isinstance(value, datetime.date):
        return f"the {kind(value, yaml=True)[2:]} {value.isoformat()}"
    return kind(value, yaml=True)
