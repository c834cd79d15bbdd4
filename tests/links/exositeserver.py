"""A small HTTP server that behaves like Exosite's device API, and fails on demand.

It serves activation, the CIK check, write, record, read with long-poll and the
timestamp, and keeps every value it accepted with the time the request came. Faults are
queued with :meth:`ExositeAPI.fail` and hit the next writes and records: ``500``/``503``, ``429`` (with ``Retry-After``),
``drop`` (the connection is aborted after the data was taken), ``slow`` (the answer comes
``delay`` seconds late, after the data was taken), and :meth:`ExositeAPI.revoke` makes
the current CIK answer 401 until the device activates again.

It refuses for good, as a real product does, and stores nothing of a request it refuses: a
write to an alias not in ``aliases`` (when set) with ``404``, a request holding a value
given to :meth:`ExositeAPI.refuse` with that value's status, a record whose URL is longer than
``max_url`` with ``414``, and a body over ``max_body`` with ``413``, or, with
``close_on_large``, by closing the connection without an answer (as a proxy does).
"""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode

from twisted.internet.interfaces import IReactorTime
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request


class ExositeAPI(Resource):
    """The device API of one product.

    :param clock: for timestamps, long-polls and slow answers.
    :param devices: ``(vendor, model, serial)`` triples that may activate.
    """

    isLeaf = True

    def __init__(self, clock: IReactorTime, devices: tuple[tuple[str, str, str], ...] = (("acme", "box", "gw1"),)):
        super().__init__()
        self.clock = clock
        self.devices = set(devices)
        self.enabled = True
        self.ciks: dict[str, str] = {}  # cik -> serial
        self.values: dict[str, list[tuple[int, str]]] = {}  # alias -> [(ts, value)]
        self.latest: dict[str, tuple[str, float]] = {}
        self.requests: list[tuple[float, str, str]] = []  # (time, method, path)
        self.faults: list[tuple[str, float]] = []
        self.activations = 0
        #: the aliases the product has (``None``: any)
        self.aliases: set[str] | None = None
        #: the largest body taken (0: any), and whether a larger one closes the connection unanswered
        self.max_body = 0
        self.close_on_large = False
        #: a body over this many bytes takes longer than any request_timeout to arrive (a slow
        #: link): it is never answered nor stored (0: any arrives at once)
        self.crawl_over = 0
        #: the longest request URL (path and query) taken (0: any)
        self.max_url = 0
        self.refusals: dict[str, int] = {}  # value -> status
        self._polls: dict[str, list[Request]] = {}
        self._calls: list[Any] = []

    def close(self) -> None:
        """Cancel pending long-poll timeouts and slow answers (a test's cleanup)."""
        for call in self._calls:
            if call.active():
                call.cancel()

    # -- the test's controls -----------------------------------------------------------------

    def fail(self, kind: str, count: int = 1, arg: float = 0.0) -> None:
        """Queue ``count`` faults: ``500``, ``503``, ``429`` (arg: Retry-After), ``drop``, ``slow`` (arg: delay)."""
        self.faults.extend([(kind, arg)] * count)

    def refuse(self, value: str, status: int) -> None:
        """A write or record holding ``value`` is refused with ``status`` from now on."""
        self.refusals[value] = status

    def revoke(self) -> None:
        """Every issued CIK answers 401 from now on."""
        self.ciks.clear()

    def set_value(self, alias: str, value: str) -> None:
        """A write from the cloud side (what a Murano script or the UI would do)."""
        self.latest[alias] = (value, self.clock.seconds())
        for request in self._polls.pop(alias, []):
            if not request.finished and not request._disconnected:
                self._answer_value(request, alias)

    def sequence(self, alias: str) -> list[str]:
        """The values of ``alias`` in the order they came, first occurrences only (resends removed)."""
        return list(dict.fromkeys(value for _, value in self.values.get(alias, [])))

    # -- requests ----------------------------------------------------------------------------

    def render(self, request: Request) -> Any:  # type: ignore[override]
        path = request.path.decode()
        self.requests.append((self.clock.seconds(), request.method.decode(), path))
        stack_post = request.method == b"POST" and path.startswith("/onep:")
        fault = self.faults.pop(0) if self.faults and stack_post else None  # (polls and activations: never)
        if fault is not None and fault[0] in ("500", "503", "429"):
            request.setResponseCode(int(fault[0]))
            if fault[0] != "500" and fault[1]:
                request.setHeader(b"retry-after", str(int(fault[1])).encode())
            return b"planned failure"
        if path == "/timestamp":
            return str(int(self.clock.seconds())).encode()
        if path == "/provision/activate":
            return self._activate(request)
        cik = (request.getHeader(b"x-exosite-cik") or b"").decode()
        if cik not in self.ciks:
            request.setResponseCode(401)
            return b""
        if path == "/onep:v1/stack/alias" and request.method == b"GET":
            return self._read(request)
        body = request.content.read().decode()
        if self.crawl_over and len(body.encode()) > self.crawl_over:
            return NOT_DONE_YET
        if self.max_body and len(body.encode()) > self.max_body:
            if self.close_on_large:
                request.channel.transport.abortConnection()
                return NOT_DONE_YET
            request.setResponseCode(413)
            return b"request entity too large"
        if self.max_url and len(request.uri) > self.max_url:
            request.setResponseCode(414)
            return b"uri too long"
        pairs = parse_qsl(body, keep_blank_values=True, strict_parsing=True)
        refused = [self.refusals[value] for _, value in pairs if value in self.refusals]
        if refused:
            request.setResponseCode(refused[0])
            return b"refused value"
        if self.aliases is not None and path.startswith("/onep:v1/stack/alias/"):
            if unquote(path[len("/onep:v1/stack/alias/"):]) not in self.aliases:
                request.setResponseCode(404)
                return b"unknown alias"
        if path == "/onep:v1/stack/alias":
            for alias, value in pairs:
                self._store(alias, int(self.clock.seconds()), value)
        elif path.startswith("/onep:v1/stack/alias/"):
            alias = unquote(path[len("/onep:v1/stack/alias/"):])
            for ts, value in pairs:
                self._store(alias, int(ts), value)
        else:
            request.setResponseCode(404)
            return b""
        request.setResponseCode(204)
        if fault is not None and fault[0] == "drop":
            request.channel.transport.abortConnection()
            return NOT_DONE_YET
        if fault is not None and fault[0] == "slow":
            self._calls.append(self.clock.callLater(fault[1], lambda: request._disconnected or request.finish()))
            return NOT_DONE_YET
        return b""

    def _store(self, alias: str, ts: int, value: str) -> None:
        self.values.setdefault(alias, []).append((ts, value))
        self.latest[alias] = (value, self.clock.seconds())

    def _activate(self, request: Request) -> bytes:
        fields = dict(parse_qsl(request.content.read().decode()))
        device = (fields.get("vendor"), fields.get("model"), fields.get("sn"))
        if device not in self.devices:
            request.setResponseCode(404)
            return b""
        if not self.enabled:
            request.setResponseCode(409)
            return b""
        cik = secrets.token_hex(20)
        self.ciks[cik] = device[2]  # type: ignore[assignment]
        self.activations += 1
        return cik.encode()

    def _read(self, request: Request) -> Any:
        aliases = [name for name, _ in parse_qsl(request.uri.split(b"?", 1)[1].decode(), keep_blank_values=True)]
        wait = request.getHeader(b"request-timeout")
        if wait is None:
            found = [(a, self.latest[a][0]) for a in aliases if a in self.latest]
            if not found:
                request.setResponseCode(204)
                return b""
            return urlencode(found).encode()
        alias = aliases[0]
        since = request.getHeader(b"if-modified-since")
        current = self.latest.get(alias)
        if current is not None and (since is None or int(current[1]) > http.stringToDatetime(since)):
            self._answer_value(request, alias)
            return NOT_DONE_YET
        self._polls.setdefault(alias, []).append(request)

        def timeout() -> None:
            if request in self._polls.get(alias, []):
                self._polls[alias].remove(request)
                if not request._disconnected:
                    request.setResponseCode(304)
                    request.finish()

        self._calls.append(self.clock.callLater(int(wait) / 1000, timeout))
        return NOT_DONE_YET

    def _answer_value(self, request: Request, alias: str) -> None:
        value, modified = self.latest[alias]
        request.setHeader(b"last-modified", http.datetimeToString(int(modified)))
        request.write(urlencode([(alias, value)]).encode())
        request.finish()
