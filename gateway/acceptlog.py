"""Twisted's log lines about connections its listening ports could not take, throttled.

Out of file descriptors, a Twisted listening port closes each new connection as soon as it
is accepted and logs three lines for it (``EMFILE encountered; releasing reserved file
descriptor.``, ``EMFILE recovery: Closed socket from ...``, ``Re-reserving EMFILE recovery
file descriptor.``), or one (``Could not accept new connection (EMFILE)``): clients that
retry every second write tens of MB of log an hour. :class:`AcceptErrorLines` passes the
first of them, then one line per interval says how many it held back, and one says when
they stopped. :func:`twistd_observer` also leaves out the line Twisted's ``ClientService``
logs before each reconnect of a cloud link (``Scheduling retry N to connect <... object at
0x...> in D seconds.``): a line per attempt for as long as a cloud is down, when the link
says itself why it cannot connect (``gateway.links.mqtt``), and the lines Twisted's listening
ports log as they open and close (``LazySite starting on 8090``, ``(TCP Port 8090 Closed)``):
eight at every start, stop and configuration change, beside the gateway's own line for each
listener, and the two Twisted's HTTP client logs for each connection of an HTTP link
(``Starting factory _HTTP11ClientFactory(...)``, ``Stopping factory ...``). Every other event
goes through untouched.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import FilteringLogObserver, ILogFilterPredicate, ILogObserver, Logger, LogEvent, PredicateResult
from zope.interface import implementer

from gateway.twistdlog import twistd_log_target

#: Seconds between two lines saying how many of Twisted's lines were held back, at least.
ACCEPT_LOG_INTERVAL = 60.0

#: The ``log_format`` of the lines Twisted logs for a connection it could not take
#: (``twisted.internet.tcp``: its listening ports' accept loop, which unix sockets share, and
#: the reservation of the descriptor it frees to close such connections).
_FORMATS = frozenset({
    "EMFILE encountered; releasing reserved file descriptor.",
    "EMFILE recovery: Closed socket from {address}",
    "Re-reserving EMFILE recovery file descriptor.",
    "Could not accept new connection ({acceptError})",
    "Could not reserve EMFILE recovery file descriptor.",
})


def is_accept_error(event: LogEvent) -> bool:
    """Whether ``event`` is one of Twisted's lines about a connection it could not take."""
    return event.get("log_format") in _FORMATS and str(event.get("log_namespace", "")).startswith("twisted.internet.")


#: The ``log_format`` of the line ``ClientService`` logs before each reconnect.
_RETRY_FORMAT = "Scheduling retry {attempt} to connect {endpoint} in {delay} seconds."


@implementer(ILogFilterPredicate)
class RetryLines:
    """A ``FilteringLogObserver`` predicate that leaves out ``ClientService``'s line before
    each reconnect."""

    def __call__(self, event: LogEvent) -> PredicateResult:
        """``no`` for that line, ``maybe`` (pass) for every other event."""
        if event.get("log_format") == _RETRY_FORMAT and str(event.get("log_namespace", "")).startswith("twisted."):
            return PredicateResult.no
        return PredicateResult.maybe


#: The predicate :func:`twistd_observer` filters with.
without_retry_lines = RetryLines()

#: The ``log_namespace`` and ``log_format`` of the lines Twisted's HTTP client logs as each
#: connection of its pool opens and closes (an HTTP link's requests).
_CLIENT_FACTORY = "twisted.web.client._HTTP11ClientFactory"
_FACTORY_FORMATS = frozenset({"Starting factory {factory!r}", "Stopping factory {factory!r}"})


@implementer(ILogFilterPredicate)
class HTTPClientLines:
    """A ``FilteringLogObserver`` predicate that leaves out the two lines Twisted's HTTP
    client logs for each connection it opens (``Starting factory _HTTP11ClientFactory(<function
    ... at 0x...>, <HostnameEndpoint ...>)`` and ``Stopping factory ...``): two per request
    to a server that closes its connections (a proxy answering ``Connection: close``), two
    per retry of a cloud that fails, beside the link's own line saying why."""

    def __call__(self, event: LogEvent) -> PredicateResult:
        """``no`` for those lines, ``maybe`` (pass) for every other event."""
        if event.get("log_namespace") == _CLIENT_FACTORY and event.get("log_format") in _FACTORY_FORMATS:
            return PredicateResult.no
        return PredicateResult.maybe


