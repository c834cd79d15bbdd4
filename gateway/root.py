"""The root service: starts the gateway's services in dependency order, stops them in reverse."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any, Callable, Collection, Protocol, runtime_checkable

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import ILogObserver, Logger
from twisted.python.components import Componentized
from twisted.python.failure import Failure

from gateway.clockstep import steady_seconds
from gateway.errors import GatewayError, ServiceStillStopping
from gateway.exitdeadline import EXIT_GRACE, ExitDeadline
from gateway.stateaccess import is_permission_error, refusal

#: Seconds the whole stop may take, whatever ``shutdown_timeout`` (up to 60 s for each of up
#: to 20 services) adds up to: below the packaged unit's ``TimeoutStopSec`` (90 s,
#: ``debian/gateway.service``), so that the gateway ends on its own, its hosted programs
#: killed, before systemd kills whatever is left.
STOP_LIMIT = 75.0

#: What to do about a file or directory of the state a service cannot use at start, by errno.
_WHAT_TO_DO = {
    errno.ENOTDIR: "a file is where a directory belongs: move it away",
    errno.EEXIST: "a file is where a directory belongs: move it away",
    errno.EACCES: "the gateway's user may not use it: give it to that user",
    errno.EPERM: "the gateway's user may not use it: give it to that user",
    errno.ENOSPC: "free some space on its disk",
    errno.EROFS: "its filesystem is read-only: make it writable",
}


def start_child(child: Service) -> Deferred[Any]:
    """Start ``child``. An ``OSError`` it fails with (a file or directory of the state it
    cannot use) is told as a :class:`~gateway.errors.GatewayError` naming the service, the
    path and what to do: alone it reads ``[Errno 20] Not a directory: '<path>'``, whoever's."""
    def told(failure: Failure) -> Failure:
        error = failure.value
        if not isinstance(error, OSError):
            return failure
        if is_permission_error(error) and error.filename:  # (told with its owner, its mode and what to do)
            return Failure(GatewayError(f"{child.name or '?'}: {refusal(Path(os.fsdecode(error.filename)))}"))
        where = f"{error.filename}: " if error.filename else ""
        what = _WHAT_TO_DO.get(error.errno or 0)
        return Failure(GatewayError(f"{child.name or '?'}: {where}{error.strerror or error}"
                                    + (f" ({what})" if what else "")))
    return maybeDeferred(child.startService).addErrback(told)


@runtime_checkable
class OverdueStop(Protocol):
    """A service with work that must not outlive its stop's timeout (hosted programs)."""

    def stop_overdue(self) -> None:
        """Its stop has taken ``shutdown_timeout``: end that work now, without waiting."""


