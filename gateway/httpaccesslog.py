"""The access log of the gateway's HTTP servers (admin API, ingest, ``/metrics``): each line
dated when it is written, with no timer.

twisted.web's ``HTTPFactory`` keeps the date of its access log lines in a string that it
refreshes every second, from ``startFactory`` until ``stopFactory``, whether it logs lines
or not: on an idle gateway that timer was a wake-up a second for each HTTP server listening
(``/metrics`` from the start, the admin API and the ingest from their first request, then
for good), the most frequent one left (docs/benchmarks.md, idle gateway).
:class:`DatedWhenLogged` starts no timer; a line, when there is one, is dated as it is written.
A routine read (a GET or HEAD answered below 400) is no line at all unless
``gateway.log_level`` is ``debug`` (:func:`log_routine_reads`): polled, it filled the log.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.logger import Logger
from twisted.python import log as legacy_log
from twisted.web.http import datetimeToLogString

from gateway.browserguard import refused_here

#: Formats one access log line: ``(date as twisted.web writes it, request) -> line``.
AccessLine = Callable[[str, Any], str]

#: The routine reads' lines (a GET or HEAD answered below 400), at debug level.
_reads_log = Logger(namespace=__name__)
#: Whether routine reads are logged (``gateway.log_level: debug``): :func:`log_routine_reads`.
_routine_reads = {"logged": False}


def log_routine_reads(logged: bool) -> None:
    """Log each routine read (a GET or HEAD answered below 400), at debug level, or none
    (the default): ``gatewayctl`` and a Prometheus scraping ``/metrics`` poll the admin API,
    and each request was an info line. Process-wide, as the libraries' log level is: set
    from ``gateway.log_level`` (``debug``) at start and at each configuration change."""
    _routine_reads["logged"] = logged


def routine_read(request: Any) -> bool:
    """Whether ``request`` read without changing anything and was answered without error."""
    return request.method in (b"GET", b"HEAD") and request.code < 400


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
        """Log one line for ``request``, dated now (nothing without :attr:`access_line`): a
        change or an error at info level, as twisted.web does, a routine read only at debug
        level, and only when :func:`log_routine_reads` says so; a cross-site browser request
        refused is no line either: its guard's line, at most one per interval, stands for it
        (:class:`~gateway.browserguard.BrowserGuard`)."""
        if self.access_line is None or refused_here(request):
            return
        if not routine_read(request):
            legacy_log.logfile.write(self.access_line(datetimeToLogString(self.reactor.seconds()), request) + "\n")
        elif _routine_reads["logged"]:
            _reads_log.debug("{access_line}",
                             access_line=self.access_line(datetimeToLogString(self.reactor.seconds()), request))
