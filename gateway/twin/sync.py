"""Syncing the twin with AWS IoT device shadows over one MQTT link (Kanto's mapping).

Up: every durable twin change becomes shadow requests (``{"state": {"reported": patch}}``
on ``.../update``, or ``.../delete`` when a thing or feature is gone) appended to the
journal stream ``shadow-<link>``, so nothing is lost offline or across restarts. They are
sent in order per shadow, one at a time per shadow and at most ``max_inflight`` in all,
with ``clientToken`` = the record's seq and ``version`` = the last version seen; a record
is done when ``/accepted`` answers its token. A shadow's updates waiting behind the one sent
go together in its next request (their patches composed), so a shadow changing faster than
the cloud answers keeps up.

Down: ``/update/delta`` goes into the twin's desired state (``desiredProperties`` of a
feature; for attributes, a Ditto live ``merge`` command to the apps).

On each (re)connect every shadow is read with ``get``: its version is noted, its delta
applied, and what the cloud reports that the twin does not is corrected. A 409 (version
conflict) is answered by a fresh ``get``, then the request is sent again with the new
version: nothing is written over a version the gateway has not seen.

A request the journal refuses (the stream full under reject-new, a failed write) leaves its
shadow *behind*: the twin holds the change, the cloud does not. Such a shadow is read again
(at each connect, as soon as its last request journaled before is answered, and every
:data:`~gateway.twin.catchup.CATCH_UP_INTERVAL` seconds while connected) once none of its
requests is left to send, and corrected like at a connect: so the
change reaches the cloud when the stream takes appends again. Which shadows are behind is kept on disk too
(:mod:`gateway.twin.behind`), so that a restart still corrects them.

The parts: :mod:`gateway.twin.shadowappends` (the twin's changes as requests in the
journal), :mod:`gateway.twin.shadowstream` (reading the stream, acknowledging its cursor),
:mod:`gateway.twin.shadowrequests` (the requests in flight: tokens, timeouts, retries),
:mod:`gateway.twin.catchup` (the shadows the cloud is behind on); this module answers the
cloud, corrects the shadows after a get and sends in order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from gateway import jsontext
from gateway.clockstep import steady_seconds
from gateway.links.stream import LinkStream
from gateway.logthrottle import REFUSED_LOG_INTERVAL, LogThrottle, refused_since
from gateway.mqtt.packets import Publish
from gateway.twin import shadows
from gateway.twin.behind import BEHIND_FILE, BehindFile
from gateway.twin.catchup import ShadowCatchUp
from gateway.twin.document import MISSING, diff, merge_patch
from gateway.twin.settings import TwinSettings
from gateway.twin.shadowappends import ShadowAppends, sendable_sections
from gateway.twin.shadowrequests import Request, ShadowRequests, reported_patch
from gateway.twin.shadowstream import ShadowStreamReader
from gateway.twin.snapshot import ShadowSyncSnapshot


class ShadowSync:
    """Keeps one AWS thing's shadows in step with the twin through one link.

    :param settings: the ``twin:`` section.
    :param twin: the running :class:`~gateway.twin.service.TwinService`.
    :param stream: the journal stream ``shadow-<link>``.
    :param clock: timeouts and retries.
    :param thing: the AWS thing name.
    :param retry_policy: ``attempt -> seconds`` before a request refused with 429 or 5xx goes
        again (``attempt``: that shadow's refusals in a row, from 0); by default backoff with
        jitter from :data:`~gateway.twin.shadowrequests.RETRY_DELAY` to
        :data:`~gateway.twin.shadowrequests.RETRY_MAX_DELAY`.
    :param max_record_bytes: the stream's ``max_bytes``: a change whose shadow's update
        request, whole, would be a larger record is refused (413), since the stream could
        never hold it; ``None``: not checked.
    """

    log = Logger()

    def __init__(self, settings: TwinSettings, twin: Any, stream: LinkStream, clock: Any, thing: str,
                 retry_policy: Callable[[int], float] | None = None, max_record_bytes: int | None = None) -> None:
        self.settings = settings
        self.twin = twin
        self.clock = clock
        self.thing = thing
        self.protocol: Any = None
        self.gets: list[str] = []  # shadows to read
        self.versions: dict[str, int] = {}
        #: The version of the last delta taken into the twin per shadow, on this connection: AWS
        #: may deliver deltas out of order, and an older one would undo a newer wish.
        self.delta_versions: dict[str, int] = {}
        #: Shadows read on this connection that have no version to give (absent, deleted, or
        #: a get refused for good): their updates go without one.
        self.absent: set[str] = set()
        #: Shadows read whose correction waits for the stream's records written before the get's
        #: answer (:meth:`_correct_once_read`): their records are not sent meanwhile.
        self.deciding: set[str] = set()
        self._connection = 0  # counts connects and disconnects: a decision waiting across one is dropped
        self.refused = 0  # requests the cloud refused for good (each logged with its shadow, code and message)
        #: The shadows the cloud is behind on (a request of each the journal refused) until
        #: :meth:`_reconcile` journals what it lacks.
        self.behind = ShadowCatchUp(self, BehindFile(twin.store.path.with_name(BEHIND_FILE), twin.store.run_blocking,
                                                     lambda: steady_seconds(clock)), clock, self.log)
        self.appends = ShadowAppends(settings, twin, stream, clock, thing, self.behind, max_record_bytes)
        # (whoever can publish on the shadow topics may send messages that are not JSON in a loop)
        self._not_json_lines = LogThrottle(REFUSED_LOG_INTERVAL, lambda: steady_seconds(clock))
        self.reader = ShadowStreamReader(stream, clock, self.log, self._read, self._cursor_saved)
        self._first_kept = 0  # the stream's first record kept at the last cursor save
        self.requests = ShadowRequests(settings, clock, thing, self.log, self._again, retry_policy)

    @property
    def stopped(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self.reader.stopped

    # -- life -------------------------------------------------------------------------

    def start(self) -> Deferred[None]:
        """Read the shadows the cloud was behind on, create the cursor and start reading (fires
        once the cursor exists)."""
        self.twin.listeners.append(self.appends.twin_changed)
        self.twin.validators.append(self.appends.validate)
        self.twin.preparers.append(self.appends.prepare)
        self.twin.flushers.append(self.behind.compact)  # (the marks made after this sync's stop)
        return self.behind.load().addCallback(lambda _: self.reader.start(self.appends.started))

    def stop(self) -> Deferred[None]:
        """Stop sending and reading (unanswered records stay in the stream). The twin's changes
        are still journaled until the twin stops, which lets go of this sync's hooks: the sync
        stops first, and a change whose write is under way then, or that the twin takes after,
        must reach the stream before its response, for the next start to send it. Fires once
        the marks of the shadows behind are written whole to ``shadows-behind.json`` (what an
        older gateway, a rollback, reads), or that failed (logged)."""
        self.reader.stop()
        self.link_disconnected()
        return self.behind.compact()

    def snapshot(self) -> ShadowSyncSnapshot:
        """Counters for the read side (no I/O)."""
        marks = self.behind.behind
        return ShadowSyncSnapshot(self.thing, self.protocol is not None, len(self.reader.pending),
                                  len(self.requests.inflight), self.refused, len(self.versions), len(marks),
                                  min((mark.since for mark in marks.values()), default=None),
                                  self.behind.unreadable, self.behind.gets_refused)

    # -- replies --------------------------------------------------------------------------

    def cloud_message(self, publish: Publish) -> bool:
        """Take a message on one of the thing's shadow topics (``False``: not one of them)."""
        parsed = shadows.parse_shadow_topic(self.thing, publish.topic)
        if parsed is None:
            return False
        shadow, operation = parsed
        try:
            # (strict: a NaN in a delta went into the twin's desired properties, no JSON then)
            body = jsontext.loads(publish.payload, strict=True)
        except ValueError:
            count = self._not_json_lines.note()
            if count is not None:
                self.log.warn("shadow {shadow}: {operation} message is not JSON, dropped ({since})",
                              shadow=shadows.shown_shadow(shadow),
                              operation=operation, since=refused_since(count))
            return True
        if not isinstance(body, dict):
            return True
        token = str(body.get("clientToken", ""))
        request = self.requests.waiting(token, shadow)
        if operation == "update/delta":
            self._note_version(shadow, body)
            if self._newer_delta(shadow, body.get("version")):
                self._desired(shadow, body.get("state"))
        elif operation == "update/documents":
            current = body.get("current") or {}
            self._note_version(shadow, current)
        elif operation in ("update/accepted", "delete/accepted"):
            if operation == "delete/accepted":
                self.versions.pop(shadow, None)
                self.delta_versions.pop(shadow, None)  # a shadow made again counts from 1
                if request is None:  # someone else deleted it: read it, so that the twin's state goes again
                    self.read_again(shadow)
                    self.pump()
                else:
                    self.absent.add(shadow)
            else:
                self._note_version(shadow, body)
            if request is not None and request.kind == "record":
                self._done(token, request)
        elif operation in ("update/rejected", "delete/rejected") and request is not None:
            self._rejected(token, request, body)
        elif operation == "get/accepted" and request is not None:
            self.requests.finish(token)
            self.requests.accepted(shadow)
            if isinstance(body.get("version"), int):
                self.versions[shadow] = body["version"]
                self.absent.discard(shadow)
            else:
                self.absent.add(shadow)
            self.behind.read(shadow)
            state = body.get("state") or {}
            if self._newer_delta(shadow, body.get("version")):
                self._desired(shadow, state.get("delta"))
            self._correct_once_read(shadow, state.get("reported") or {}, True)
        elif operation == "get/rejected" and request is not None:
            self.requests.finish(token)
            code = body.get("code")
            if code == 429 or (isinstance(code, int) and code >= 500):  # nothing learnt: read it again later
                self.requests.retry_later(shadow, get=True)
                return True
            self.versions.pop(shadow, None)
            self.absent.add(shadow)
            if code == 404:
                self.behind.read(shadow)
                self._correct_once_read(shadow, {}, False)
            else:
                if not self.behind.get_refused(shadow, code, body.get("message")):
                    self.log.warn("shadow {shadow}: get refused: {code} {reason}",
                                  shadow=shadows.shown_shadow(shadow), code=code, reason=body.get("message"))
                self.pump()
        return True

    def _newer_delta(self, shadow: str, version: Any) -> bool:
        """Whether a delta of ``shadow`` at ``version`` is newer than the last one taken into the
        twin (then it is the last one now); a delta without a version is taken."""
        if not isinstance(version, int):
            return True
        if version <= self.delta_versions.get(shadow, -1):
            self.log.info("shadow {shadow}: delta of version {version} ignored: version {last} was taken already",
                          shadow=shadows.shown_shadow(shadow), version=version, last=self.delta_versions[shadow])
            return False
        self.delta_versions[shadow] = version
        return True

    def _note_version(self, shadow: str, body: dict[str, Any]) -> None:
        version = body.get("version")
        if isinstance(version, int) and version > self.versions.get(shadow, -1):
            self.versions[shadow] = version

    def _done(self, token: str, request: Request) -> None:
        """A record's request is answered for good: on to the next. A shadow the cloud is
        behind on whose requests are all answered now is read again at once (its correction
        waited for the next catch-up, up to :data:`~gateway.twin.catchup.CATCH_UP_INTERVAL`)."""
        shadow = request.shadow
        self.requests.finish(token)
        self.requests.accepted(shadow)
        self.appends.answered(shadow, request.records[-1].seq)
        self.reader.answered(request.records)
        self.behind.answered(shadow)
        self.pump()
        self.reader.read()

    def _rejected(self, token: str, request: Request, body: dict[str, Any]) -> None:
        code, message = body.get("code"), str(body.get("message", ""))
        shadow = request.shadow
        lost = code == 404 and request.versioned  # (sent with a version: the shadow was there, then gone)
        if code == 409 or lost:  # someone else changed the shadow, or lost it: read it, then send again
            self.requests.finish(token)
            self.log.info("shadow {shadow}: {why}; reading it before sending again", shadow=shadows.shown_shadow(shadow),
                          why="the cloud has no such shadow any more" if lost else "version conflict")
            self.versions.pop(shadow, None)
            self.absent.discard(shadow)
            self.gets.insert(0, shadow)
            self.pump()
        elif code == 429 or (isinstance(code, int) and code >= 500):
            self.requests.finish(token)
            self.requests.retry_later(shadow)
        elif code == 404 and request.records[0].topic.endswith("/delete"):
            self._done(token, request)  # already gone
        elif len(request.records) > 1:  # (one of them may be bad, not all: each alone tells)
            self.requests.finish(token)
            self.log.info("shadow {shadow}: request {token}, {count} updates merged, refused for good: {code}"
                          " {reason}; sending them again one at a time", shadow=shadows.shown_shadow(shadow), token=token,
                          count=len(request.records), code=code, reason=message)
            self.requests.one_at_a_time(shadow, request.records[-1].seq)
            self.pump()
        else:
            self.log.error("shadow {shadow}: request {token} refused for good: {code} {reason}", shadow=shadows.shown_shadow(shadow),
                           token=token, code=code, reason=message)
            self.refused += 1
            self._done(token, request)

    # -- down into the twin ---------------------------------------------------------------

    def _children(self) -> set[str]:
        return {t for t in self.twin.store.things if t != self.twin.root}

    def _desired(self, shadow: str, state: Any) -> None:
        if not isinstance(state, dict) or not state:
            return
        thing_id, feature = shadows.shadow_target(self.twin.root, shadow, self._children())
        if thing_id not in self.twin.store.things:
            self.log.info("shadow {shadow}: desired state for {thing}, which the twin does not hold", shadow=shadows.shown_shadow(shadow),
                          thing=thing_id)
            return
        if feature is None:
            self.twin.live_command(thing_id, "/attributes", state)
        else:
            self.twin.apply_desired(thing_id, feature, state)

    def _correct_once_read(self, shadow: str, reported: dict[str, Any], exists: bool) -> None:
        """:meth:`_reconcile` ``shadow`` once the stream's records written before now are read
        (which of them wait, and what they leave the shadow, decides the correction: after a
        start, the get's answer can come before the stream's first read), then send what is
        next. The shadow's records are not sent meanwhile; a disconnect drops the decision (the
        next connect's get reads the shadow again)."""
        connection = self._connection
        self.deciding.add(shadow)

        def read(_: None) -> None:
            if self._connection != connection:
                return
            self.deciding.discard(shadow)
            self._reconcile(shadow, reported, exists)
            self.pump()

        self.reader.known().addCallback(read).addErrback(
            lambda failure: self.log.failure("shadow {shadow}: correcting it after its get failed", failure,
                                             shadow=shadows.shown_shadow(shadow)))

    def _reconcile(self, shadow: str, reported: dict[str, Any], exists: bool = True) -> None:
        """After a get: append an update correcting what the cloud reports, unless requests
        for that shadow are still pending and the get found it (they will bring it up to
        date). A shadow the get did not find (the cloud lost it: deleted by someone, an
        emulator restarted) while updates of it are pending is corrected by what those
        updates, applied to nothing, will leave it without. A shadow the cloud is
        :attr:`behind` on (a request of it the journal refused: pending requests do not
        bring it up to date) is corrected once all its requests are answered, and deleted
        when the twin no longer has it.

        :param exists: whether the get found the shadow.
        """
        mark = self.behind.marks.get(shadow)
        if mark is not None:
            if not self.settled(shadow):  # (what the get read is not what they will leave)
                self.behind.later()
                return
            thing_id = mark.thing
        else:
            if any(self._shadow_of(r) == shadow and r.topic.endswith("/update") for r in self.reader.pending):
                if exists:
                    return
                reported = self._left_by_pending(shadow)
            thing_id = shadows.shadow_target(self.twin.root, shadow, self._children())[0]
        sections = sendable_sections(self.twin.root, thing_id, self.twin.store.things.get(thing_id))
        correction: Deferred[str | None] = succeed(None)
        if shadow not in sections:
            if shadow in self.behind.marks and exists:  # (its delete was refused)
                correction = self.appends.append(thing_id, shadow, "delete", {})
        else:
            patch = diff(reported if isinstance(reported, dict) else {}, sections[shadow])
            if patch is not MISSING and patch != {}:
                correction = self.appends.append(thing_id, shadow, "update", {"state": {"reported": patch}})
        self.behind.corrected_by(shadow, correction)

    def _left_by_pending(self, shadow: str) -> dict[str, Any]:
        """The reported state ``shadow``'s pending requests, in turn, leave a shadow that does not
        exist (a delete leaves none; an update's patch is applied)."""
        left: dict[str, Any] = {}
        for record in self.reader.pending:
            if self._shadow_of(record) != shadow:
                continue
            if record.topic.endswith("/delete"):
                left = {}
                continue
            patch = reported_patch(jsontext.loads(record.payload))
            if patch is not None:
                left = merge_patch(left, patch)
        return left

    # -- the connection -------------------------------------------------------------------

    def link_connected(self, protocol: Any) -> None:
        """Subscribe to the replies, read every shadow, then send what is pending."""
        if self.stopped:
            return
        self.protocol = protocol
        self._connection += 1
        protocol.subscribe([(f, 1) for f in shadows.subscriptions(self.thing)])
        wanted: list[str] = []
        for thing_id, thing in self.twin.store.things.items():
            wanted.extend(sendable_sections(self.twin.root, thing_id, thing))
        for record in self.reader.pending:
            parsed = shadows.parse_shadow_topic(self.thing, record.topic)
            if parsed is not None:
                wanted.append(parsed[0])
        wanted.extend(self.behind.marks)
        self.gets = list(dict.fromkeys(wanted))
        self.absent = set()
        self.delta_versions = {}  # (the gets read every shadow afresh)
        self.pump()

    def link_disconnected(self) -> None:
        """Forget what was in flight: it is sent again (same clientToken) on the next connect."""
        self.protocol = None
        self._connection += 1
        self.requests.forget()
        self.behind.cancel()
        self.gets = []
        self.deciding = set()

    def sending(self) -> bool:
        """Whether connected and not stopped."""
        return self.protocol is not None and not self.stopped

    def _read(self) -> None:
        """Records were read: the shadows whose last record the reader passed are journaling no
        more (:meth:`ShadowAppends.passed`), and those the cloud is behind on among them are read
        again at once (after a restart, once the requests left from before are read); then send."""
        if self.appends.passed(self.reader.last_read, self.reader.pending):
            self.behind.recheck()
        self.pump()

    def _cursor_saved(self) -> None:
        """The cursor's save is durable: when it freed segments of the stream, the shadows whose
        correction the stream refused are read again at once (:meth:`ShadowCatchUp.room`), not
        at the next catch-up: under reject-new, the answers to the requests that filled it make
        the room for their corrections."""
        first_kept = self.reader.stream.first_kept_seq
        if first_kept != self._first_kept:
            self._first_kept = first_kept
            self.behind.room()

    def pump(self) -> None:
        """Send gets, then records, keeping one request per shadow and ``max_inflight`` in all;
        a shadow's request takes in the updates of it waiting right behind its first record."""
        if not self.sending():
            return
        limit = self.settings.max_inflight
        inflight, busy = self.requests.inflight, self.requests.busy
        self._read_unknown()
        while self.gets and len(inflight) < limit:
            shadow = self.gets[0]
            if shadow in busy:
                break
            self.gets.pop(0)
            self.requests.send_get(self.protocol, shadow)
        if self.gets:
            return  # records wait until every shadow is read (its version known)
        waiting: dict[str, list[Any]] = {}  # shadow -> its records pending, in order
        for record in self.reader.pending:
            waiting.setdefault(self._shadow_of(record) or shadows.CLASSIC, []).append(record)
        for shadow, records in waiting.items():
            if len(inflight) >= limit:
                break
            if shadow not in busy and shadow not in self.deciding:
                self.requests.send_records(self.protocol, shadow, records, self.versions.get(shadow))

    def _again(self, shadow: str, get: bool) -> None:
        """``shadow`` is free again after a timeout or a wait: send again (its get first when
        ``get``)."""
        if get:
            self.gets.insert(0, shadow)
        self.pump()

    def _read_unknown(self) -> None:
        """Queue a get for each shadow a pending update is for whose version is unknown
        and that was not read on this connection (one the twin made while connected)."""
        for record in self.reader.pending:
            parsed = shadows.parse_shadow_topic(self.thing, record.topic)
            if parsed is None or parsed[1] != "update":
                continue
            shadow = parsed[0]
            if (shadow not in self.versions and shadow not in self.absent and shadow not in self.gets
                    and shadow not in self.requests.busy):
                self.gets.append(shadow)

    # -- shadows the cloud is behind on --------------------------------------------------

    def _shadow_of(self, record: Any) -> str | None:
        """The shadow a record of the stream is for (``None``: not a shadow request)."""
        parsed = shadows.parse_shadow_topic(self.thing, record.topic)
        return parsed[0] if parsed is not None else None

    def settled(self, shadow: str) -> bool:
        """Whether every request of ``shadow`` journaled so far was sent and answered: then a
        get reads what they made of it, and a correction journaled after it goes last."""
        return not self.appends.journaling(shadow) and all(self._shadow_of(r) != shadow for r in self.reader.pending)

    def read_again(self, shadow: str) -> None:
        """Queue a get of ``shadow``, unless one is queued or a request of it is in flight."""
        if shadow not in self.gets and shadow not in self.requests.busy:
            self.gets.append(shadow)