#: Another predicate :func:`twistd_observer` filters with.
without_http_client_lines = HTTPClientLines()

#: What Twisted's listening ports log (through the legacy ``log.msg``) as they open and close:
#: ``<factory> starting on <port or 'path'>``, ``(TCP Port <port> Closed)``, ``(UNIX Port <path> Closed)``.
_PORT_LINE = re.compile(r"\w+( \(TLS\))? starting on (\d+|'.*')|\((TCP|UNIX|TLS) Port .+ Closed\)")


@implementer(ILogFilterPredicate)
class PortLines:
    """A ``FilteringLogObserver`` predicate that leaves out the lines Twisted's listening
    ports log as they open and close."""

    def __call__(self, event: LogEvent) -> PredicateResult:
        """``no`` for those lines, ``maybe`` (pass) for every other event."""
        if event.get("log_namespace") == "log_legacy" and _PORT_LINE.fullmatch(str(event.get("log_text", ""))):
            return PredicateResult.no
        return PredicateResult.maybe


#: The other predicate :func:`twistd_observer` filters with.
without_port_lines = PortLines()


@implementer(ILogObserver)
class AcceptErrorLines:
    """A log observer in front of ``observer`` that throttles :func:`is_accept_error` lines:
    the first of a run passes; each ``interval`` after it, one line says how many were held
    back meanwhile, while they go on; once an interval passes without any, one line says
    they stopped (when some were held back). Those lines come from the reactor thread (the
    listening ports), where the timer is set; other events, from any thread, only pass.

    :param observer: where the events go.
    :param clock: the reactor (the interval's timer).
    :param interval: seconds between two lines, at least.
    """

    def __init__(self, observer: ILogObserver, clock: IReactorTime, interval: float = ACCEPT_LOG_INTERVAL) -> None:
        self.observer = observer
        self.clock = clock
        self.interval = interval
        #: lines held back since the last line about them
        self.held = 0
        #: lines held back in this run
        self.held_in_run = 0
        self._timer: IDelayedCall | None = None
        # (its lines go through this observer, so that they reach ``observer`` as any other)
        self._log = Logger(namespace=__name__, observer=self)

    def __call__(self, event: LogEvent) -> None:
        """Pass ``event`` on, unless it is one of the lines held back."""
        if not is_accept_error(event):
            self.observer(event)
        elif self._timer is None:  # the first of a run
            self.observer(event)
            self._timer = self.clock.callLater(self.interval, self._interval_over)
        else:
            self.held += 1

    def _interval_over(self) -> None:
        held, self.held = self.held, 0
        if held:
            self.held_in_run += held
            self._timer = self.clock.callLater(self.interval, self._interval_over)
            self._log.warn("out of file descriptors? Twisted logged {count} more lines about connections it could"
                           " not accept in the last {interval:g} s (it closes them as soon as they are accepted);"
                           " held back, counted once per {interval:g} s while they go on", count=held,
                           interval=self.interval)
            return
        self._timer = None
        held_in_run, self.held_in_run = self.held_in_run, 0
        if held_in_run:
            self._log.info("Twisted's lines about connections it could not accept stopped ({count} held back in all)",
                           count=held_in_run)


def twistd_observer(server_options: Mapping[str, Any] | None, clock: IReactorTime) -> ILogObserver | None:
    """The observer twistd is to log to, for the application's ``ILogObserver`` component:
    the one twistd would make itself for its log target
    (:func:`gateway.twistdlog.twistd_log_target`: standard output, a ``--logfile`` path, a
    daemon's ``twistd.log``, ``--syslog``), behind :class:`AcceptErrorLines`, without the
    lines :func:`without_retry_lines`, :func:`without_port_lines` and
    :func:`without_http_client_lines` leave out.

    :param server_options: twistd's own options (the ``parent`` of the gateway's), or None
        when not run by twistd.
    :param clock: the reactor (its timers; its thread rotates a log file on SIGUSR1).
    :return: None where twistd's own choice stands (``--logger``; a daemon told to log to
        standard output, which twistd refuses), or when not run by twistd.
    """
    if server_options is None:
        return None
    target = twistd_log_target(server_options, clock)
    if target is None:
        return None
    filtered = FilteringLogObserver(target, [without_retry_lines, without_port_lines, without_http_client_lines])
    return AcceptErrorLines(filtered, clock)
