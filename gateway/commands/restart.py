"""Restarting the gateway process on a remote ``restart`` command.

Under systemd (the unit sets ``Restart=always``) the gateway stops cleanly and exits;
systemd starts it again after ``RestartSec``. Without systemd nothing would start it
again, so once the clean shutdown is complete (twistd has removed its pid file) the
process re-executes its own command line in place (same pid, same arguments), unless a
stop signal came while it stopped: then it ends by that signal, as told.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
from typing import Any, Callable, Mapping, Sequence

from twisted.internet.error import ReactorNotRunning
from twisted.logger import Logger

from gateway.stopsignals import stop_signal_received

log = Logger()


def end_by_signal(number: int) -> None:
    """End this process by signal ``number``'s default action, as twistd ends after a stop that
    signal began (status 143 for SIGTERM, which systemd counts as a clean stop)."""
    signal.signal(number, signal.SIG_DFL)
    os.kill(os.getpid(), number)


class ProcessRestart:
    """Stops the gateway so that it starts again.

    :param reactor: the running reactor (``stop``, ``callLater``, ``addSystemEventTrigger``).
    :param environ: the process environment (systemd sets ``INVOCATION_ID`` for a unit).
    :param at_exit: registers a callable to run at interpreter exit (:func:`atexit.register`).
    :param execv: replaces the process (:func:`os.execv`).
    :param argv: the command line to run again.
    :param delay: seconds before stopping, so the command's reply is journaled first.
    :param end_by_signal: ends the process by a signal's default action (what twistd does after
        a stop a signal began).
    """

    def __init__(self, reactor: Any, environ: Mapping[str, str] = os.environ,
                 at_exit: Callable[[Callable[[], None]], Any] = atexit.register,
                 execv: Callable[[str, list[str]], Any] = os.execv,
                 argv: Sequence[str] = tuple(sys.argv), delay: float = 1.0,
                 end_by_signal: Callable[[int], Any] = end_by_signal) -> None:
        self.reactor = reactor
        self.environ = environ
        self.at_exit = at_exit
        self.execv = execv
        self.argv = tuple(argv)
        self.delay = delay
        self.end_by_signal = end_by_signal

    @property
    def under_systemd(self) -> bool:
        """Whether systemd runs this process as a unit (and will start it again)."""
        return bool(self.environ.get("INVOCATION_ID"))

    def how(self) -> str:
        """``systemd`` or ``re-exec``: what brings the gateway back."""
        return "systemd" if self.under_systemd else "re-exec"

    def restart(self) -> str:
        """Stop the gateway cleanly in ``delay`` seconds; return :meth:`how` it comes back.

        A stop that begins first (SIGTERM in that second) wins: the gateway stops and stays
        stopped, and the log says so as the stop begins (a reactor that has stopped runs no
        more timers, so the restart's own call would never say it)."""
        call = self.reactor.callLater(self.delay, self._stop)
        self.reactor.addSystemEventTrigger("before", "shutdown", self._overtaken, call)
        return self.how()

    def _overtaken(self, call: Any) -> None:
        """The gateway begins to stop: a restart still waiting for its second is not done."""
        if call.active():
            call.cancel()
            self._not_restarting()

    @staticmethod
    def _not_restarting() -> None:
        log.info("not restarting on the remote command: the gateway is stopping already")

    def _stop(self) -> None:
        try:
            self.reactor.stop()
        except ReactorNotRunning:  # (the stop began in this very turn, before its triggers ran)
            self._not_restarting()
            return
        log.warn("restarting the gateway on a remote command ({how})", how=self.how())
        if not self.under_systemd:
            self.at_exit(self._exec)

    def _exec(self) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        # A SIGTERM or Ctrl-C while the restart stopped the gateway ("received SIGTERM while already
        # stopping: the gateway ends ..."): it ends, by that signal, as after a stop the signal began.
        number = stop_signal_received(self.reactor)
        if number is not None:
            self.end_by_signal(number)
            return
        self.execv(sys.executable, [sys.executable, *self.argv])
