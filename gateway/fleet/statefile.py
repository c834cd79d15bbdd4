"""The fleet state's file (``<state_dir>/fleet/state.json``): read at the start, set aside when
damaged, written off the reactor one write at a time."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, DeferredLock, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.atomic import set_aside
from gateway.blocking import RunBlocking
from gateway.fleet.state import FleetState


class FleetStateFile:
    """Where one fleet service keeps its :class:`~gateway.fleet.state.FleetState`.

    :param path: the state file.
    :param run_blocking: runs its writes off the reactor.
    :param log: the service's logger (its lines keep the service's namespace).
    """

    def __init__(self, path: Path, run_blocking: RunBlocking, log: Logger) -> None:
        self.path = path
        self.run_blocking = run_blocking
        self.log = log
        self._lock = DeferredLock()

    def load(self, now: float) -> FleetState:
        """The state the file holds (empty when there is none). One that cannot be read (not JSON,
        not its shape, a directory in its place) is logged, moved aside to ``state.json.damaged``
        and an empty state starts afresh.

        :param now: when feedback from a state written before ``queued_at`` was recorded counts
            as queued (seconds since the epoch).
        """
        try:
            return FleetState.load(self.path, now)
        except (ValueError, OSError) as error:  # (OSError: a directory or a loop of links in its place)
            self.log.error("fleet state unreadable ({error}), {kept}; starting afresh", error=str(error),
                           kept=set_aside(self.path))
            return FleetState()

    def save(self, state: FleetState) -> Deferred[Any]:
        """Write ``state`` as it is now (atomically, durably, in a thread, after the writes asked
        before); fires once written. Cancelling the Deferred returned gives up waiting, not the
        write: :meth:`written` waits for it."""
        snapshot = copy.deepcopy(state)  # the write runs in a thread; the state goes on changing
        writing = self._lock.run(self.run_blocking, snapshot.save, self.path)
        # A stop cancels the poll that waits here, not the write: the thread writes on, and the
        # lock (which the stop waits for) is held until it has written.
        waiting: Deferred[Any] = Deferred()

        def unwaited(failure: Failure) -> Failure | None:
            if not waiting.called:
                return failure  # (the poll waiting for it logs it)
            self.log.failure("fleet state write failed as the service stopped: the saved state is the one before",
                             failure)
            return None

        writing.addErrback(unwaited).chainDeferred(waiting)
        return waiting

    def written(self) -> Deferred[None]:
        """Fires once no write is under way (nor asked)."""
        return self._lock.run(lambda: succeed(None)).addCallback(lambda _: None)