class GatewayService(MultiService):
    """A MultiService whose children start one after another and stop in reverse order.

    Each child's ``startService`` may return a Deferred; the next child starts when it fires.
    If one fails, the children already started are stopped and ``on_start_failure`` is
    called. Each child's ``stopService`` is waited for, up to ``shutdown_timeout`` seconds;
    a stop that outlasts it is not cancelled, and goes on (a child that is an
    :class:`OverdueStop` is told to end what must not outlive it). The whole stop of the
    tree takes at most ``stop_limit`` seconds: once they have passed, each child left is
    still told to stop (and, if it is an :class:`OverdueStop`, that it is overdue) but not
    waited for.

    :param clock: for the stop timeouts.
    :param shutdown_timeout: seconds each child may take to stop.
    :param on_start_failure: called with the failure when a child cannot start.
    :param stop_limit: seconds the whole stop (:meth:`stopService`) may take.
    :param exit_deadline: ends the process :data:`~gateway.exitdeadline.EXIT_GRACE` seconds
        after the stop has ended (or after ``stop_limit``, whichever comes first) if it is still
        running then (a thread-pool thread stuck in a blocking call holds the reactor's exit).
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, shutdown_timeout: float,
                 on_start_failure: Callable[[Failure], None] | None = None, stop_limit: float = STOP_LIMIT,
                 exit_deadline: ExitDeadline | None = None) -> None:
        super().__init__()
        self.clock = clock
        self.shutdown_timeout = shutdown_timeout
        self.on_start_failure = on_start_failure
        self.stop_limit = stop_limit
        self.exit_deadline = exit_deadline
        self._stop_deadline: float | None = None  # (steady seconds) once the stop began
        self.started: Deferred[None] = Deferred()
        self._stopping: dict[Service, Deferred[Any]] = {}  # stops not finished yet
        #: the observer twistd is to log to (see :meth:`setServiceParent`); None: twistd's own
        self.log_observer: ILogObserver | None = None
        #: what the start line says of the gateway besides its services (its version and
        #: configuration file); "": nothing
        self.about = ""
        self._stop_began_at: float | None = None  # (steady seconds)

    def setServiceParent(self, parent: Any) -> None:
        """Join ``parent``. When it is twistd's application (a ``Componentized``), hand it
        :attr:`log_observer` as its ``ILogObserver`` component, the observer twistd logs to:
        twistd asks for it once the tree is built, before logging begins."""
        if self.log_observer is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.log_observer)
        super().setServiceParent(parent)

    def startService(self) -> Deferred[None]:
        """Start each child after the previous one is up; ``started`` fires when all are."""
        Service.startService(self)
        d: Deferred[Any] = succeed(None)
        for child in list(self):
            d.addCallback(lambda _, c: start_child(c), child)
        d.addCallbacks(self._all_started, self._start_failed)
        return d

    def _all_started(self, _: Any) -> None:
        self.log.info("gateway started{about}: {services}", about=f" ({self.about})" if self.about else "",
                      services=", ".join(c.name or "?" for c in self))
        self.started.callback(None)

    def _start_failed(self, failure: Failure) -> Deferred[None]:
        self.log.critical("gateway failed to start: {error}", error=failure.getErrorMessage())
        d = self._stop_children()

        def report(_: Any) -> None:
            if self.on_start_failure is not None:
                self.on_start_failure(failure)
            self.started.errback(failure)

        return d.addCallback(report)

    def stopService(self) -> Deferred[None]:
        """Stop the running children in reverse order, each waited for (all of them within
        ``stop_limit`` of :meth:`stop_began`); log completion."""
        Service.stopService(self)
        self.stop_began()
        return self._stop_children().addCallback(self._stopped)

    def _stopped(self, _: Any) -> None:
        began = self._stop_began_at
        took = steady_seconds(self.clock) - began if began is not None else 0.0
        self.log.info("gateway shutdown completed in {seconds:.1f} s", seconds=took)
        if self.exit_deadline is not None:
            self.exit_deadline.arm(EXIT_GRACE)

    def stop_began(self) -> None:
        """The gateway's stop begins: ``stop_limit`` counts from the first call."""
        if self._stop_deadline is None:
            self._stop_began_at = steady_seconds(self.clock)
            self._stop_deadline = self._stop_began_at + self.stop_limit
            if self.exit_deadline is not None:
                self.exit_deadline.arm(self.stop_limit + EXIT_GRACE)

    def stop_time_left(self) -> float:
        """Seconds left of ``stop_limit`` (infinite until :meth:`stop_began`; never negative)."""
        if self._stop_deadline is None:
            return float("inf")
        return max(0.0, self._stop_deadline - steady_seconds(self.clock))

    def _stop_children(self) -> Deferred[None]:
        d: Deferred[Any] = succeed(None)
        for child in reversed(list(self)):
            d.addCallback(lambda _, c: self._stop_child(c), child)
        return d

    def _stop_child(self, child: Service) -> Deferred[None] | None:
        """Stop ``child`` (or wait again for a stop already under way); fires once it has
        stopped or ``shutdown_timeout`` has passed, whichever comes first."""
        stop = self._stopping.get(child)
        if stop is None:
            if not child.running:
                return None
            stop = maybeDeferred(child.stopService)
            stop.addErrback(lambda f: self.log.failure("stopping {service} failed", f, service=child.name))
            self._stopping[child] = stop

            def finished(_: Any) -> None:
                del self._stopping[child]

            stop.addBoth(finished)
            if child not in self._stopping:  # it stopped at once
                return None
        waited: Deferred[None] = Deferred()
        wait = min(self.shutdown_timeout, self.stop_time_left())

        def late() -> None:
            if wait < self.shutdown_timeout:
                self.log.warn("{service} is still stopping when the gateway's stop has taken its {limit} s: not "
                              "waited for", service=child.name, limit=self.stop_limit)
            else:
                self.log.warn("{service} did not stop within {timeout} s", service=child.name,
                              timeout=self.shutdown_timeout)
            if isinstance(child, OverdueStop):
                child.stop_overdue()
            waited.callback(None)

        timer = self.clock.callLater(wait, late)

        def stopped(result: Any) -> Any:
            if timer.active():
                timer.cancel()
                waited.callback(None)
            return result

        stop.addBoth(stopped)
        return waited

    def replace_children(self, keep: Collection[Service], build: Callable[[], None],
                         exclusive: Collection[str] = ()) -> Deferred[tuple[str, ...]]:
        """Restart the tree with new services: stop every child but ``keep`` (in reverse
        order, each waited for as on shutdown), remove them, let ``build`` add new ones, and
        start those one after another as :meth:`startService` does.

        :param keep: children that go on running (they come first in the tree).
        :param build: adds the new children (``setServiceParent(self)``).
        :param exclusive: names of children whose replacement must never run beside them
            (they own files or ports the new one opens): when one of them is still stopping
            after ``shutdown_timeout``, nothing new is built or started.
        :return: fires with the names of the new children once every one has started; on a
            start failure the new ones already started are stopped and it fails; fails with
            :class:`ServiceStillStopping` when an ``exclusive`` child has not stopped (the
            old children stay, stopped or stopping: a later call waits for them again).
        """
        old = [child for child in self if child not in keep]
        d: Deferred[Any] = succeed(None)
        for child in reversed(old):
            d.addCallback(lambda _, c: self._stop_child(c), child)

        def rebuild(_: Any) -> Deferred[Any]:
            late = [child.name or "?" for child in old if child.name in exclusive and child in self._stopping]
            if late:
                return fail(ServiceStillStopping(
                    f"the {' and the '.join(late)} did not stop within {self.shutdown_timeout:g} s"
                    " (gateway.shutdown_timeout): no new one starts beside the old one"))
            # Added while "not running", so addService does not start them all at once.
            running, self.running = self.running, 0
            try:
                for child in old:
                    child.disownServiceParent()
                build()
            finally:
                self.running = running
            new = [child for child in self if child not in keep]
            started: list[Service] = []
            chain: Deferred[Any] = succeed(None)
            for child in new:
                chain.addCallback(lambda _, c: start_child(c).addCallback(lambda _: started.append(c)), child)

            def undo(failure: Failure) -> Deferred[Any]:
                self.log.critical("services failed to start: {error}", error=failure.getErrorMessage())
                stops: Deferred[Any] = succeed(None)
                for child in reversed(new):
                    if child in started or child.running:
                        stops.addCallback(lambda _, c: self._stop_child(c), child)
                return stops.addCallback(lambda _: failure)

            chain.addCallbacks(lambda _: tuple(c.name or "?" for c in new), undo)
            return chain

        return d.addCallback(rebuild)
