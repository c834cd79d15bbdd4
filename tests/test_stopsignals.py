"""Stop signals handed from their handlers to the reactor's loop (gateway/stopsignals.py)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from twisted.internet.asyncioreactor import AsyncioSelectorReactor
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from gateway.clockstep import SteadyTimersReactor
from gateway.stopsignals import queue_stop_signals

ROOT = Path(__file__).resolve().parent.parent

#: On a stock asyncio reactor (``twistd --reactor=asyncio``) or the gateway's own (argv[1]):
#: tap.install_reactor, then a SIGTERM before the reactor runs (while the services would start),
#: then, once it runs, the installed SIGTERM handler called as a signal would call it: what it
#: logged before the loop's next turn, and whether the reactor stopped by that SIGTERM.
EARLY_AND_IN_HANDLER = """
import os, signal, sys
if sys.argv[1] == "asyncio":
    from twisted.internet import asyncioreactor
    asyncioreactor.install()
from gateway.tap import install_reactor
from twisted.logger import formatEvent, globalLogPublisher
reactor, loop = install_reactor()
lines = []
globalLogPublisher.addObserver(lambda event: lines.append(formatEvent(event)))
os.kill(os.getpid(), signal.SIGTERM)
print("survived a SIGTERM before the reactor ran", flush=True)
said = []
def in_handler():
    before = len(lines)
    signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)
    said.append(lines[before:])
reactor.callWhenRunning(in_handler)
reactor.run()
print("the handler logged", said, flush=True)
print("stopped by", getattr(reactor, "_exitSignal", None), flush=True)
"""


class StopSignalTests(SynchronousTestCase):
    """A stop signal is handled on the loop's next turn, and one while the reactor is already
    stopping is one log line; on the gateway's reactor and on Twisted's."""

    def reactor(self, kind: type[AsyncioSelectorReactor]) -> tuple[Any, list[Any], list[dict[str, Any]]]:
        """A reactor of ``kind`` (never run) with the stop signals queued, the calls it queued
        for the loop, and the log."""
        reactor = kind(asyncio.new_event_loop())
        self.addCleanup(reactor._asyncioEventloop.close)
        self.addCleanup(reactor.waker.connectionLost, None)
        self.addCleanup(reactor.removeAll)
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        queued: list[Any] = []
        self.patch(reactor, "callFromThread", lambda f, *args, **kwargs: queued.append((f, args)))
        queue_stop_signals(reactor)
        return reactor, queued, events

    def test_a_second_stop_signal_is_one_line(self) -> None:
        """The first SIGTERM goes to Twisted's handler (it stops the reactor); a SIGTERM or
        SIGINT after it only logs "already stopping", once each, and stops nothing again
        (Twisted's handler stopped the stopped reactor: a ReactorNotRunning traceback)."""
        for kind in (SteadyTimersReactor, AsyncioSelectorReactor):
            reactor, queued, events = self.reactor(kind)
            stops = []
            for number, handler in ((signal.SIGTERM, reactor.sigTerm), (signal.SIGTERM, reactor.sigTerm),
                                    (signal.SIGINT, reactor.sigInt)):
                handler(number, None)
                while queued:
                    f, args = queued.pop(0)
                    if f == reactor.stop:
                        stops.append(f)
                    else:
                        f(*args)
            self.assertEqual(stops, [reactor.stop])
            lines = [formatEvent(event) for event in events]
            self.assertEqual([line for line in lines if "already stopping" in line], [
                f"received {name} while already stopping: the gateway ends once its services have stopped (each "
                "within gateway.shutdown_timeout)" for name in ("SIGTERM", "SIGINT")])

    def test_a_stop_for_another_reason_makes_a_signal_one_line(self) -> None:
        """A SIGTERM that comes once the reactor is stopping for another reason (a failed
        start, the ``restart`` command) is one line too, and stops nothing again."""
        reactor, queued, events = self.reactor(AsyncioSelectorReactor)
        reactor.fireSystemEvent("shutdown")  # (its "before" triggers: the stop began)
        queued.clear()
        reactor.sigTerm(signal.SIGTERM, None)
        f, args = queued.pop(0)
        f(*args)
        self.assertEqual(queued, [])
        self.assertIn("received SIGTERM while already stopping", formatEvent(events[-1]))

    def test_the_signal_handler_only_queues(self) -> None:
        """A signal comes between any two bytecodes of the main thread, also while a log observer
        holds its lock, half taken: Twisted's file observer takes a pure-Python RLock, and a
        handler that logged then waited for it for good (a gateway hung at SIGTERM, found by
        bench/e2e.py). The handlers log nothing and stop nothing themselves: they queue the work
        for the loop, which logs it and stops."""
        for kind in (SteadyTimersReactor, AsyncioSelectorReactor):
            reactor, queued, events = self.reactor(kind)
            for handler, number in ((reactor.sigTerm, signal.SIGTERM), (reactor.sigInt, signal.SIGINT),
                                    (reactor.sigBreak, signal.SIGTERM)):
                handler(number, None)
            self.assertEqual(events, [])
            self.assertEqual(len(queued), 3)
            for f, args in queued[:]:
                f(*args)
            lines = [formatEvent(event) for event in events]
            self.assertEqual(lines[0], "Received SIGTERM, shutting down.")
            self.assertEqual(len(lines), 3)
            self.assertEqual(queued[3:], [(reactor.stop, ())])

    def test_twistd_gateway_handles_them_from_the_start(self) -> None:
        """``twistd gateway`` (tap.install_reactor), on its own reactor and under
        ``twistd --reactor=asyncio`` alike: a SIGTERM that comes before the reactor runs (while
        the services start) no longer ends the process at once (SIGTERM's default action: an
        unclean stop) but stops the reactor once it runs, as a signal does; and the handler
        installed logs nothing in the signal handler (Twisted's own logged there: a gateway run
        under ``--reactor=asyncio`` could hang at SIGTERM as its own reactor did)."""
        runs = {kind: subprocess.Popen([sys.executable, "-c", EARLY_AND_IN_HANDLER, kind], cwd=ROOT,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for kind in ("gateway", "asyncio")}
        for kind, run in runs.items():
            out, err = run.communicate(timeout=50)
            self.assertEqual((run.returncode, out.splitlines()), (0, [
                "survived a SIGTERM before the reactor ran",
                "the handler logged [[]]",
                f"stopped by {int(signal.SIGTERM)}"]), f"{kind}: {err}")
