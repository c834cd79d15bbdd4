"""The Exosite device API's wire forms: form-encoded bodies, aliases, CIK and VMS headers."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, quote, urlencode

from gateway.asciidigits import ascii_decimal
from gateway.errors import GatewayError

#: A CIK is 40 hexadecimal characters.
_CIK = re.compile(r"^[0-9a-fA-F]{40}\Z")
#: What an alias may not contain: it becomes one MQTT topic level.
_BAD_ALIAS = re.compile(r"[/+#\x00-\x1f\x7f]")
#: A ``%`` that does not begin a percent escape (``%ZZ``, a final ``%``): no form encoding
#: writes one (a ``%`` itself is ``%25``).
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
MAX_ALIAS = 256


class FormError(GatewayError):
    """A request the device API would refuse: the message says what is wrong."""


def check_alias(alias: str) -> str:
    """``alias`` if it can be a topic level.

    :raises FormError: for an empty, too long alias or one with ``/``, ``+``, ``#`` or control characters.
    """
    if not alias:
        raise FormError("empty alias")
    if len(alias) > MAX_ALIAS:
        raise FormError(f"alias longer than {MAX_ALIAS} characters")
    if _BAD_ALIAS.search(alias):
        raise FormError(f"alias {alias!r} contains '/', '+', '#' or a control character")
    return alias


def parse_form(body: bytes, charset: str = "utf-8") -> list[tuple[str, str]]:
    """The ``name=value`` pairs of an ``application/x-www-form-urlencoded`` body, in order.

    :param charset: what the percent-escaped bytes are in (the request's declared charset,
        checked by :func:`text_charset`).
    :raises FormError: for a body that is not in ``charset`` or not form-encoded (a ``%`` that
        begins no escape too: ``a=%ZZ`` was stored as the text ``%ZZ``), or is empty.
    """
    try:
        text = _escaped(body.decode("ascii"))
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=True, encoding=charset, errors="strict")
    except UnicodeDecodeError:
        name = "UTF-8" if charset == "utf-8" else charset
        raise FormError(f"the body is not form-encoded {name}") from None
    except ValueError as exc:
        raise FormError(f"malformed form body: {exc}") from None
    if not pairs:
        raise FormError("empty body: nothing to write")
    return pairs


def text_charset(name: str) -> str | None:
    """``name`` if Python decodes text in that charset (``latin-1``, ``windows-1252``,
    ``UTF-8``), else ``None`` (an unknown name, or a codec that is no text encoding)."""
    try:
        b"\0\0\0\0".decode(name)  # (not b"": Python decodes that without looking the codec up)
    except LookupError:
        return None
    except ValueError:  # (a text codec all the same)
        pass
    return name


def _escaped(text: str) -> str:
    """``text`` if each of its ``%`` begins a percent escape.

    :raises ValueError: for one that does not.
    """
    bad = _BAD_ESCAPE.search(text)
    if bad is not None:
        raise ValueError(f"{text[bad.start():bad.start() + 3]!r} is not a percent escape (a '%' is sent as %25)")
    return text


def parse_write(body: bytes, max_aliases: int, charset: str = "utf-8") -> list[tuple[str, str]]:
    """The ``alias=value`` pairs of a write.

    :param charset: as :func:`parse_form`'s.
    :raises FormError: for a malformed body, a bad alias or too many aliases.
    """
    pairs = parse_form(body, charset)
    if len(pairs) > max_aliases:
        raise FormError(f"{len(pairs)} aliases in one write; at most {max_aliases}")
    for alias, _ in pairs:
        check_alias(alias)
    return pairs


def parse_record(body: bytes, max_values: int, charset: str = "utf-8") -> list[tuple[float, str]]:
    """The ``timestamp=value`` pairs of a record request (epoch seconds).

    :param charset: as :func:`parse_form`'s.
    :raises FormError: for a malformed body, a timestamp that is not a non-negative number,
        or too many values.
    """
    pairs = parse_form(body, charset)
    if len(pairs) > max_values:
        raise FormError(f"{len(pairs)} values in one record request; at most {max_values}")
    out = []
    for stamp, value in pairs:
        if not ascii_decimal(stamp):  # (float() read ١٧٠٠, 1e9, 1_0 and " 5" too)
            raise FormError(f"timestamp {stamp!r} is not a number")
        when = float(stamp)
        if not 0 <= when < 1e11:
            raise FormError(f"timestamp {stamp!r} is out of range")
        out.append((when, value))
    return out


def parse_read_query(query: bytes) -> list[str]:
    """The aliases a read names (``?a&b``; ``?a=&b=`` too).

    :raises FormError: for no alias or a bad one.
    """
    try:
        text = _escaped(query.decode("ascii"))
        names = [name for name, _ in parse_qsl(text, keep_blank_values=True, encoding="utf-8", errors="strict")]
    except (UnicodeDecodeError, ValueError):
        raise FormError("malformed query") from None
    if not names:
        raise FormError("name at least one alias to read: ?alias1&alias2")
    return [check_alias(name) for name in names]


def valid_cik(cik: str) -> bool:
    """Whether ``cik`` looks like a CIK (40 hex characters)."""
    return bool(_CIK.match(cik))


def parse_vms(header: str) -> tuple[str, str, str]:
    """``(vendor, model, serial)`` from an ``X-Exosite-VMS`` header.

    :raises FormError: unless it is three non-empty words.
    """
    words = header.split()
    if len(words) != 3:
        raise FormError("X-Exosite-VMS must be '<vendor> <model> <serial>'")
    return words[0], words[1], words[2]


def encode_values(values: list[tuple[str, str]]) -> bytes:
    """A form-encoded body of ``alias=value`` pairs."""
    return urlencode(values, quote_via=quote).encode("ascii")
