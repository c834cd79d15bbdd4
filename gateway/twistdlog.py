"""The log observer twistd makes for its log target, made by the gateway so that it can filter it.

twistd logs to an ``ILogObserver`` component of its application, when there is one, instead
of the observer it would make itself for its options; so the gateway makes that observer
(standard output, a ``--logfile`` path or the daemon's ``twistd.log``, or ``--syslog``) as
twistd does, from the same public parts (``LogFile``, ``SyslogObserver``), puts its filters
in front, and hands the whole to twistd (:mod:`gateway.acceptlog`). Only ``--logger``, an
observer of the user's own, is left to twistd: twistd prefers it to the application's.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType
from typing import Any, Mapping

from twisted.logger import ILogObserver, LegacyLogObserverWrapper, Logger, textFileLogObserver
from twisted.python.logfile import LogFile

log = Logger()

#: The file twistd logs to when it runs as a daemon and no ``--logfile`` names one.
DAEMON_LOG_FILE = "twistd.log"


def twistd_log_target(server_options: Mapping[str, Any], reactor: Any) -> ILogObserver | None:
    """The observer twistd would log to with ``server_options``, made as twistd makes it.

    A log file is twistd's own kind (``LogFile``: rotated every 1,000,000 bytes into ``.1``,
    ``.2``, ...), rotated on SIGUSR1 as twistd does, unless something else already handles
    that signal. Without a file (standard output, syslog) a SIGUSR1 is one log line, not its
    default action (twistd's: the process ends at once, with no clean stop).

    :param server_options: twistd's own options (``nodaemon``, ``logfile``, ``syslog``,
        ``prefix``, ``logger``).
    :param reactor: the reactor (``IReactorThreads``), which rotates the file on SIGUSR1, on its
        own thread.
    :return: None for ``--logger`` (twistd takes it over any other) and for a daemon told to
        log to standard output (twistd refuses it itself: ``Daemons cannot log to stdout``).
    """
    if server_options.get("logger"):
        return None
    if server_options.get("syslog"):
        from twisted.python import syslog  # (imports the syslog module: not on every platform)

        legacy = syslog.SyslogObserver(server_options.get("prefix") or "").emit  # (a legacy observer, as it takes)
        _nothing_to_rotate(reactor, "syslog")
        return LegacyLogObserverWrapper(legacy)  # type: ignore[arg-type]
    logfile = server_options.get("logfile") or ""
    nodaemon = bool(server_options.get("nodaemon"))
    if logfile == "-" and not nodaemon:
        return None
    if logfile == "-" or (nodaemon and not logfile):
        _nothing_to_rotate(reactor, "standard output")
        return textFileLogObserver(sys.stdout)
    log_file = LogFile.fromFullPath(logfile or DAEMON_LOG_FILE)
    if not signal.getsignal(signal.SIGUSR1):  # (None or SIG_DFL: twistd's own test)

        def rotate(signum: int, frame: FrameType | None) -> None:
            reactor.callFromThread(log_file.rotate)

        signal.signal(signal.SIGUSR1, rotate)
    return textFileLogObserver(log_file)


def _nothing_to_rotate(reactor: Any, target: str) -> None:
    """Have a SIGUSR1 logged as one line, on the reactor's loop (a signal handler logs nothing:
    :mod:`gateway.stopsignals`), unless something else already handles that signal."""
    if signal.getsignal(signal.SIGUSR1):
        return

    def said() -> None:
        log.info("received SIGUSR1, which rotates a log file: the gateway logs to {target}, no file to rotate",
                 target=target)

    def nothing(signum: int, frame: FrameType | None) -> None:
        reactor.callFromThread(said)

    signal.signal(signal.SIGUSR1, nothing)
