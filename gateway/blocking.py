"""The shape of a service's way to run blocking work off the reactor thread."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool

#: Runs a blocking callable with its arguments (in a thread in production:
#: ``functools.partial(deferToThreadPool, reactor, pool)``; inline in unit tests) and fires
#: with its result.
RunBlocking = Callable[..., Deferred[Any]]


def in_reactor_threads(reactor: Any) -> RunBlocking:
    """A :data:`RunBlocking` that runs the work in ``reactor``'s thread pool.

    The pool is looked up at each call (``reactor.getThreadPool()`` makes it on first use).
    """
    def run(work: Callable[..., Any], *args: Any) -> Deferred[Any]:
        return deferToThreadPool(reactor, reactor.getThreadPool(), work, *args)
    return run
