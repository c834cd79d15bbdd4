"""The journal's I/O thread: one thread, one queue, results back on the reactor.

Every journal write is a round trip from the reactor to this thread and back, and with
group commit a producer waits for one round trip per batch. Twisted's ``ThreadPool``
costs about 80 µs per round trip on the reference machine (context capture, a
coordinator, a condition variable per job); a bare ``SimpleQueue`` and the asyncio
loop's ``call_soon_threadsafe`` cost about 30 µs. Jobs run one at a time, in order.
"""

from __future__ import annotations

import asyncio
import threading
from queue import SimpleQueue
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads
from twisted.python.failure import Failure


#: ``run(f, *args)``: call ``f`` on the I/O thread; the Deferred fires with its result
#: (:meth:`IOThread.run`, or a test's stand-in).
Runner = Callable[..., "Deferred[Any]"]

_Job = tuple[Callable[..., Any], tuple[Any, ...], "Deferred[Any]"] | None


class IOThread:
    """Runs blocking jobs on one dedicated thread.

    :param reactor: where results are delivered (``callFromThread``).
    :param name: the thread's name (seen in ``py-spy``, ``top -H``).
    :param loop: the asyncio loop under ``reactor``, if it is Twisted's asyncio reactor:
        results are then delivered with its cheaper ``call_soon_threadsafe``.
    """

    def __init__(self, reactor: IReactorThreads, name: str, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.reactor = reactor
        self.loop = loop
        self.name = name
        self._jobs: SimpleQueue[_Job] = SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stopped: Deferred[None] | None = None

    def start(self) -> None:
        """Start the thread."""
        # A daemon: a gateway that dies without stopping the journal must still exit; the
        # journal's stopService drains every write before it stops this thread.
        self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
        self._thread.start()

    def run(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """Run ``f(*args)`` on the thread; the Deferred fires (on the reactor) with its result."""
        d: Deferred[Any] = Deferred()
        self._jobs.put((f, args, d))
        return d

    def stop(self) -> Deferred[None]:
        """Finish the queued jobs, then end the thread; fires once it has ended."""
        self._stopped = Deferred()
        self._jobs.put(None)
        return self._stopped

    def _work(self) -> None:
        # Twisted's asyncio reactor implements callFromThread as call_soon_threadsafe of a
        # callLater(0): the result would wait a whole extra loop turn (and a timer). Its
        # loop's call_soon_threadsafe delivers on the turn that wakes up.
        loop = self.loop
        call = loop.call_soon_threadsafe if loop is not None else self.reactor.callFromThread
        while True:
            job = self._jobs.get()
            if job is None:
                call(self._ended)
                return
            f, args, d = job
            try:
                result = f(*args)
            except BaseException:
                call(d.errback, Failure())
            else:
                call(d.callback, result)

    def _ended(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._stopped is not None:
            self._stopped.callback(None)
