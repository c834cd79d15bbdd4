"""The process's standard streams: text their encoding cannot hold is written escaped.

Under a locale that is not UTF-8 (``LC_ALL=C`` with ``PYTHONUTF8=0``, a Latin-1 ``LANG``)
stdout's encoding holds only part of Unicode, and its ``strict`` or ``surrogateescape``
errors raise ``UnicodeEncodeError`` for the rest: twistd's ``--logfile=-`` observer then lost
each log line holding such text (an upload id the cloud sent), and ``gatewayctl`` ended with
a traceback. Python's stderr already writes such text as ``\\xe9`` escapes; stdout does the
same once :func:`escape_unencodable` has reconfigured it.
"""

from __future__ import annotations

import codecs
import sys

#: The name of the error handler :func:`escape_unencodable` gives the streams.
ESCAPED = "gateway.escaped"


def escaped_bytes(error: UnicodeError) -> tuple[str, int]:
    """An error handler: what an encoding cannot hold as backslash escapes, a byte of a file
    name or argument that Python's file system encoding could not decode (a lone surrogate
    ``\\udcc3``) as that byte (``\\xc3``): ``/tmp/r\\xc3\\xa9pertoire`` shows the UTF-8 of
    ``répertoire`` where ``backslashreplace`` wrote ``r\\udcc3\\udca9pertoire``.

    :param error: the ``UnicodeEncodeError`` of the text that could not be encoded.
    """
    if not isinstance(error, UnicodeEncodeError):
        raise error
    text = error.object[error.start:error.end]
    return "".join(f"\\x{ord(char) - 0xDC00:02x}" if 0xDC80 <= ord(char) <= 0xDCFF
                   else char.encode("ascii", "backslashreplace").decode("ascii") for char in text), error.end


codecs.register_error(ESCAPED, escaped_bytes)


def escape_unencodable() -> None:
    """Have ``sys.stdout`` and ``sys.stderr`` write what their encoding cannot hold as
    backslash escapes, the undecodable bytes of a name as those bytes (:func:`escaped_bytes`;
    a stream that cannot be reconfigured, a test's ``StringIO``, is left as it is: it takes
    any text)."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors=ESCAPED)
