"""What ``gatewayctl`` shows on a terminal of bytes it did not write (an app's log): the
control characters in them escaped, as ``systemctl status`` shows a unit's log lines, so
that an app cannot move the cursor, clear the screen, retitle the window or turn text around (an
escape sequence, a right-to-left override U+202E) on the operator's terminal."""

from __future__ import annotations

import codecs

from gateway.shown import escaped


def escaped_for_terminal(text: str) -> str:
    """``text`` with every character that is not printable but newline and tab (a control
    character, a format character such as a bidirectional override, a line separator) written
    as Python writes it (``\\x1b``, ``\\r``, ``\\u202e``): :func:`gateway.shown.escaped`, line by line.

    :param text: text from outside (an app's output).
    """
    return "\n".join("\t".join(escaped(part) for part in line.split("\t")) for line in text.split("\n"))


class TerminalText:
    """Turns a stream of bytes into what a terminal may be given: decoded as UTF-8 (a
    character split across two chunks is kept for the next; a byte that is no UTF-8 is written
    ``\\xNN``), control characters escaped (:func:`escaped_for_terminal`), encoded for the
    terminal (what its encoding cannot hold is escaped too).

    :param encoding: the terminal's encoding (``sys.stdout.encoding``).
    """

    def __init__(self, encoding: str) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("backslashreplace")
        self._encoding = encoding

    def feed(self, chunk: bytes) -> bytes:
        """The bytes to write for ``chunk``, the next part of the stream."""
        return self._encoded(self._decoder.decode(chunk))

    def end(self) -> bytes:
        """The bytes to write once the stream has ended (a character it cut short, escaped)."""
        return self._encoded(self._decoder.decode(b"", final=True))

    def _encoded(self, text: str) -> bytes:
        return escaped_for_terminal(text).encode(self._encoding, "backslashreplace")
