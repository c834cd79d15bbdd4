"""What text a configuration value or key may hold: never a NUL, and, unless a key says
otherwise, no control character.

No file name, process argument, environment entry, HTTP header or MQTT string holds a NUL
(U+0000): a value with one fails wherever the gateway hands it on, far from the
configuration. A control character (Unicode's ``Cc``: U+0001-U+001F, U+007F-U+009F; a
newline, a tab, ESC) has no place in a name, a path, a URL, a topic or an id: it splits a
header or a log line, MQTT says a topic should not hold one (§1.5.3), and one is most often
a YAML escape written by mistake (``"C:\\temp"`` holds a tab). Argument words, environment
values and payloads may hold them (their keys say so in their ``controls`` metadata).

Under a locale that is not UTF-8 (``LC_ALL=C`` with ``PYTHONUTF8=0``, a Latin-1 ``LANG``)
Python hands file names, process arguments and environment entries to the system in that
locale's encoding: text it cannot encode fails there (``'ascii' codec can't encode``), at
the start, at each start of a program, at each upload. It is refused in the configuration
instead, saying what to do. (In Python's UTF-8 mode, the default under the C locale, every
text can be encoded.)
"""

from __future__ import annotations

import codecs
import sys
import unicodedata
from typing import Any, Iterator


#: What to do when Python's file system encoding is not UTF-8, said after naming that encoding.
NOT_UTF8_LOCALE = ("(the locale is not UTF-8, or PYTHONUTF8=0): run the gateway with PYTHONUTF8=1 or under a "
                   "UTF-8 locale (LANG=C.UTF-8)")


def text_problem(value: str, controls: bool = False) -> str | None:
    """Why ``value`` cannot be a configuration string (``None`` when it can).

    :param controls: whether control characters other than NUL are allowed.
    """
    if "\0" in value:
        return f"must not hold a NUL character: {value!r}"
    if not controls:
        for char in value:
            if unicodedata.category(char) == "Cc":
                return f"must not hold a control character ({char!r}): {value!r}"
    return unencodable_problem(value)


def unencodable_problem(value: str) -> str | None:
    """Why ``value`` cannot be handed to the system under this process's locale (Python's
    file system encoding cannot encode it); ``None`` when it can, and always under UTF-8."""
    encoding = sys.getfilesystemencoding()
    if codecs.lookup(encoding).name == "utf-8":
        return None
    try:
        value.encode(encoding, sys.getfilesystemencodeerrors())
    except UnicodeEncodeError as error:
        return (f"holds {value[error.start]!r}: this system cannot pass it on: Python's file system encoding is "
                f"{encoding} {NOT_UTF8_LOCALE}")
    return None


def key_problem(key: str) -> str | None:
    """Why ``key`` cannot be a key of a configuration mapping (a name: no NUL, no control
    character); ``None`` when it can."""
    problem = text_problem(key)
    return None if problem is None else f"the key {problem}"


def nul_problems(data: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], str]]:
    """Every key and string in ``data`` (parsed YAML, walked whole) that holds a NUL, each as
    (its key path under ``path``, what is wrong); a key's own path ends with the key."""
    if isinstance(data, dict):
        for key, value in data.items():
            where = path + (str(key),)
            if isinstance(key, str) and "\0" in key:
                yield where, f"the key {text_problem(key, controls=True)}"
            else:
                yield from nul_problems(value, where)
    elif isinstance(data, list):
        for index, item in enumerate(data):
            yield from nul_problems(item, path + (str(index),))
    elif isinstance(data, str):
        problem = text_problem(data, controls=True)
        if problem is not None:
            yield path, problem
