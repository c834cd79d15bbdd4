"""The shadows the cloud is behind on, and bringing them up to date.

A shadow request the journal refuses (the stream full under reject-new, a failed write)
leaves its shadow *behind*: the twin holds the change, the cloud does not. The shadow is
marked (the marks kept on disk by :mod:`gateway.twin.behind`), read again every
:data:`CATCH_UP_INTERVAL` seconds while connected (and at each connect, and as soon as its
last request is answered: :meth:`ShadowCatchUp.answered`, or the sync reads past requests it
could not tell the shadow of: :meth:`ShadowCatchUp.recheck`, or the stream frees room after
refusing its correction: :meth:`ShadowCatchUp.room`) once none of its
requests is left to send, and corrected by the sync like at a connect; its mark goes once a
correction is journaled with no request of it refused since. A shadow behind whose get the
cloud refuses for good (403, 400: :meth:`ShadowCatchUp.get_refused`) keeps its mark and is
read again on a backoff, from :data:`CATCH_UP_INTERVAL` to :data:`GET_RETRY_MAX_DELAY`.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.errors import JournalError
from gateway.operations.retry import lazy_backoff
from gateway.twin import shadows
from gateway.twin.behind import BehindFile
from gateway.twin.behindlog import BehindMark

#: Seconds between two attempts to bring up to date a shadow whose request the journal refused.
CATCH_UP_INTERVAL = 5.0
#: Seconds at most between two gets of a shadow behind that the cloud refuses for good (a
#: policy denying it: fixed by an operator, the shadow is caught up within this).
GET_RETRY_MAX_DELAY = 300.0
#: The end of the twin's answer to a change whose shadow request the journal refused.
BEHIND = "the shadow is brought up to date when the stream takes appends again"


class CatchUpSync(Protocol):
    """What the catch-up uses of its shadow sync."""

    def sending(self) -> bool:
        """Whether the sync is connected and not stopped."""

    def settled(self, shadow: str) -> bool:
        """Whether every request of ``shadow`` journaled so far was sent and answered."""

    def read_again(self, shadow: str) -> None:
        """Queue a get of ``shadow``, unless one is queued or a request of it is in flight."""

    def pump(self) -> None:
        """Send what can be sent."""


class ShadowCatchUp:
    """The marks of the shadows one sync's cloud is behind on, and their catch-up timer.

    :param sync: the shadow sync.
    :param behind_file: where the marks are kept.
    :param clock: the catch-up timer, and when a shadow fell behind.
    :param log: the sync's logger (the lines keep the sync's namespace).
    """

    def __init__(self, sync: CatchUpSync, behind_file: BehindFile, clock: Any, log: Logger) -> None:
        self.sync = sync
        self.clock = clock
        self.log = log
        #: Shadows a request of which the journal refused -> their thing id and since when: the
        #: cloud is behind on them until the sync journals what it lacks. Written to the
        #: behind file whenever it changes, read at the start.
        self.marks: dict[str, BehindMark] = {}
        self._file = behind_file
        self._refusals: dict[str, int] = {}  # shadow behind -> its requests the journal refused
        #: Shadows marked before a change deleting them is written (:meth:`deleting`) -> their
        #: deletes not journaled yet (one may be made again and deleted again meanwhile): not
        #: behind unless a crash or a refusal comes first
        self._deleting: dict[str, int] = {}
        #: Shadows behind whose last correction the journal refused: read again when the stream
        #: frees room (:meth:`room`), besides the catch-up every CATCH_UP_INTERVAL.
        self._want_room: set[str] = set()
        self._timer: IDelayedCall | None = None
        #: shadow behind -> the gets of it the cloud refused for good in a row (until one is answered)
        self._unreadable: dict[str, int] = {}
        self._held: dict[str, IDelayedCall] = {}  # shadow behind whose get was refused -> its next read
        #: gets of shadows behind the cloud refused for good, since the start
        self.gets_refused = 0
        #: ``attempt -> seconds`` before a shadow behind whose get the cloud refused for good is
        #: read again (``attempt``: its refusals in a row, from 0)
        self.get_retry_policy: Callable[[int], float] = lazy_backoff(initialDelay=CATCH_UP_INTERVAL,
                                                                     maxDelay=GET_RETRY_MAX_DELAY)

    def load(self) -> Deferred[None]:
        """Read the marks saved before the restart (fires once they are taken)."""
        return self._file.load().addCallback(self._loaded)

    def _loaded(self, saved: dict[str, BehindMark]) -> None:
        """Take the marks saved before the restart (those made since the start stay, and are
        written now)."""
        if saved:
            self.log.info("shadows the cloud is behind on since before the start: {shadows}; read and corrected"
                          " at the connect", shadows=", ".join(repr(s) for s in sorted(saved)))
        for shadow, mark in saved.items():
            self.marks.setdefault(shadow, mark)
            self._refusals.setdefault(shadow, 0)
        self._file.save()  # (the marks made meanwhile)

    def compact(self) -> Deferred[None]:
        """Write the marks whole to ``shadows-behind.json`` (at the sync's stop, and at the
        twin's, after it, for the marks made since: an older gateway started on the state reads
        that file alone); fires once done or failed."""
        return self._file.compact()

    def refused(self, thing_id: str, shadow: str, failure: Failure) -> Deferred[str]:
        """The journal refused a request of ``shadow`` (of the twin's ``thing_id``): mark the
        shadow behind and read it again later; fires, once the mark is durable (or its write
        failed: logged, and written again later), with why the cloud is behind on the change."""
        if not failure.check(OSError, JournalError):
            self.log.failure("shadow {shadow}: request not journaled", failure, shadow=shadows.shown_shadow(shadow))
        elif shadow not in self.marks or shadow in self._deleting:
            self.log.warn("shadow {shadow}: request not journaled ({error}): the cloud is behind on it until"
                          " the stream takes appends again", shadow=shadows.shown_shadow(shadow),
                          error=failure.getErrorMessage())
        if shadow not in self.marks:
            self.marks[shadow] = BehindMark(thing_id, self.clock.seconds())
            written = self._file.changed(shadow, self.marks)
        else:
            written = self._file.save()  # (its mark may be on its way to the disk)
        self._deleting.pop(shadow, None)  # (behind now)
        self._refusals[shadow] = self._refusals.get(shadow, 0) + 1
        self.later()
        why = f"the shadow request was not journaled: {failure.getErrorMessage()}; {BEHIND}"
        return written.addCallback(lambda _: why)

    def deleting(self, thing_id: str, shadow: str) -> Deferred[None]:
        """A change of the twin's ``thing_id`` deletes ``shadow``: mark it before the change is
        written (fires once the mark is durable, or its write failed), so that a crash between
        the write of ``things.json`` and the journaling of its delete still deletes it (the mark,
        read at the start, says to; the twin no longer holds it). The mark goes once the delete
        is journaled (:meth:`delete_journaled`: the last, when it is deleted again before the
        first is); it is not counted as behind meanwhile."""
        if shadow in self._deleting:  # (a delete of it still being journaled: it waits for this one too)
            self._deleting[shadow] += 1
        if shadow in self.marks:  # (behind already: its mark stays until it is corrected)
            return self._file.save()
        self.marks[shadow] = BehindMark(thing_id, self.clock.seconds())
        self._refusals.setdefault(shadow, 0)
        self._deleting[shadow] = 1
        return self._file.changed(shadow, self.marks)

    def delete_journaled(self, shadow: str) -> None:
        """The delete of ``shadow`` is durable in the journal: drop the mark :meth:`deleting`
        made (not one of a shadow behind: a request of it the journal refused), once no other
        delete of it is being journaled."""
        if shadow in self._deleting:
            self._deleting[shadow] -= 1
            if self._deleting[shadow]:
                return
            self._drop(shadow)

    @property
    def behind(self) -> dict[str, BehindMark]:
        """The shadows the cloud is behind on (but those marked only while their delete is
        journaled: :meth:`deleting`)."""
        return {shadow: mark for shadow, mark in self.marks.items() if shadow not in self._deleting}

    def corrected_by(self, shadow: str, correction: Deferred[str | None]) -> None:
        """If the cloud is behind on ``shadow``: drop its mark once ``correction`` (the request
        journaled to bring it up to date, or ``None``: none needed) is durable, unless a
        request of it was refused since."""
        if shadow not in self.marks:
            return
        refusals = self._refusals[shadow]

        def caught_up(refusal: str | None) -> None:
            if refusal is not None and shadow in self.marks:
                self._want_room.add(shadow)
            elif refusal is None and self._refusals.get(shadow) == refusals:  # (none refused since)
                self._drop(shadow)
                self.log.info("shadow {shadow}: the cloud is brought up to date", shadow=shadows.shown_shadow(shadow))

        correction.addCallback(caught_up)

    def _drop(self, shadow: str) -> None:
        """Drop the mark of ``shadow`` and all this keeps of it, and write the marks."""
        del self.marks[shadow], self._refusals[shadow]
        self._unreadable.pop(shadow, None)
        self._deleting.pop(shadow, None)
        self._want_room.discard(shadow)
        self._file.changed(shadow, self.marks)

    def later(self) -> None:
        """Read the shadows the cloud is behind on again after :data:`CATCH_UP_INTERVAL` (while
        connected: a connect reads them anyway)."""
        if self.sync.sending() and self._timer is None:
            self._timer = self.clock.callLater(CATCH_UP_INTERVAL, self._catch_up)

    def _catch_up(self) -> None:
        """Read each shadow the cloud is behind on whose requests are all answered (the sync's
        correction journals what the cloud lacks); the others are tried again later."""
        self._timer = None
        self._file.save()  # (again, if the last write of the marks failed)
        for shadow in self.marks:
            if self.answered(shadow):
                self.later()
        self.sync.pump()

    def answered(self, shadow: str) -> bool:
        """Read ``shadow`` again at once if the cloud is behind on it and every request of it
        is answered (the sync's correction journals what the cloud lacks): as a request of it
        is answered, and at each catch-up.

        :return: whether the cloud is behind on it and a request of it is still unanswered
            (it is tried again later).
        """
        if shadow not in self.marks or shadow in self._held:  # (held: its own timer reads it)
            return False
        if not self.sync.settled(shadow):
            return True
        self.sync.read_again(shadow)
        return False

    def room(self) -> None:
        """The stream freed room (a cursor save deleted segments): read again at once each
        shadow behind whose last correction the journal refused and whose requests are all
        answered (:meth:`answered`), not at the next catch-up. Each such refusal is tried so
        once: a stream that refuses again waits for the next room or catch-up."""
        if self.sync.sending() and self._want_room:
            waiting, self._want_room = self._want_room, set()
            for shadow in waiting:
                self.answered(shadow)
            self.sync.pump()

    def recheck(self) -> None:
        """While connected, read again at once each shadow the cloud is behind on whose requests
        are all answered now (:meth:`answered`): the sync no longer counts requests it could not
        tell the shadow of (left from before a start, or forgotten) as still to send."""
        if self.sync.sending():
            for shadow in self.marks:
                self.answered(shadow)

    @property
    def unreadable(self) -> int:
        """How many shadows behind the cloud refused the last get of (for good)."""
        return len(self._unreadable)

    def get_refused(self, shadow: str, code: Any, reason: Any) -> bool:
        """The cloud refused a get of ``shadow`` for good (an answer other than 404, 429 or
        5xx: a policy denying it, 403, or a bad request, 400). A shadow behind keeps its mark
        (only a read can tell what the cloud lacks) and is read again after
        :attr:`get_retry_policy`'s delay, longer at each refusal in a row, up to
        :data:`GET_RETRY_MAX_DELAY`: not at once as its requests are answered, nor at every
        catch-up (a line and a get every few seconds, for ever), nor never again until the
        next connect. Counted, and logged the first time in a row.

        :return: whether ``shadow`` is behind (the refusal is then logged here).
        """
        if shadow not in self.marks:
            return False
        self.gets_refused += 1
        attempt = self._unreadable.get(shadow, 0)
        self._unreadable[shadow] = attempt + 1
        delay = self.get_retry_policy(attempt)
        if not attempt:
            self.log.warn("shadow {shadow}: get refused for good: {code} {reason}; the cloud stays behind on it,"
                          " read again in {delay:.0f} s, then at most every {most:.0f} s until a read is answered"
                          " (does the cloud's policy let this client get it?)", shadow=shadows.shown_shadow(shadow),
                          code=code, reason=reason, delay=delay, most=GET_RETRY_MAX_DELAY)
        held = self._held.pop(shadow, None)
        if held is not None and held.active():
            held.cancel()
        if self.sync.sending():
            self._held[shadow] = self.clock.callLater(delay, self._read_held, shadow)
        return True

    def _read_held(self, shadow: str) -> None:
        """Read again a shadow behind whose get the cloud refused (or wait for its requests)."""
        del self._held[shadow]
        if self.answered(shadow):
            self.later()
        self.sync.pump()

    def read(self, shadow: str) -> None:
        """A get of ``shadow`` was answered (found or not): its gets are refused no more."""
        refusals = self._unreadable.pop(shadow, None)
        if refusals is not None:
            self.log.info("shadow {shadow}: read again after {count} gets refused", shadow=shadows.shown_shadow(shadow),
                          count=refusals)

    def cancel(self) -> None:
        """Stop the catch-up timers (the connection is gone: the next connect reads them)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for held in self._held.values():
            if held.active():
                held.cancel()
        self._held.clear()
