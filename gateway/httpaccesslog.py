"""The access log of the gateway's HTTP servers (admin API, ingest, ``/metrics``): each line
dated when it is written, with no timer.

twisted.web's ``HTTPFactory`` keeps the date of its access log lines in a string that it
refreshes every second, from ``startFactory`` until ``stopFactory``, whether it logs lines
or not: on an idle gateway that timer was a wake-up a second for each HTTP server listening
(``/metrics`` from the start, the admin API and the ingest from their first request, then
for good), the most frequent one left (docs/benchmarks.md, idle gateway).
:class:`DatedWhenLogged` starts no timer; a line, when there is one, is dated as it is written.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.python import log as legacy_log
from twisted.web.http import datetimeToLogString

#: Formats one access log line: ``(date as twisted.web writes it, request) -> line``.
AccessLine = Callable[[str, Any], str]


class DatedWhenLogged:
    """Mixin for a twisted.web ``HTTPFactory`` (or ``Site``); put it before the factory among
    the bases. Its lines go where twisted.web's go (Twisted's log, ``twisted.python.log``).

    :ivar access_line: formats each line; ``None`` (the default): no access log.
    """

    access_line: AccessLine | None = None
    reactor: Any  # the factory's clock (``HTTPFactory(reactor=...)``)

    def startFactory(self) -> None:
        """No timer to start and no file to open."""

    def stopFactory(self) -> None:
        """No timer to stop and no file to close."""

    def log(self, request: Any) -> None:
        """Log one line for ``request``, dated now (nothing without :attr:`access_line`)."""
        if self.access_line is not None:
            legacy_log.logfile.write(self.access_line(datetimeToLogString(self.reactor.seconds()), request) + "\n")
