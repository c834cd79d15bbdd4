"""The twin's changes as shadow requests in the journal: a change checked against AWS IoT's
limits before the twin takes it, and the requests a durable change needs appended to the
stream ``shadow-<link>``."""

from __future__ import annotations

import json
from typing import Any, Iterable, cast

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.python.failure import Failure

from gateway.journal.record import Record, encode
from gateway.links.stream import LinkStream
from gateway.shown import shown_repr
from gateway.twin import shadows
from gateway.twin.catchup import ShadowCatchUp
from gateway.twin.ditto import DittoError
from gateway.twin.document import MISSING, diff
from gateway.twin.settings import TwinSettings
from gateway.twin.shadowstream import CURSOR


def shadow_request(thing: str, shadow: str, operation: str, body: dict[str, Any], received: float) -> Record:
    """The journal record of one request to a shadow of the AWS thing ``thing``."""
    return Record(shadows.shadow_topic(thing, shadow, operation), json.dumps(body).encode(), 1, False, received)


def sendable_sections(root: str, thing_id: str, thing: Any) -> dict[str, dict[str, Any]]:
    """The shadows of the twin's thing ``thing_id`` (``root``: the twin's root thing), but those
    whose name AWS IoT does not take (a twin file from before :meth:`ShadowAppends.validate`
    refused them, or from before the shadow link): no request to them can succeed, and one
    whose name holds a wildcard would close the connection."""
    sections = shadows.shadow_sections(root, thing_id, thing)
    return {shadow: reported for shadow, reported in sections.items() if shadows.valid_name(shadow)}


