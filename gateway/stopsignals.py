"""The stop signals (SIGTERM, SIGINT; SIGBREAK on Windows): their handlers only hand them to the
reactor's loop, on whichever asyncio reactor runs the gateway, from before its services start.

A Python signal handler runs in the main thread between any two of its bytecodes: also inside a
log observer's lock, half taken (Twisted's file observer takes a pure-Python RLock), and a
handler that logs there waits for that lock for good. Twisted's own handlers log ("Received
SIGTERM, shutting down.") in the handler: the gateway hung at SIGTERM, under its own reactor
(:class:`gateway.clockstep.SteadyTimersReactor`) and under ``twistd --reactor=asyncio`` alike.
So the handlers here only queue the signal with ``callFromThread`` (asyncio's signal-safe
hand-off: a deque append and a wake-up write), and the loop runs Twisted's handler on its next
turn: it logs, stops the reactor, and twistd then ends by that signal. One that comes once the
reactor is stopping, for a signal or for another reason (a failed start, the ``restart``
command), is logged as "already stopping" and changes nothing (Twisted's handler stopped the
stopped reactor again: a ``ReactorNotRunning`` traceback).

Installed as the process's handlers before the services start (:func:`handle_stop_signals_now`,
from ``tap.makeService``), a stop signal that comes while they start stops the gateway cleanly
once its reactor runs, instead of ending the process at once (SIGTERM's default action) or
raising ``KeyboardInterrupt`` in the middle of a start (SIGINT's).
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from functools import partial
from types import FrameType
from typing import Any

from twisted.logger import Logger

#: A Python signal handler.
SignalHandler = Callable[[int, "FrameType | None"], None]

#: The reactor's handlers of the stop signals, by the names Twisted installs them under.
HANDLER_NAMES = ("sigInt", "sigTerm", "sigBreak")


class StopSignals:
    """Hands a reactor's stop signals to its loop, and the first to Twisted's handler there.

    :param reactor: the reactor (``IReactorFromThreads``, ``IReactorCore``); its handlers as they
        are now (Twisted's) are the ones the first stop signal is handed to.
    """

    log = Logger()

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._twisteds: dict[str, SignalHandler] = {name: getattr(reactor, name) for name in HANDLER_NAMES}
        self._stopping = False
        #: The first stop signal that came (its number), None before one: also one that came
        #: while the reactor was already stopping for another reason, or once its loop had run
        #: its last turn (noted in the handler: the loop would never see it).
        self.received: int | None = None
        reactor.addSystemEventTrigger("before", "shutdown", self._stop_began)

    def handler(self, name: str) -> SignalHandler:
        """The signal handler that hands a signal to the loop for the reactor's handler ``name``
        (one of :data:`HANDLER_NAMES`)."""
        return partial(self._queue, name)

    def _queue(self, name: str, number: int, frame: FrameType | None = None) -> None:
        # (In the signal handler: nothing here logs or takes a lock. See the module's docstring.)
        if self.received is None:
            self.received = number
        self._reactor.callFromThread(self._signalled, name, number)

    def _signalled(self, name: str, number: int) -> None:
        if self._stopping:
            self.log.info("received {signal} while already stopping: the gateway ends once its services have "
                          "stopped (each within gateway.shutdown_timeout)", signal=signal.Signals(number).name)
            return
        self._stopping = True
        self._twisteds[name](number, None)

    def _stop_began(self) -> None:
        self._stopping = True


def queue_stop_signals(reactor: Any) -> StopSignals:
    """Make ``reactor``'s stop-signal handlers (``sigInt``, ``sigTerm``, ``sigBreak``: Twisted
    installs them as the process's handlers when the reactor runs) ones that only queue the signal
    for its loop (:class:`StopSignals`).

    :param reactor: an asyncio reactor not run yet.
    """
    stops = StopSignals(reactor)
    for name in HANDLER_NAMES:
        setattr(reactor, name, stops.handler(name))
    reactor.stop_signals = stops
    return stops


def stop_signal_received(reactor: Any) -> int | None:
    """The first stop signal that came to ``reactor`` (:attr:`StopSignals.received`); None before
    one, and for a reactor whose stop signals are not queued (a test's)."""
    stops: StopSignals | None = getattr(reactor, "stop_signals", None)
    return stops.received if stops is not None else None


def handle_stop_signals_now(reactor: Any) -> None:
    """Install ``reactor``'s stop-signal handlers as the process's now, before it runs, as
    Twisted installs them when it runs: SIGTERM (and SIGBREAK where there is one), and SIGINT
    unless something else than Python's default handles it (a debugger, or ``SIG_IGN`` for a
    background job). Only for handlers that only queue (:func:`queue_stop_signals`): Twisted's
    would stop a reactor not running yet.

    :param reactor: the reactor the gateway is about to run.
    """
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, reactor.sigInt)
    signal.signal(signal.SIGTERM, reactor.sigTerm)
    sigbreak = getattr(signal, "SIGBREAK", None)
    if sigbreak is not None:
        signal.signal(sigbreak, reactor.sigBreak)
