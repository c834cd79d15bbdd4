"""A reader of the libconfig syntax subset SWUpdate's ``sw-description`` uses.

Groups ``{ name = value; ... }``, lists ``( ... )``, arrays ``[ ... ]``, strings (with
escapes; adjacent strings are joined), integers (decimal, hex, ``L`` suffix), floats,
booleans, ``#``, ``//`` and ``/* */`` comments; ``=`` or ``:`` between a name and its
value; ``;`` or ``,`` after a setting (optional at the end). ``@include`` is refused: a
bundle's description must stand alone.

Written here rather than taken from PyPI: the one pure-Python reader there (``libconf``)
has not had a release since 2019.
"""

from __future__ import annotations

import re
from typing import Any

from gateway.errors import UpdateError


class LibconfigError(UpdateError):
    """The text is not valid libconfig (the message says where: line and column)."""


_TOKEN = re.compile(r"""
    (?P<space>\s+|\#[^\n]*|//[^\n]*|/\*.*?\*/)
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<float>[-+]?(?:\d+\.\d*|\.\d+|\d+(?=[eE]))(?:[eE][-+]?\d+)?)
  | (?P<hex>0[xX][0-9a-fA-F]+L{0,2})
  | (?P<int>[-+]?\d+L{0,2})
  | (?P<bool>(?i:true|false)\b)
  | (?P<name>[A-Za-z*][-A-Za-z0-9_*]*)
  | (?P<punct>[=:;,{}()\[\]])
""", re.VERBOSE | re.DOTALL | re.ASCII)  # (ASCII: libconfig's numbers; int() reads ٣ too)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "\\": "\\", '"': '"'}
#: The deepest nesting of groups, lists and arrays read (the parser recurses: a bundle's
#: description nested thousands deep would exhaust its stack; SWUpdate's need a handful).
MAX_NESTING = 64


def _unescape(body: str) -> str:
    out, i = [], 0
    while i < len(body):
        c = body[i]
        if c == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            if nxt == "x" and re.fullmatch(r"[0-9a-fA-F]{2}", body[i + 2:i + 4]):
                out.append(chr(int(body[i + 2:i + 4], 16)))
                i += 4
                continue
            out.append(_ESCAPES.get(nxt, "\\" + nxt))
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[tuple[str, str, int]] = []
        pos = 0
        while pos < len(text):
            if text.startswith("@include", pos):
                raise LibconfigError(f"{self._where(pos)}: @include is not supported")
            match = _TOKEN.match(text, pos)
            if match is None:
                raise LibconfigError(f"{self._where(pos)}: unexpected {text[pos]!r}")
            kind = match.lastgroup or ""
            if kind != "space":
                self.tokens.append((kind, match.group(), pos))
            pos = match.end()
        self.i = 0
        self.depth = 0

    def _where(self, pos: int) -> str:
        line = self.text.count("\n", 0, pos) + 1
        column = pos - (self.text.rfind("\n", 0, pos) + 1) + 1
        return f"line {line} column {column}"

    def peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, *values: str) -> tuple[str, str, int]:
        token = self.peek()
        if token is None:
            raise LibconfigError(f"unexpected end of text, expected {' or '.join(values) or 'a value'}")
        if values and token[1] not in values:
            raise LibconfigError(f"{self._where(token[2])}: expected {' or '.join(values)}, found {token[1]!r}")
        self.i += 1
        return token

    def settings(self, end: str | None) -> dict[str, Any]:
        group: dict[str, Any] = {}
        while True:
            token = self.peek()
            if token is None or (end is not None and token[1] == end):
                if token is None and end is not None:
                    raise LibconfigError(f"unexpected end of text, expected {end!r}")
                return group
            kind, name, pos = self.take()
            if kind != "name":
                raise LibconfigError(f"{self._where(pos)}: expected a setting name, found {name!r}")
            self.take("=", ":")
            if name in group:
                raise LibconfigError(f"{self._where(pos)}: {name!r} is set twice")
            group[name] = self.value()
            nxt = self.peek()
            if nxt is not None and nxt[1] in (";", ","):
                self.i += 1

    def sequence(self, end: str) -> list[Any]:
        items: list[Any] = []
        while True:
            token = self.peek()
            if token is not None and token[1] == end:
                self.i += 1
                return items
            items.append(self.value())
            token = self.take(",", end)
            if token[1] == end:
                return items

    def value(self) -> Any:
        kind, text, pos = self.take()
        if kind == "string":
            parts = [_unescape(text[1:-1])]
            while (token := self.peek()) is not None and token[0] == "string":
                parts.append(_unescape(token[1][1:-1]))
                self.i += 1
            return "".join(parts)
        if kind in ("int", "hex"):
            try:
                return int(text.rstrip("L"), 10 if kind == "int" else 16)
            except ValueError:  # (more digits than int() takes: sys.get_int_max_str_digits())
                raise LibconfigError(f"{self._where(pos)}: the integer {text[:20]}... is too long") from None
        if kind == "float":
            return float(text)
        if kind == "bool":
            return text.lower() == "true"
        if text in ("{", "(", "["):
            if self.depth == MAX_NESTING:
                raise LibconfigError(f"{self._where(pos)}: nested deeper than {MAX_NESTING} levels")
            self.depth += 1
            if text == "{":
                value: Any = self.settings("}")
                self.take("}")
            else:
                value = self.sequence(")" if text == "(" else "]")
            self.depth -= 1
            return value
        raise LibconfigError(f"{self._where(pos)}: expected a value, found {text!r}")


def loads(text: str) -> dict[str, Any]:
    """Parse libconfig text into dicts (groups), lists (lists and arrays) and scalars.

    :param text: the configuration text.
    :raises LibconfigError: naming the line and column of the first error.
    """
    parser = _Parser(text)
    return parser.settings(None)