class ShadowAppends:
    """Journals the shadow requests of the twin's changes for one shadow sync.

    :param settings: the ``twin:`` section.
    :param twin: the running :class:`~gateway.twin.service.TwinService`.
    :param stream: the journal stream ``shadow-<link>``.
    :param clock: when a request was made.
    :param thing: the AWS thing name.
    :param catch_up: told of each request the journal refuses.
    :param max_record_bytes: the stream's ``max_bytes``: a change whose shadow's update
        request, whole, would be a larger record is refused (413), since the stream could
        never hold it; ``None``: not checked.
    """

    def __init__(self, settings: TwinSettings, twin: Any, stream: LinkStream, clock: Any, thing: str,
                 catch_up: ShadowCatchUp, max_record_bytes: int | None = None) -> None:
        self.settings = settings
        self.twin = twin
        self.stream = stream
        self.clock = clock
        self.thing = thing
        self.catch_up = catch_up
        self.max_record_bytes = max_record_bytes
        self._appending: dict[str, int] = {}  # shadow -> its appends under way
        #: shadow -> the seq of its last record journaled, until that record is answered, the
        #: stream's reader passes it (:meth:`passed`) or the journal drops it unread; in the order
        #: they were journaled; ``max_things`` shadows at most, the latest (:meth:`_bound`)
        self._last_appended: dict[str, int] = {}
        #: The last seq of the records of shadows :meth:`_bound` forgot before the reader read them
        #: (0: none): until the reader passes it, a shadow not in :attr:`_last_appended` may have a
        #: record not read yet. (Always above :attr:`_last_read` when not 0: :meth:`passed` clears it.)
        self._forgotten = 0
        self._last_read = 0  # the reader's, at the last :meth:`passed`
        self._first_kept = 1  # the stream's oldest record kept, at the last :meth:`_bound`

    def validate(self, thing_id: str, before: Any, after: Any) -> None:
        """Refuse a twin change whose shadow would be over AWS IoT's limits (413, 400), or
        would have a name AWS IoT does not take (400), or whose update request, whole (as a
        catch-up journals it), the shadow stream could never hold (413)."""
        old = shadows.shadow_sections(self.twin.root, thing_id, before)
        new = shadows.shadow_sections(self.twin.root, thing_id, after)
        for shadow in new.keys() - old.keys():
            if not shadows.valid_name(shadow):
                raise DittoError(400, "things:shadow.name",
                                 f"shadow {shown_repr(shadow)} is no AWS IoT shadow name "
                                 f"({shadows.SHADOW_NAME_RULE}): rename the feature or child thing")
        for shadow, reported in new.items():
            if old.get(shadow) != reported:
                problem = shadows.size_problem(shadow, reported, self.settings.max_document_bytes,
                                               self.settings.max_depth)
                if problem is not None:
                    raise DittoError(problem[0], "things:shadow.toolarge" if problem[0] == 413
                                     else "things:shadow.toodeep", problem[1])
                limit = self.max_record_bytes
                if limit is not None:
                    request = shadow_request(self.thing, shadow, "update", {"state": {"reported": reported}}, 0.0)
                    size = len(encode(request, 0))
                    if size > limit:
                        raise DittoError(413, "things:shadow.toolarge",
                                         f"shadow {shadows.shown_shadow(shadow)} would need a journal record of {size}"
                                         f" bytes, larger than the max_bytes ({limit} bytes) of journal stream"
                                         f" 'shadow-{self.settings.shadow_link}': it could never reach the cloud")

    def prepare(self, thing_id: str, before: Any, after: Any) -> Deferred[None] | None:
        """Before a twin change is written: mark each shadow it deletes (a thing or feature
        gone), so that a crash before the delete is journaled still deletes it; fires once the
        marks are durable (``None``: it deletes none). (The names alone: no copy of the states.)"""
        new = set(shadows.shadow_names(self.twin.root, thing_id, after))
        marks = [self.catch_up.deleting(thing_id, shadow)
                 for shadow in shadows.shadow_names(self.twin.root, thing_id, before)
                 if shadow not in new and shadows.valid_name(shadow)]
        return gatherResults(marks).addCallback(lambda _: None) if marks else None

    def twin_changed(self, thing_id: str, before: Any, after: Any) -> Deferred[str | None]:
        """Journal the shadow requests a durable twin change needs; fires once they are durable,
        with ``None``, or, when the journal refused one (the stream full, a failed write), with
        why the cloud is behind on the change: its shadow is then brought up to date when the
        stream takes appends again (the change stays in the twin, answered and announced)."""
        old = sendable_sections(self.twin.root, thing_id, before)
        new = sendable_sections(self.twin.root, thing_id, after)
        appends = []
        for shadow in list(old) + [s for s in new if s not in old]:
            if shadow not in new:
                appends.append(self.append(thing_id, shadow, "delete", {}).addCallback(self._deleted, shadow))
                continue
            patch = diff(old.get(shadow, {}), new[shadow])
            if patch is not MISSING and patch != {}:
                appends.append(self.append(thing_id, shadow, "update", {"state": {"reported": patch}}))
        if not appends:
            return succeed(None)
        return gatherResults(appends).addCallback(lambda refusals: next((r for r in refusals if r), None))

    def _deleted(self, refusal: str | None, shadow: str) -> str | None:
        """The delete of ``shadow`` was journaled (``refusal`` ``None``; else the journal refused
        it, and its mark stays): its mark made before the change was written goes."""
        if refusal is None:
            self.catch_up.delete_journaled(shadow)
        return refusal

    def append(self, thing_id: str, shadow: str, operation: str, body: dict[str, Any]) -> Deferred[str | None]:
        """Journal one request; fires with ``None`` once durable, or with why the cloud is behind
        on ``shadow`` when the journal refused it (the shadow is then marked behind)."""
        record = shadow_request(self.thing, shadow, operation, body, self.clock.seconds())
        self._appending[shadow] = self._appending.get(shadow, 0) + 1

        def journaled(seq: int) -> str | None:
            last = max(seq, self._last_appended.pop(shadow, 0))
            self._last_appended[shadow] = last  # (last in the order: :meth:`passed` walks the oldest first)
            self._bound()
            return None

        def refused(failure: Failure) -> Deferred[str | None]:
            # (the reason, once the shadow's mark is durable: Deferred is invariant, its result is not)
            return cast("Deferred[str | None]", self.catch_up.refused(thing_id, shadow, failure))

        def settled(result: str | None) -> str | None:
            self._appending[shadow] -= 1
            if not self._appending[shadow]:
                del self._appending[shadow]
            return result

        return self.stream.append(record).addCallbacks(journaled, refused).addCallback(settled)

    def started(self) -> None:
        """The sync's cursor exists, its reader not started: the requests the stream holds from
        before the start, not acknowledged, are for shadows not known until the reader passes
        them (it reads :data:`~gateway.twin.shadowstream.READ_AHEAD` at most), so until then a
        shadow not remembered counts as journaling (:meth:`journaling`), as after
        :meth:`_bound` forgot one."""
        if self.stream.unacked(CURSOR):
            self._forgotten = max(self._forgotten, self.stream.next_seq - 1)

    def journaling(self, shadow: str) -> bool:
        """Whether a request of ``shadow`` is being journaled, or was and is not answered yet (nor
        dropped by the journal unread). A shadow whose last request was forgotten
        (:meth:`_bound`) counts as journaling while a forgotten request may be unread."""
        if shadow in self._appending:
            return True
        last = self._last_appended.get(shadow, self._forgotten)
        return last > 0 and not self._last_read < last < self.stream.first_kept_seq

    def _bound(self) -> None:
        """Let go of the shadows whose last request the journal dropped unread (below the stream's
        oldest record kept, after the last the reader read: no answer to it will come), then of
        the oldest beyond ``max_things``, noting the last seq forgotten (:meth:`journaling`).
        Offline the reader stops at :data:`~gateway.twin.shadowstream.READ_AHEAD` records, so
        without this the sync would remember every shadow journaled after them (an app naming a
        new thing every second, for a week: 600,000) until a reconnect."""
        first_kept = self.stream.first_kept_seq
        if first_kept != self._first_kept:  # (the journal dropped or deleted records since)
            self._first_kept = first_kept
            dropped = [shadow for shadow, seq in self._last_appended.items() if self._last_read < seq < first_kept]
            for shadow in dropped:
                del self._last_appended[shadow]
        while len(self._last_appended) > self.settings.max_things:
            shadow = next(iter(self._last_appended))  # (the oldest)
            seq = self._last_appended.pop(shadow)
            if seq > self._last_read:  # (one read is in the reader's pending records until answered)
                self._forgotten = max(self._forgotten, seq)

    def answered(self, shadow: str, seq: int) -> None:
        """The request of ``shadow`` in the record ``seq`` is answered."""
        if self._last_appended.get(shadow) == seq:
            del self._last_appended[shadow]

    def passed(self, last_read: int, pending: Iterable[Record]) -> bool:
        """The stream's reader has read every record up to ``last_read`` and holds ``pending``
        unanswered: a shadow whose last record journaled is at or before ``last_read`` and not
        pending is journaling no more. Its record was answered, or the journal dropped it unread
        (``drop-oldest``, the cloud away for long) and no answer to it will come: kept, it made
        its shadow wait for ever for a catch-up (:meth:`journaling`), and every shadow so
        dropped (an app naming a new thing each time) stayed in memory until a restart.

        :param last_read: the seq of the last record the reader read.
        :param pending: the records read and not answered yet.
        :return: whether shadows journal no more now for that: the last forgotten record
            (:meth:`_bound`, :meth:`started`) was passed, or a shadow's last one dropped unread.
        """
        self._last_read = last_read
        passed_forgotten = 0 < self._forgotten <= last_read
        if passed_forgotten:
            self._forgotten = 0
        if not self._last_appended or next(iter(self._last_appended.values())) > last_read:
            return passed_forgotten  # (no last record passed: the pending records are not walked, as at every read)
        held = {record.seq for record in pending}
        gone = []
        for shadow, seq in self._last_appended.items():  # (oldest first: the walk ends at the first not read)
            if seq > last_read:
                break
            if seq not in held:
                gone.append(shadow)
        for shadow in gone:
            del self._last_appended[shadow]
        return passed_forgotten or bool(gone)
