"""The shape of a service's way to run blocking work off the reactor thread."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred

#: Runs a blocking callable with its arguments (in a thread in production:
#: ``functools.partial(deferToThreadPool, reactor, pool)``; inline in unit tests) and fires
#: with its result.
RunBlocking = Callable[..., Deferred[Any]]
