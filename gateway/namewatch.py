"""Waiting for a file to change by its name: woken by inotify, read through the reactor, as soon
as the name is written, renamed in or out, or removed; after a given time at the latest (and
only then where inotify cannot watch its folder: another system, a test's fake reactor).

Whoever waits looks at the file again at each wake-up: a wake-up says something may have
changed, never what.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorFDSet
# INotifyError is public though missing from the module's __all__ (see gateway.apps.spool).
from twisted.internet.inotify import (IN_CLOSE_WRITE, IN_CREATE, IN_DELETE, IN_MOVED_FROM, IN_MOVED_TO, INotify,
                                      INotifyError)
from twisted.python import runtime
from twisted.python.filepath import FilePath

#: What changes a name in its folder: created, written and closed, renamed in or out, removed.
_CHANGES = IN_CREATE | IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE


def inotify_maker(reactor: Any) -> Callable[[], INotify] | None:
    """What makes an inotify instance read by ``reactor``, where there is inotify (Linux) and the
    reactor reads file descriptors (a test's fake reactor does not); None elsewhere."""
    if runtime.platform.supportsINotify() and IReactorFDSet.providedBy(reactor):
        return lambda: INotify(reactor)
    return None


class NameWatch:
    """Wakes a waiter when the name of ``path`` changes in its folder, or after the time it gives.

    Made before the first look at the file, it misses no change: one that comes while nobody
    waits wakes the next wait at once.

    :param clock: an IReactorTime for the waits' time limits.
    :param path: the file; its folder must exist to be watched.
    :param notifier: makes the inotify instance (:func:`inotify_maker`); None, or one that cannot
        watch the folder, and each wait lasts its whole time.
    """

    def __init__(self, clock: Any, path: Path, notifier: Callable[[], INotify] | None) -> None:
        self._clock = clock
        self._name = os.fsencode(path.name)
        self._waiter: Deferred[None] | None = None
        self._changed = False
        self._notifier: INotify | None = None
        if notifier is None:
            return
        try:
            made = notifier()
        except (INotifyError, OSError):
            return
        try:
            made.watch(FilePath(os.fsencode(path.parent)), _CHANGES, callbacks=[self._notified])
        except (INotifyError, OSError):  # (the folder is gone; fs.inotify.max_user_watches reached)
            made.loseConnection()
            return
        made.startReading()
        self._notifier = made

    def _notified(self, _: object, changed: FilePath[bytes], mask: int) -> None:
        if changed.basename() == self._name:
            self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is None:
            self._changed = True
        else:
            waiter.callback(None)

    def wait(self, longest: float) -> Deferred[None]:
        """Fires when the name changed since the last wait (at once if it did meanwhile), or
        after ``longest`` seconds."""
        if self._changed:
            self._changed = False
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        timer = self._clock.callLater(longest, waiter.callback, None)

        def settled(result: object) -> object:
            if timer.active():
                timer.cancel()
            if self._waiter is waiter:
                self._waiter = None
            return result

        self._waiter = waiter
        return waiter.addBoth(settled)

    def close(self) -> None:
        """Stop watching (a wait under way still ends after its time)."""
        if self._notifier is not None:
            self._notifier.loseConnection()
            self._notifier = None
