"""Syncing the twin with AWS IoT device shadows over one MQTT link (Kanto's mapping).

Up: every durable twin change becomes shadow requests (``{"state": {"reported": patch}}``
on ``.../update``, or ``.../delete`` when a thing or feature is gone) appended to the
journal stream ``shadow-<link>``, so nothing is lost offline or across restarts. They are
sent in order per shadow, one at a time per shadow and at most ``max_inflight`` in all,
with ``clientToken`` = the record's seq and ``version`` = the last version seen; a record
is done when ``/accepted`` answers its token.

Down: ``/update/delta`` goes into the twin's desired state (``desiredProperties`` of a
feature; for attributes, a Ditto live ``merge`` command to the apps).

On each (re)connect every shadow is read with ``get``: its version is noted, its delta
applied, and what the cloud reports that the twin does not is corrected. A 409 (version
conflict) is answered by a fresh ``get``, then the request is sent again with the new
version: nothing is written over a version the gateway has not seen.

A request the journal refuses (the stream full under reject-new, a failed write) leaves its
shadow *behind*: the twin holds the change, the cloud does not. Such a shadow is read again
(every :data:`CATCH_UP_INTERVAL` seconds while connected, and at each connect) once none of
its requests is left to send, and corrected like at a connect: so the change reaches the
cloud when the stream takes appends again. Which shadows are behind is kept on disk too
(:mod:`gateway.twin.behind`), so that a restart still corrects them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway import jsontext
from gateway.clockstep import steady_seconds
from gateway.errors import JournalError
from gateway.journal.record import Record, encode
from gateway.mqtt.packets import Publish
from gateway.links.readretry import READ_FAILURE_LOG_INTERVAL, READ_RETRY_INTERVAL, ReadRetry
from gateway.links.stream import LinkStream
from gateway.logthrottle import LogThrottle
from gateway.operations.retry import lazy_backoff
from gateway.shown import shown_repr
from gateway.twin import shadows
from gateway.twin.behind import BEHIND_FILE, BehindFile, BehindMark
from gateway.twin.ditto import DittoError
from gateway.twin.document import MISSING, diff
from gateway.twin.settings import TwinSettings
from gateway.twin.snapshot import ShadowSyncSnapshot

#: The cursor the sync reads its stream with.
CURSOR = "shadow"
#: Seconds before a request refused with 429 or 5xx is first tried again; while its shadow's
#: requests keep being refused the wait grows (1.5-fold, plus up to a second of jitter) to
#: RETRY_MAX_DELAY.
RETRY_DELAY = 2.0
RETRY_MAX_DELAY = 60.0
#: Seconds between two log lines about cursor saves the disk refused, at least.
CURSOR_FAILURE_LOG_INTERVAL = 60.0
#: Seconds between two log lines about requests the cloud did not answer in time, at least.
UNANSWERED_LOG_INTERVAL = 600.0
#: Records read ahead from the stream at most.
READ_AHEAD = 500
#: Seconds between two attempts to bring up to date a shadow whose request the journal refused.
CATCH_UP_INTERVAL = 5.0
#: The end of the twin's answer to a change whose shadow request the journal refused.
BEHIND = "the shadow is brought up to date when the stream takes appends again"


@dataclass
class Request:
    """A request waiting for its reply."""

    kind: str  # "get" or "record"
    shadow: str
    record: Any
    timer: IDelayedCall | None


class ShadowSync:
    """Keeps one AWS thing's shadows in step with the twin through one link.

    :param settings: the ``twin:`` section.
    :param twin: the running :class:`~gateway.twin.service.TwinService`.
    :param stream: the journal stream ``shadow-<link>``.
    :param clock: timeouts and retries.
    :param thing: the AWS thing name.
    :param retry_policy: ``attempt -> seconds`` before a request refused with 429 or 5xx goes
        again (``attempt``: that shadow's refusals in a row, from 0); by default backoff with
        jitter from :data:`RETRY_DELAY` to :data:`RETRY_MAX_DELAY`.
    :param max_record_bytes: the stream's ``max_bytes``: a change whose shadow's update
        request, whole, would be a larger record is refused (413), since the stream could
        never hold it; ``None``: not checked.
    """

    log = Logger()

    def __init__(self, settings: TwinSettings, twin: Any, stream: LinkStream, clock: Any, thing: str,
                 retry_policy: Callable[[int], float] | None = None, max_record_bytes: int | None = None) -> None:
        self.settings = settings
        self.max_record_bytes = max_record_bytes
        self.twin = twin
        self.stream = stream
        self.clock = clock
        self.thing = thing
        self.protocol: Any = None
        self.pending: list[Any] = []  # records read, not yet answered, in seq order
        self.inflight: dict[str, Request] = {}  # clientToken -> request
        self.busy: set[str] = set()  # shadows with a request in flight or waiting to retry
        self.gets: list[str] = []  # shadows to read
        self.versions: dict[str, int] = {}
        #: The version of the last delta taken into the twin per shadow, on this connection: AWS
        #: may deliver deltas out of order, and an older one would undo a newer wish.
        self.delta_versions: dict[str, int] = {}
        #: Shadows read on this connection that have no version to give (absent, deleted, or
        #: a get refused for good): their updates go without one.
        self.absent: set[str] = set()
        self.refused = 0  # requests the cloud refused for good (each logged with its shadow, code and message)
        #: Shadows a request of which the journal refused -> their thing id and since when: the
        #: cloud is behind on them until :meth:`_reconcile` journals what it lacks. Written to
        #: :data:`~gateway.twin.behind.BEHIND_FILE` whenever it changes, read at the start.
        self.behind: dict[str, BehindMark] = {}
        self._behind_file = BehindFile(twin.store.path.with_name(BEHIND_FILE), twin.store.run_blocking,
                                       lambda: steady_seconds(clock))
        self._appending: dict[str, int] = {}  # shadow -> its appends under way
        #: shadow -> the seq of its last record journaled, until that record is answered
        self._last_appended: dict[str, int] = {}
        self._refusals: dict[str, int] = {}  # shadow behind -> its requests the journal refused
        self._catch_up_timer: IDelayedCall | None = None
        self._last_read = 0
        self._acked = 0
        self._reading = False
        self._get_count = 0
        #: shadow -> the clientToken of its get awaiting an answer: sent again with it, so that an
        #: answer slower than request_timeout still reads the shadow (a new token at each timeout
        #: would drop every late answer, and a cloud always that slow would never be read)
        self._get_tokens: dict[str, str] = {}
        #: clientTokens of requests unanswered within request_timeout (and sent again), on this
        #: connection: their answers, late, do not make the next unanswered request news
        self._overdue: set[str] = set()
        self._timers: list[IDelayedCall] = []
        self.retry_policy = retry_policy or lazy_backoff(initialDelay=RETRY_DELAY, maxDelay=RETRY_MAX_DELAY)
        self._throttled: dict[str, int] = {}  # shadow -> its 429/5xx refusals in a row
        self._cursor_failure_lines = LogThrottle(CURSOR_FAILURE_LOG_INTERVAL, lambda: steady_seconds(clock))
        self._unanswered_lines = LogThrottle(UNANSWERED_LOG_INTERVAL, lambda: steady_seconds(clock))
        self._read_retry = ReadRetry(clock, self._read, READ_RETRY_INTERVAL, READ_FAILURE_LOG_INTERVAL)
        self.stopped = False

    # -- life -------------------------------------------------------------------------

    def start(self) -> Deferred[None]:
        """Read the shadows the cloud was behind on, create the cursor and start reading (fires
        once the cursor exists)."""
        self.twin.listeners.append(self.twin_changed)
        self.twin.validators.append(self.validate)
        d = self._behind_file.load().addCallback(self._behind_loaded)
        return d.addCallback(lambda _: self.stream.cursor(CURSOR)).addCallback(lambda _: self._read())

    def _behind_loaded(self, saved: dict[str, BehindMark]) -> None:
        """Take the marks saved before the restart (those made since the start stay, and then
        the whole is written)."""
        if saved:
            self.log.info("shadows the cloud is behind on since before the start: {shadows}; read and corrected"
                          " at the connect", shadows=", ".join(repr(s) for s in sorted(saved)))
        made = bool(self.behind)
        self.behind = {**saved, **self.behind}
        for shadow in saved:
            self._refusals.setdefault(shadow, 0)
        if made and saved:
            self._behind_file.save(self.behind)

    def stop(self) -> None:
        """Stop sending and reading (unanswered records stay in the stream). The twin's changes
        are still journaled until the twin stops, which lets go of this sync's hooks: the sync
        stops first, and a change whose write is under way then, or that the twin takes after,
        must reach the stream before its response, for the next start to send it."""
        self.stopped = True
        self._read_retry.stop()
        self.link_disconnected()

    def snapshot(self) -> ShadowSyncSnapshot:
        """Counters for the read side (no I/O)."""
        return ShadowSyncSnapshot(self.thing, self.protocol is not None, len(self.pending), len(self.inflight),
                                  self.refused, len(self.versions), len(self.behind),
                                  min((mark.since for mark in self.behind.values()), default=None))

    # -- twin side ------------------------------------------------------------------------

    def _sections(self, thing_id: str, thing: Any) -> dict[str, dict[str, Any]]:
        """The thing's shadows, but those whose name AWS IoT does not take (a twin file from
        before :meth:`validate` refused them, or from before the shadow link): no request to
        them can succeed, and one whose name holds a wildcard would close the connection."""
        sections = shadows.shadow_sections(self.twin.root, thing_id, thing)
        return {shadow: reported for shadow, reported in sections.items() if shadows.valid_name(shadow)}

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
                    request = self._request(shadow, "update", {"state": {"reported": reported}}, 0.0)
                    size = len(encode(request, 0))
                    if size > limit:
                        raise DittoError(413, "things:shadow.toolarge",
                                         f"shadow {shadow or '(classic)'} would need a journal record of {size}"
                                         f" bytes, larger than the max_bytes ({limit} bytes) of journal stream"
                                         f" 'shadow-{self.settings.shadow_link}': it could never reach the cloud")

    def twin_changed(self, thing_id: str, before: Any, after: Any) -> Deferred[str | None]:
        """Journal the shadow requests a durable twin change needs; fires once they are durable,
        with ``None``, or, when the journal refused one (the stream full, a failed write), with
        why the cloud is behind on the change: its shadow is then brought up to date when the
        stream takes appends again (the change stays in the twin, answered and announced)."""
        old, new = self._sections(thing_id, before), self._sections(thing_id, after)
        appends = []
        for shadow in list(old) + [s for s in new if s not in old]:
            if shadow not in new:
                appends.append(self._append(thing_id, shadow, "delete", {}))
                continue
            patch = diff(old.get(shadow, {}), new[shadow])
            if patch is not MISSING and patch != {}:
                appends.append(self._append(thing_id, shadow, "update", {"state": {"reported": patch}}))
        if not appends:
            return succeed(None)
        return gatherResults(appends).addCallback(lambda refusals: next((r for r in refusals if r), None))

    def _append(self, thing_id: str, shadow: str, operation: str, body: dict[str, Any]) -> Deferred[str | None]:
        """Journal one request; fires with ``None`` once durable, or with why the cloud is behind
        on ``shadow`` when the journal refused it (the shadow is then :attr:`behind`)."""
        record = self._request(shadow, operation, body, self.clock.seconds())
        self._appending[shadow] = self._appending.get(shadow, 0) + 1

        def journaled(seq: int) -> None:
            self._last_appended[shadow] = max(seq, self._last_appended.get(shadow, 0))

        def refused(failure: Failure) -> str:
            if not failure.check(OSError, JournalError):
                self.log.failure("shadow {shadow}: request not journaled", failure, shadow=shadow or "(classic)")
            elif shadow not in self.behind:
                self.log.warn("shadow {shadow}: request not journaled ({error}): the cloud is behind on it until"
                              " the stream takes appends again", shadow=shadow or "(classic)",
                              error=failure.getErrorMessage())
            if shadow not in self.behind:
                self.behind[shadow] = BehindMark(thing_id, self.clock.seconds())
                self._behind_file.save(self.behind)
            self._refusals[shadow] = self._refusals.get(shadow, 0) + 1
            self._catch_up_later()
            return f"the shadow request was not journaled: {failure.getErrorMessage()}; {BEHIND}"

        def settled(result: str | None) -> str | None:
            self._appending[shadow] -= 1
            if not self._appending[shadow]:
                del self._appending[shadow]
            return result

        return self.stream.append(record).addCallbacks(journaled, refused).addCallback(settled)

    def _request(self, shadow: str, operation: str, body: dict[str, Any], received: float) -> Record:
        """The journal record of one shadow request."""
        return Record(shadows.shadow_topic(self.thing, shadow, operation), json.dumps(body).encode(), 1, False,
                      received)

    # -- shadows the cloud is behind on --------------------------------------------------

    def _shadow_of(self, record: Any) -> str | None:
        """The shadow a record of the stream is for (``None``: not a shadow request)."""
        parsed = shadows.parse_shadow_topic(self.thing, record.topic)
        return parsed[0] if parsed is not None else None

    def _settled(self, shadow: str) -> bool:
        """Whether every request of ``shadow`` journaled so far was sent and answered: then a
        get reads what they made of it, and a correction journaled after it goes last."""
        return (shadow not in self._appending and shadow not in self._last_appended
                and all(self._shadow_of(r) != shadow for r in self.pending))

    def _catch_up_later(self) -> None:
        """Read the shadows the cloud is behind on again after :data:`CATCH_UP_INTERVAL` (while
        connected: a connect reads them anyway)."""
        if self.protocol is not None and not self.stopped and self._catch_up_timer is None:
            self._catch_up_timer = self.clock.callLater(CATCH_UP_INTERVAL, self._catch_up)

    def _catch_up(self) -> None:
        """Read each shadow the cloud is behind on whose requests are all answered (its
        :meth:`_reconcile` journals what the cloud lacks); the others are tried again later."""
        self._catch_up_timer = None
        self._behind_file.save()  # (again, if the last write of the marks failed)
        for shadow in self.behind:
            if not self._settled(shadow):
                self._catch_up_later()
            elif shadow not in self.gets and shadow not in self.busy:
                self.gets.append(shadow)
        self.pump()

    # -- reading the stream ----------------------------------------------------------------

    def _read(self) -> None:
        if self._reading or self.stopped or len(self.pending) >= READ_AHEAD:
            return
        self._reading = True
        self.stream.read(CURSOR, max_records=READ_AHEAD - len(self.pending)).addCallbacks(
            self._got, self._read_failed)

    def _read_failed(self, failure: Any) -> None:
        """A read failed: tried again after :data:`READ_RETRY_INTERVAL`; logged at most once per
        :data:`READ_FAILURE_LOG_INTERVAL`."""
        self._reading = False
        count = self._read_retry.failed()
        if count is not None:
            if failure.check(OSError, JournalError):
                self.log.error("reading the shadow stream failed ({count} since the last such line; tried again every"
                               " {interval:g} s, logged at most once a minute): {error}", count=count,
                               interval=READ_RETRY_INTERVAL, error=failure.getErrorMessage())
            else:
                self.log.failure("reading the shadow stream failed", failure)

    def _got(self, records: list[Any]) -> None:
        self._reading = False
        failures = self._read_retry.succeeded()  # (the next failure is logged at once)
        if failures:
            self.log.info("the shadow stream is read again, after {count} failed reads", count=failures)
        if self.stopped:
            return
        if records:
            self.pending.extend(records)
            self._last_read = records[-1].seq
            self.pump()
            self._read()
        else:
            self.stream.wait(CURSOR).addCallback(lambda _: self._read())

    # -- the connection -------------------------------------------------------------------

    def link_connected(self, protocol: Any) -> None:
        """Subscribe to the replies, read every shadow, then send what is pending."""
        if self.stopped:
            return
        self.protocol = protocol
        protocol.subscribe([(f, 1) for f in shadows.subscriptions(self.thing)])
        wanted: list[str] = []
        for thing_id, thing in self.twin.store.things.items():
            wanted.extend(self._sections(thing_id, thing))
        for record in self.pending:
            parsed = shadows.parse_shadow_topic(self.thing, record.topic)
            if parsed is not None:
                wanted.append(parsed[0])
        wanted.extend(self.behind)
        self.gets = list(dict.fromkeys(wanted))
        self.absent = set()
        self.delta_versions = {}  # (the gets read every shadow afresh)
        self.pump()

    def link_disconnected(self) -> None:
        """Forget what was in flight: it is sent again (same clientToken) on the next connect."""
        self.protocol = None
        for request in self.inflight.values():
            if request.timer is not None and request.timer.active():
                request.timer.cancel()
        for timer in self._timers:
            if timer.active():
                timer.cancel()
        self._timers = []
        if self._catch_up_timer is not None:
            self._catch_up_timer.cancel()
            self._catch_up_timer = None
        self.inflight.clear()
        self.busy.clear()
        self.gets = []
        self._get_tokens.clear()
        self._overdue.clear()

    def pump(self) -> None:
        """Send gets, then records, keeping one request per shadow and ``max_inflight`` in all."""
        if self.protocol is None or self.stopped:
            return
        limit = self.settings.max_inflight
        self._read_unknown()
        while self.gets and len(self.inflight) < limit:
            shadow = self.gets[0]
            if shadow in self.busy:
                break
            self.gets.pop(0)
            self._send_get(shadow)
        if self.gets:
            return  # records wait until every shadow is read (its version known)
        seen: set[str] = set()
        in_flight = {id(r.record) for r in self.inflight.values()}
        for record in self.pending:
            if len(self.inflight) >= limit:
                break
            parsed = shadows.parse_shadow_topic(self.thing, record.topic)
            shadow = parsed[0] if parsed else ""
            if shadow in seen:
                continue
            seen.add(shadow)
            if shadow in self.busy or id(record) in in_flight:
                continue
            self._send_record(shadow, record)

    def _read_unknown(self) -> None:
        """Queue a get for each shadow a pending update is for whose version is unknown
        and that was not read on this connection (one the twin made while connected)."""
        for record in self.pending:
            parsed = shadows.parse_shadow_topic(self.thing, record.topic)
            if parsed is None or parsed[1] != "update":
                continue
            shadow = parsed[0]
            if (shadow not in self.versions and shadow not in self.absent and shadow not in self.gets
                    and shadow not in self.busy):
                self.gets.append(shadow)

    def _send(self, topic: str, body: dict[str, Any], request: Request, token: str) -> None:
        request.timer = self.clock.callLater(self.settings.request_timeout, self._timed_out, token)
        self.inflight[token] = request
        self.busy.add(request.shadow)
        # compact, as shadows.size_problem measured it against max_document_bytes
        self.protocol.publish(topic, json.dumps(body, separators=(",", ":")).encode(), 0, False, 0, False)

    def _send_get(self, shadow: str) -> None:
        token = self._get_tokens.get(shadow)
        if token is None:
            self._get_count += 1
            token = self._get_tokens[shadow] = f"get-{self._get_count}"
        self._send(shadows.shadow_topic(self.thing, shadow, "get"), {"clientToken": token},
                   Request("get", shadow, None, None), token)

    def _send_record(self, shadow: str, record: Any) -> None:
        body = json.loads(record.payload)
        body["clientToken"] = str(record.seq)
        if record.topic.endswith("/update") and shadow in self.versions:
            body["version"] = self.versions[shadow]
        self._send(record.topic, body, Request("record", shadow, record, None), str(record.seq))

    def _timed_out(self, token: str) -> None:
        request = self.inflight.pop(token, None)
        if request is None:
            return
        self._overdue.add(token)
        # (a cloud that never answers, its policy not allowing the shadow topics say, would
        # otherwise write a line per shadow every request_timeout, for ever)
        count = self._unanswered_lines.note()
        if count is not None:
            self.log.warn("shadow {shadow}: no answer to request {token} within {timeout:g} s; sending it again"
                          " ({count} unanswered since the last such line; logged at most once every {interval:g}"
                          " minutes until one is answered in time): does the cloud serve the shadows of {thing},"
                          " and does its policy let this client use their topics?",
                          shadow=request.shadow or "(classic)", token=token, timeout=self.settings.request_timeout,
                          count=count, interval=UNANSWERED_LOG_INTERVAL / 60, thing=self.thing)
        self.busy.discard(request.shadow)
        if request.kind == "get":
            self.gets.insert(0, request.shadow)
        self.pump()

    # -- replies --------------------------------------------------------------------------

    def cloud_message(self, publish: Publish) -> bool:
        """Take a message on one of the thing's shadow topics (``False``: not one of them)."""
        parsed = shadows.parse_shadow_topic(self.thing, publish.topic)
        if parsed is None:
            return False
        shadow, operation = parsed
        try:
            body = jsontext.loads(publish.payload)
        except ValueError:
            self.log.warn("shadow {shadow}: {operation} message is not JSON", shadow=shadow, operation=operation)
            return True
        if not isinstance(body, dict):
            return True
        token = str(body.get("clientToken", ""))
        request = self.inflight.get(token)
        if request is not None and request.shadow != shadow:
            request = None
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
                self.absent.add(shadow)
            else:
                self._note_version(shadow, body)
            if request is not None and request.kind == "record":
                self._done(token, request)
        elif operation in ("update/rejected", "delete/rejected") and request is not None:
            self._rejected(token, request, body)
        elif operation == "get/accepted" and request is not None:
            self._finish(token)
            self._throttled.pop(shadow, None)
            if isinstance(body.get("version"), int):
                self.versions[shadow] = body["version"]
                self.absent.discard(shadow)
            else:
                self.absent.add(shadow)
            state = body.get("state") or {}
            if self._newer_delta(shadow, body.get("version")):
                self._desired(shadow, state.get("delta"))
            self._reconcile(shadow, state.get("reported") or {})
            self.pump()
        elif operation == "get/rejected" and request is not None:
            self._finish(token)
            code = body.get("code")
            if code == 429 or (isinstance(code, int) and code >= 500):  # nothing learnt: read it again later
                self._retry_later(shadow, get=True)
                return True
            self.versions.pop(shadow, None)
            self.absent.add(shadow)
            if code == 404:
                self._reconcile(shadow, {}, exists=False)
            else:
                self.log.warn("shadow {shadow}: get refused: {code} {message}", shadow=shadow,
                              code=body.get("code"), message=body.get("message"))
            self.pump()
        return True

    def _newer_delta(self, shadow: str, version: Any) -> bool:
        """Whether a delta of ``shadow`` at ``version`` is newer than the last one taken into the
        twin (then it is the last one now); a delta without a version is taken."""
        if not isinstance(version, int):
            return True
        if version <= self.delta_versions.get(shadow, -1):
            self.log.info("shadow {shadow}: delta of version {version} ignored: version {last} was taken already",
                          shadow=shadow, version=version, last=self.delta_versions[shadow])
            return False
        self.delta_versions[shadow] = version
        return True

    def _note_version(self, shadow: str, body: dict[str, Any]) -> None:
        version = body.get("version")
        if isinstance(version, int) and version > self.versions.get(shadow, -1):
            self.versions[shadow] = version

    def _finish(self, token: str) -> Request | None:
        request = self.inflight.pop(token, None)
        if request is not None:
            if token in self._overdue:  # (late: the cloud is slow, not back; its next timeout is no news)
                self._overdue.discard(token)
            else:  # an answer in time: the next request unanswered is news
                self._unanswered_lines.reset()
            if request.timer is not None and request.timer.active():
                request.timer.cancel()
            self.busy.discard(request.shadow)
            if request.kind == "get":
                self._get_tokens.pop(request.shadow, None)  # (the next get of it is a new request)
        return request

    def _done(self, token: str, request: Request) -> None:
        self._finish(token)
        self._throttled.pop(request.shadow, None)
        if self._last_appended.get(request.shadow) == request.record.seq:
            del self._last_appended[request.shadow]
        if request.record in self.pending:
            self.pending.remove(request.record)
        floor = self.pending[0].seq - 1 if self.pending else self._last_read
        if floor > self._acked:
            self._acked = floor
            self.stream.ack(CURSOR, floor).addErrback(self._cursor_not_saved)
        self.pump()
        self._read()

    def _cursor_not_saved(self, failure: Failure) -> None:
        """A cursor save the disk refuses (full, read-only) is one error line at most once a
        minute, counting the others: the next request accepted saves it again, and a restart
        before that sends the requests since the last save again (at least once). Anything
        else is a bug's traceback."""
        if not failure.check(OSError, JournalError):
            self.log.failure("shadow cursor not saved", failure)
            return
        count = self._cursor_failure_lines.note()
        if count is not None:
            self.log.error("shadow cursor not saved ({count} since the last such line; logged at most once a minute):"
                           " {error}; saved with the next request accepted", count=count,
                           error=failure.getErrorMessage())

    def _rejected(self, token: str, request: Request, body: dict[str, Any]) -> None:
        code, message = body.get("code"), str(body.get("message", ""))
        shadow = request.shadow
        if code == 409:  # someone else changed the shadow: read it, then send again
            self._finish(token)
            self.log.info("shadow {shadow}: version conflict; reading it before sending again", shadow=shadow)
            self.versions.pop(shadow, None)
            self.absent.discard(shadow)
            self.gets.insert(0, shadow)
            self.pump()
        elif code == 429 or (isinstance(code, int) and code >= 500):
            self._finish(token)
            self._retry_later(shadow)
        elif code == 404 and request.record.topic.endswith("/delete"):
            self._done(token, request)  # already gone
        else:
            self.log.error("shadow {shadow}: request {token} refused for good: {code} {message}", shadow=shadow,
                           token=token, code=code, message=message)
            self.refused += 1
            self._done(token, request)

    def _retry_later(self, shadow: str, get: bool = False) -> None:
        """Hold ``shadow`` for the retry policy's delay (429, 5xx: longer at each refusal in a
        row), then send again: its get when ``get``, else its next record."""
        self.busy.add(shadow)
        attempt = self._throttled.get(shadow, 0)
        self._throttled[shadow] = attempt + 1
        delay = self.retry_policy(attempt)
        self.log.info("shadow {shadow}: throttled or unavailable ({n} in a row); again in {delay:.1f}s",
                      shadow=shadow, n=attempt + 1, delay=delay)

        def retry() -> None:
            self._timers.remove(timer)  # only pending timers are kept: a link up for long refused often
            self.busy.discard(shadow)
            if get:
                self.gets.insert(0, shadow)
            self.pump()

        timer = self.clock.callLater(delay, retry)
        self._timers.append(timer)

    # -- down into the twin ---------------------------------------------------------------

    def _children(self) -> set[str]:
        return {t for t in self.twin.store.things if t != self.twin.root}

    def _desired(self, shadow: str, state: Any) -> None:
        if not isinstance(state, dict) or not state:
            return
        thing_id, feature = shadows.shadow_target(self.twin.root, shadow, self._children())
        if thing_id not in self.twin.store.things:
            self.log.info("shadow {shadow}: desired state for {thing}, which the twin does not hold", shadow=shadow,
                          thing=thing_id)
            return
        if feature is None:
            self.twin.live_command(thing_id, "/attributes", state)
        else:
            self.twin.apply_desired(thing_id, feature, state)

    def _reconcile(self, shadow: str, reported: dict[str, Any], exists: bool = True) -> None:
        """After a get: append an update correcting what the cloud reports, unless requests
        for that shadow are still pending (they will bring it up to date). A shadow the cloud
        is :attr:`behind` on (a request of it the journal refused: pending requests do not
        bring it up to date) is corrected once all its requests are answered, and deleted
        when the twin no longer has it.

        :param exists: whether the get found the shadow.
        """
        mark = self.behind.get(shadow)
        if mark is not None:
            if not self._settled(shadow):  # (what the get read is not what they will leave)
                self._catch_up_later()
                return
            thing_id = mark.thing
        elif any(self._shadow_of(r) == shadow and r.topic.endswith("/update") for r in self.pending):
            return
        else:
            thing_id = shadows.shadow_target(self.twin.root, shadow, self._children())[0]
        sections = self._sections(thing_id, self.twin.store.things.get(thing_id))
        correction: Deferred[str | None] = succeed(None)
        if shadow not in sections:
            if shadow in self.behind and exists:  # (its delete was refused)
                correction = self._append(thing_id, shadow, "delete", {})
        else:
            patch = diff(reported if isinstance(reported, dict) else {}, sections[shadow])
            if patch is not MISSING and patch != {}:
                correction = self._append(thing_id, shadow, "update", {"state": {"reported": patch}})
        if shadow in self.behind:
            refusals = self._refusals[shadow]

            def caught_up(refusal: str | None) -> None:
                if refusal is None and self._refusals.get(shadow) == refusals:  # (none refused since)
                    del self.behind[shadow], self._refusals[shadow]
                    self._behind_file.save(self.behind)
                    self.log.info("shadow {shadow}: the cloud is brought up to date", shadow=shadow or "(classic)")

            correction.addCallback(caught_up)
