"""The gmq-compatible device API resource: writes, records, reads, activation, timestamp.

A write is answered 204 only once every value it carries is durable in the journal
stream of every link it routes to, like a QoS 1 PUBACK; a stream that refuses it (a
reject-new policy at its limit, a full disk) gets 503 with ``Retry-After``, so the app
sends it again, as it would to gmq. A value larger than a stream's ``max_bytes`` on its
own can never be stored: 413, final, once the write's other values are stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import unquote

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import Resource

from gateway.browserguard import BrowserGuard
from gateway.clockstep import steady_seconds
from gateway.mqtt.topics import has_wildcard, valid_topic
from gateway.errors import JournalError
from gateway.httpdate import parse_http_date
from gateway.ingest.form import (
    FormError, check_alias, encode_values, parse_form, parse_read_query, parse_record, parse_vms, parse_write,
    text_charset, valid_cik)
from gateway.ingest.identities import LocalIdentities, TooManyDevices
from gateway.ingest.settings import IngestSettings
from gateway.ingest.values import LastValues, Value
from gateway.journal.errors import RecordTooLargeError
from gateway.journal.stream import Clock
from gateway.logthrottle import REFUSED_LOG_INTERVAL, LogThrottle, refused_since
from gateway.shown import shown_repr

if TYPE_CHECKING:  # the site that renders imports twisted.web.server, an idle gateway does not
    from twisted.web.server import Request

#: ``(topic, payload, qos, retain, timestamp=) -> Deferred | None``: the links' router
#: (``LinksService.persist``; ``timestamp``: a record's own time); ``None`` means routed nowhere.
Persist = Callable[..., "Deferred[Any] | None"]

STACK = b"/onep:v1/stack/alias"
ACTIVATE = b"/provision/activate"
TIMESTAMP = b"/timestamp"
FORM = b"application/x-www-form-urlencoded"
#: The ``Content-Type`` of a read's answer: the form type with the charset Exosite's device
#: API names for it (a read asks ``Accept: application/x-www-form-urlencoded; charset=utf-8``);
#: the values in it are percent-encoded UTF-8.
READ_TYPE = FORM.decode() + "; charset=utf-8"


class RequestError(Exception):
    """Answer the request with ``status`` and ``message`` (a client error).

    :param allow: for a 405, the methods the path takes (its ``Allow`` header).
    """

    def __init__(self, status: int, message: str, allow: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.allow = allow


@dataclass
class IngestStats:
    """Counters of the ingest since start.

    :ivar writes: write and record requests answered 204.
    :ivar values: values stored by them, and the other values of those answered 413 for one
        that never fits (stored all the same).
    :ivar unrouted: of those, values no link routes (kept only as last values).
    :ivar refused: requests answered 503 (the journal refused).
    :ivar bad: requests answered 4xx.
    """

    writes: int = 0
    values: int = 0
    unrouted: int = 0
    refused: int = 0
    bad: int = 0


class DeviceAPIResource(Resource):
    """The whole device API subset as one leaf resource.

    :param settings: the ``ingest:`` section.
    :param persist: the links' router (see :data:`Persist`).
    :param values: last values (reads, long-polls).
    :param identities: locally activated devices.
    :param clock: the time values are stamped with.
    :param device: the gateway's device id (``{device}`` for CIKs not issued here).
    """

    isLeaf = True
    log = Logger()

    def __init__(self, settings: IngestSettings, persist: Persist, values: LastValues,
                 identities: LocalIdentities, clock: Clock, device: str) -> None:
        super().__init__()
        self.settings = settings
        self.persist = persist
        self.values = values
        self.identities = identities
        self.clock = clock
        self.device = device
        self.stats = IngestStats()
        self._refusal_lines = LogThrottle(REFUSED_LOG_INTERVAL, partial(steady_seconds, clock))
        self.guard = BrowserGuard("ingest", partial(steady_seconds, clock))

    # -- dispatch ---------------------------------------------------------------------------

    def render(self, request: Request) -> Any:
        """Route by path and method; every answer is sent from :meth:`_answer`. HEAD is served
        where GET is, as GET (Twisted's request sends the headers of the answer, not its body).
        A cross-site browser request is answered 403 before anything else
        (:mod:`gateway.browserguard`)."""
        path = request.path
        method = b"GET" if request.method == b"HEAD" else request.method
        try:
            refusal = self.guard.refusal(request)
            if refusal is not None:
                raise RequestError(403, refusal)
            # (".../alias/" read as ".../alias"; POSTed, it is a record without its alias: 400)
            if path == STACK or (path == STACK + b"/" and method != b"POST"):
                if method == b"POST":
                    return self._later(request, self._write)
                if method == b"GET":
                    return self._later(request, self._read)
                raise RequestError(405, "use POST to write, GET to read", allow="GET, HEAD, POST")
            if path.startswith(STACK + b"/"):
                if method != b"POST":
                    raise RequestError(405, "use POST to record timestamped values", allow="POST")
                return self._later(request, lambda r: self._record(r, path[len(STACK) + 1:]))
            if path == ACTIVATE:
                if method != b"POST":
                    raise RequestError(405, "use POST to activate", allow="POST")
                return self._later(request, self._activate)
            if path == TIMESTAMP:
                if method != b"GET":
                    raise RequestError(405, "use GET for the timestamp", allow="GET, HEAD")
                return self._text(request, 200, str(int(self.clock.seconds())))
            raise RequestError(404, "not part of the device API this gateway serves")
        except RequestError as exc:
            return self._error(request, exc)

    def _later(self, request: Request,
               work: Callable[[Request], Deferred[tuple[int, bytes, dict[str, str]]]]) -> Any:
        """Answer ``request`` with what ``work`` fires with, unless its client has gone by then."""
        gone: list[bool] = []
        # Noted before the work begins: a long-poll cancels its wait when the client hangs up,
        # and that failure must find the client already known to be gone.
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        d = work(request)

        def answer(result: tuple[int, bytes, dict[str, str]]) -> None:
            if gone:
                return
            status, body, headers = result
            request.setResponseCode(status)
            for name, value in headers.items():
                request.setHeader(name, value)
            if body:
                request.setHeader(b"content-type", headers.get("content-type", "text/plain; charset=utf-8"))
            request.setHeader(b"content-length", str(len(body)).encode())
            if body:
                request.write(body)
            request.finish()

        def failed(failure: Failure) -> None:
            if gone:
                return  # (a long-poll whose client hung up, or a write whose client will resend)
            if failure.check(RequestError):
                result = self._error_result(failure.value)
            elif failure.check(TooManyDevices):
                result = self._error_result(RequestError(403, str(failure.value)))
            elif failure.check(JournalError, OSError):  # (OSError: devices.json on a full disk)
                self.stats.refused += 1
                count = self._refusal_lines.note()
                if count is not None:  # an app writes on to a full journal: one line per interval
                    self.log.warn("ingest: write refused: {error} ({since})", error=failure.getErrorMessage(),
                                  since=refused_since(count))
                result = (503, f"not stored: {failure.getErrorMessage()}\n".encode(),
                          {"retry-after": str(self.settings.retry_after)})
            else:
                self.log.failure("ingest: request failed", failure)
                result = (500, b"internal error; nothing was stored for sure: send again\n", {})
            answer(result)

        d.addCallbacks(answer, failed).addErrback(lambda f: self.log.failure("ingest: answering failed", f))
        from twisted.web.server import NOT_DONE_YET  # loaded with the site that renders

        return NOT_DONE_YET

    def _error_result(self, exc: RequestError) -> tuple[int, bytes, dict[str, str]]:
        self.stats.bad += 1
        return exc.status, f"{exc}\n".encode(), {}

    def _error(self, request: Request, exc: RequestError) -> Any:
        status, body, _ = self._error_result(exc)
        if exc.allow is not None:
            request.setHeader(b"allow", exc.allow.encode())
        return self._text(request, status, body.decode())

    def _text(self, request: Request, status: int, text: str) -> Any:
        """Answer ``request`` now with ``text``, sent whole here (not returned for the site to
        send: for a HEAD it would log that it drops a body)."""
        body = text.encode()
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"content-length", str(len(body)).encode())
        request.write(body)
        request.finish()
        from twisted.web.server import NOT_DONE_YET  # loaded with the site that renders

        return NOT_DONE_YET

    # -- request parts ----------------------------------------------------------------------

    def _body(self, request: Request) -> tuple[bytes, str]:
        """The request's form body and the charset its escaped bytes are in: the one its
        ``Content-Type`` declares (``; charset=latin-1``), UTF-8 when it names none."""
        content = request.content
        assert content is not None
        content.seek(0, 2)
        size = max(content.tell(), getattr(request, "body_size", 0))  # (the site's requests count what they drop)
        if size > self.settings.max_body:
            raise RequestError(413, f"request body of {size} bytes; at most {self.settings.max_body}")
        kind, *parameters = (request.getHeader(b"content-type") or FORM).decode("latin-1").split(";")
        if kind.strip().lower().encode() != FORM:
            raise RequestError(415, "send application/x-www-form-urlencoded")
        charset = "utf-8"
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "charset":
                charset = value.strip().strip('"')
                if text_charset(charset) is None:
                    raise RequestError(415, f"unknown charset {charset!r}: send UTF-8 (or name the body's charset)")
        content.seek(0)
        return bytes(content.read()), charset

    def _device(self, request: Request) -> Deferred[str]:
        """The serial a request writes as, from its CIK or VMS header."""
        cik = request.getHeader(b"x-exosite-cik")
        vms = request.getHeader(b"x-exosite-vms")
        if cik is not None:
            text = cik.decode("latin-1").strip()
            if not valid_cik(text):
                raise RequestError(401, "X-Exosite-CIK is not a CIK (40 hex characters)")
            if self.settings.auth == "known" and not self.identities.known(text):
                raise RequestError(401, "unknown CIK: activate first (POST /provision/activate)")
            return succeed(self.identities.serial_of(text) or self.device)
        if vms is not None:
            try:
                vendor, model, serial = parse_vms(vms.decode("latin-1"))
            except FormError as exc:
                raise RequestError(401, str(exc)) from None
            return self.identities.activate(vendor, model, serial).addCallback(lambda _: serial)
        raise RequestError(401, "send X-Exosite-CIK or X-Exosite-VMS")

    def _topic(self, alias: str, device: str) -> str:
        if "{device}" in self.settings.topic and ("/" in device or has_wildcard(device)):
            # (a serial a/b would write as the device a; a+ makes no topic name)
            raise RequestError(400, f"the serial {device!r} cannot be the {{device}} level of the topic "
                                    f"{self.settings.topic!r}: no '/', '+' or '#' in it")
        topic = self.settings.topic.replace("{alias}", alias).replace("{device}", device)
        if not valid_topic(topic):
            raise RequestError(400, f"alias {alias!r} gives no valid topic ({topic!r})")
        return topic

    # -- calls ------------------------------------------------------------------------------

    def _write(self, request: Request) -> Deferred[tuple[int, bytes, dict[str, str]]]:
        """A write; with aliases in the query, Exosite's Hybrid Write/Read: the write, then the
        read of those aliases answered as a GET's (the values just written included)."""
        body, charset = self._body(request)
        query = request.uri.split(b"?", 1)[1] if b"?" in request.uri else b""
        try:
            pairs = parse_write(body, self.settings.max_aliases, charset)
            reads = parse_read_query(query) if query else []
        except FormError as exc:
            raise RequestError(400, str(exc)) from None
        now = self.clock.seconds()
        d = self._device(request).addCallback(
            lambda device: self._store(device, [(alias, value, now) for alias, value in pairs], False))
        if reads:
            d.addCallback(lambda _: self._answer_read(request, reads, None))
        return d

    def _record(self, request: Request, raw_alias: bytes) -> Deferred[tuple[int, bytes, dict[str, str]]]:
        if not raw_alias:
            raise RequestError(400, "no alias in the path: POST /onep:v1/stack/alias/<alias> records, "
                                    "POST /onep:v1/stack/alias writes")
        try:
            alias = check_alias(unquote(raw_alias.decode("ascii"), errors="strict"))
            body, charset = self._body(request)
            values = parse_record(body, self.settings.max_aliases, charset)
        except UnicodeDecodeError:
            raise RequestError(400, "the alias in the path is not UTF-8") from None
        except FormError as exc:
            raise RequestError(400, str(exc)) from None
        return self._device(request).addCallback(
            lambda device: self._store(device, [(alias, value, when) for when, value in values], True))

    def _store(self, device: str, values: list[tuple[str, str, float]],
               stamped: bool) -> Deferred[tuple[int, bytes, dict[str, str]]]:
        """Journal ``(alias, value, time)`` triples; ``stamped``: the times are the record's own
        (journaled as each value's timestamp), not the moment the write came (the journal's)."""
        unrouted = 0  # (counted with the values stored, once every store has ended)
        try:
            stores, stored_at = [], []  # each store, and the index in ``values`` of its value
            for index, (alias, value, when) in enumerate(values):
                check_alias(alias)
                stored = self.persist(self._topic(alias, device), value.encode(), 1, False,
                                      timestamp=when if stamped else None)
                if stored is None:
                    unrouted += 1
                else:
                    stores.append(stored)
                    stored_at.append(index)
        except FormError as exc:
            raise RequestError(400, str(exc)) from None

        def keep(never: set[int]) -> None:
            """Count the values stored (all but those at the indexes ``never``) and make each
            its alias's last value."""
            self.stats.values += len(values) - len(never)
            self.stats.unrouted += unrouted
            for index, (alias, value, when) in enumerate(values):
                if index in never:
                    continue
                current = self.values.get(alias)
                # a record's older value does not replace a newer one; a plain write is the
                # newest whatever the clock says (NTP may have stepped it back)
                if not stamped or current is None or when >= current.modified:
                    self.values.set(alias, value, when)

        def settled(results: list[tuple[bool, Any]]) -> tuple[int, bytes, dict[str, str]]:
            """Every store has ended (none is left behind an answer): a refusal that a later
            try may pass decides (503: the app sends the write again); else a value that can
            never be stored is refused for good (413), the others being stored; else 204."""
            refused = [(index, result) for index, (ok, result) in zip(stored_at, results) if not ok]
            for _, failure in refused:
                if not failure.check(RecordTooLargeError):
                    failure.raiseException()
            keep({index for index, _ in refused})
            if refused:
                index, failure = refused[0]
                raise RequestError(413, f"the value of {values[index][0]!r} not stored: {failure.getErrorMessage()};"
                                        " it never fits: do not send it again (the write's other values are stored)")
            self.stats.writes += 1
            return 204, b"", {}

        return DeferredList(stores, consumeErrors=True).addCallback(settled)

    def _read(self, request: Request) -> Deferred[tuple[int, bytes, dict[str, str]]]:
        query = request.uri.split(b"?", 1)[1] if b"?" in request.uri else b""
        try:
            aliases = parse_read_query(query)
        except FormError as exc:
            raise RequestError(400, str(exc)) from None
        wait = request.getHeader(b"request-timeout")
        return self._device(request).addCallback(lambda _: self._answer_read(request, aliases, wait))

    def _answer_read(self, request: Request, aliases: list[str], wait: bytes | None) -> Any:
        if wait is None:
            found = [(alias, v.value) for alias in aliases if (v := self.values.get(alias)) is not None]
            if not found:
                return 204, b"", {}
            return 200, encode_values(found), {"content-type": READ_TYPE}
        if len(aliases) != 1:
            raise RequestError(400, "a long-poll (Request-Timeout) reads exactly one alias")
        digits = wait.strip()
        if not digits.isdigit():  # (ASCII digits only: no sign, point or underscore)
            longest = self.settings.max_poll_ms
            raise RequestError(400, f"Request-Timeout {shown_repr(wait.decode('latin-1'))} is not a whole number of"
                                    f" milliseconds (0 to {longest}; a longer one waits {longest})")
        # (no int() of thousands of digits: Python refuses it)
        timeout = (self.settings.max_poll_ms if len(digits) > 12 else min(int(digits), self.settings.max_poll_ms)) / 1000
        since_header = request.getHeader(b"if-modified-since")
        since = None
        if since_header is not None:
            try:
                since = parse_http_date(since_header)
            except ValueError:
                raise RequestError(400, "If-Modified-Since is not an HTTP date") from None

        def answered(value: Value | None) -> tuple[int, bytes, dict[str, str]]:
            if value is None:
                return 304, b"", {}
            return 200, encode_values([(aliases[0], value.value)]), {
                "content-type": READ_TYPE, "last-modified": http.datetimeToString(int(value.modified)).decode()}

        waiting = self.values.wait(aliases[0], since, timeout)
        if not waiting.called:  # a client that hangs up stops waiting (stores are never cancelled)
            request.notifyFinish().addErrback(lambda _: waiting.cancel())
        return waiting.addCallback(answered)

    def _activate(self, request: Request) -> Deferred[tuple[int, bytes, dict[str, str]]]:
        try:
            fields = dict(parse_form(*self._body(request)))
        except FormError as exc:
            raise RequestError(400, str(exc)) from None
        missing = [name for name in ("vendor", "model", "sn") if not fields.get(name)]
        if missing:
            raise RequestError(400, f"missing {', '.join(missing)}")
        d = self.identities.activate(fields["vendor"], fields["model"], fields["sn"])
        return d.addCallback(lambda cik: (200, cik.encode(), {}))
