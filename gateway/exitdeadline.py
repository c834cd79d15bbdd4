"""The last bound on the gateway's exit: the process ends once its stop's deadline has passed.

The root service bounds the stop of the service tree (:data:`gateway.root.STOP_LIMIT`), but
what the process does after it is outside that bound: at its shutdown the reactor joins the
threads of its thread pool, and waits forever for one stuck in a blocking call (a read of a
named pipe, a hung NFS or SD card); the interpreter then joins every thread that is not a
daemon. :class:`ExitDeadline` watches from a thread of its own and ends the process at its
deadline, whatever holds it, logging which threads are still running.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable

from twisted.logger import Logger

#: Seconds the process may take to end once the service tree has stopped (the reactor's
#: thread-pool join, twistd's own exit), and after :data:`gateway.root.STOP_LIMIT` at worst.
EXIT_GRACE = 5.0

#: The status the process ends with when the deadline ends it: its services stopped, but
#: the exit itself did not finish.
STUCK_EXIT_STATUS = 1

_log = Logger()


def end_process(status: int) -> None:
    """End the process now with ``status``, its output flushed (no thread is joined)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _running_threads() -> list[str]:
    """The names of the threads that hold the exit: every one alive but this one."""
    me = threading.current_thread()
    return sorted(t.name for t in threading.enumerate() if t is not me and t is not threading.main_thread())


class ExitDeadline:
    """Ends the process at a deadline, from a daemon thread of its own.

    :param end: ends the process with a status (:func:`end_process`).
    :param monotonic: the clock the deadline is kept on (never steps).
    """

    def __init__(self, end: Callable[[int], None] = end_process,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._end = end
        self._monotonic = monotonic
        self._deadline: float | None = None
        self._changed = threading.Condition()
        self._watcher: threading.Thread | None = None

    @property
    def deadline(self) -> float | None:
        """When the process ends (on the ``monotonic`` clock), or None before :meth:`arm`."""
        return self._deadline

    def arm(self, seconds: float) -> None:
        """End the process ``seconds`` from now at the latest; an earlier deadline stays."""
        with self._changed:
            deadline = self._monotonic() + seconds
            if self._deadline is None or deadline < self._deadline:
                self._deadline = deadline
            self._changed.notify()
            if self._watcher is None:
                self._watcher = threading.Thread(target=self._watch, name="exit-deadline", daemon=True)
                self._watcher.start()

    def join(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the deadline to have ended the process (tests)."""
        if self._watcher is not None:
            self._watcher.join(timeout)

    def _watch(self) -> None:
        with self._changed:
            while True:
                assert self._deadline is not None, "armed before the watcher starts"
                left = self._deadline - self._monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
        _log.critical("the gateway has not ended {grace} s after its services stopped (or after its stop's "
                      "limit): ending it now, with status {status}; still running: {threads}",
                      grace=EXIT_GRACE, status=STUCK_EXIT_STATUS, threads=", ".join(_running_threads()) or "-")
        self._end(STUCK_EXIT_STATUS)
