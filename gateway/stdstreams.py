"""The process's standard streams: text their encoding cannot hold is written escaped.

Under a locale that is not UTF-8 (``LC_ALL=C`` with ``PYTHONUTF8=0``, a Latin-1 ``LANG``)
stdout's encoding holds only part of Unicode, and its ``strict`` or ``surrogateescape``
errors raise ``UnicodeEncodeError`` for the rest: twistd's ``--logfile=-`` observer then lost
each log line holding such text (an upload id the cloud sent), and ``gatewayctl`` ended with
a traceback. Python's stderr already writes such text as ``\\xe9`` escapes; stdout does the
same once :func:`escape_unencodable` has reconfigured it.
"""

from __future__ import annotations

import sys


def escape_unencodable() -> None:
    """Have ``sys.stdout`` and ``sys.stderr`` write what their encoding cannot hold as
    backslash escapes (a stream that cannot be reconfigured, a test's ``StringIO``, is left as
    it is: it takes any text)."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")
