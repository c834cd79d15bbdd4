"""The root service: starts the gateway's services in dependency order, stops them in reverse."""

from __future__ import annotations

from typing import Any, Callable

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure


class GatewayService(MultiService):
    """A MultiService whose children start one after another and stop in reverse order.

    Each child's ``startService`` may return a Deferred; the next child starts when it fires.
    If one fails, the children already started are stopped and ``on_start_failure`` is
    called. Each child's ``stopService`` is waited for, up to ``shutdown_timeout`` seconds.

    :param clock: for the stop timeouts.
    :param shutdown_timeout: seconds each child may take to stop.
    :param on_start_failure: called with the failure when a child cannot start.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, shutdown_timeout: float,
                 on_start_failure: Callable[[Failure], None] | None = None) -> None:
        super().__init__()
        self.clock = clock
        self.shutdown_timeout = shutdown_timeout
        self.on_start_failure = on_start_failure
        self.started: Deferred[None] = Deferred()

    def startService(self) -> Deferred[None]:  # type: ignore[override]
        """Start each child after the previous one is up; ``started`` fires when all are."""
        Service.startService(self)
        d: Deferred[Any] = succeed(None)
        for child in list(self):
            d.addCallback(lambda _, c=child: maybeDeferred(c.startService))
        d.addCallbacks(self._all_started, self._start_failed)
        return d

    def _all_started(self, _: Any) -> None:
        self.log.info("gateway started: {services}", services=", ".join(c.name or "?" for c in self))
        self.started.callback(None)

    def _start_failed(self, failure: Failure) -> Deferred[None]:
        self.log.critical("gateway failed to start: {error}", error=failure.getErrorMessage())
        d = self._stop_children()

        def report(_: Any) -> None:
            if self.on_start_failure is not None:
                self.on_start_failure(failure)
            self.started.errback(failure)

        return d.addCallback(report)

    def stopService(self) -> Deferred[None]:  # type: ignore[override]
        """Stop the running children in reverse order, each waited for; log completion."""
        Service.stopService(self)
        return self._stop_children().addCallback(lambda _: self.log.info("gateway shutdown completed"))

    def _stop_children(self) -> Deferred[None]:
        d: Deferred[Any] = succeed(None)
        for child in reversed(list(self)):
            d.addCallback(lambda _, c=child: self._stop_child(c))
        return d

    def _stop_child(self, child: Service) -> Deferred[None] | None:
        if not child.running:
            return None
        d = maybeDeferred(child.stopService)
        d.addTimeout(self.shutdown_timeout, self.clock)
        d.addErrback(lambda f: self.log.failure("stopping {service} failed", f, service=child.name))
        return d
