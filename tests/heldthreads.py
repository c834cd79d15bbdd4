"""A ``run_blocking`` whose calls wait, as in a thread, until the test runs them."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred


class HeldThreads:
    """The test double of a slow thread pool: each blocking call waits until the test runs it
    (:meth:`run_next`, :meth:`release_all`), so a test can land a stop in the middle of one."""

    def __init__(self) -> None:
        self.calls: list[tuple[Deferred[Any], Any, tuple[Any, ...]]] = []

    def __call__(self, f: Any, *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.calls.append((d, f, args))
        return d

    def next_name(self) -> str:
        """The name of the function the oldest held call runs ("" when none is held)."""
        return getattr(self.calls[0][1], "__name__", "") if self.calls else ""

    def run_next(self) -> str:
        """Run the oldest held call now and hand its result (or error) on; returns its name."""
        name = self.next_name()
        d, f, args = self.calls.pop(0)
        maybeDeferred(f, *args).chainDeferred(d)
        return name

    def release_all(self) -> None:
        """Run every held call, those the ones run start too, in order."""
        while self.calls:
            self.run_next()
