"""The cloud side of an HTTP link: Exosite device API calls, JSON batch posts, their errors.

Every call has a timeout (on the injected clock) and reads the whole answer, so a
kept-alive connection is ready for the next request.
"""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import parse_qsl, quote, urlencode

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.atomic import set_aside, write_atomically
from gateway.errors import LinkError
from gateway.httpbody import read_body
from gateway.httpdate import retry_after
from gateway.journal.stream import Clock
from gateway.links.valuetime import value_time
from gateway.netfailures import describe

#: What the link keeps as a CIK: visible ASCII without spaces, as an HTTP header carries it.
#: Exosite's CIKs are 40 hex characters; a Murano product's device tokens are 40 characters
#: too, and the platform issues one only once, so nothing narrower is assumed.
_CIK = re.compile(r"[!-~]+")
#: The largest answer read (bytes): the device API's are a CIK, a timestamp or a few values;
#: a larger one is a failure like an error status.
MAX_ANSWER = 2**20


def _plausible_cik(text: str, length: int | None = None) -> bool:
    """Whether ``text`` can be a CIK (of ``length`` characters, when given)."""
    return bool(_CIK.fullmatch(text)) and (length is None or len(text) == length)


class RequestFailed(LinkError):
    """The cloud answered with an error or not at all: back off and try again.

    :ivar status: the HTTP status (0: no answer).
    :ivar retry_after: seconds the cloud asked us to wait (429, 503), or ``None``.
    :ivar closed: no answer: the connection was closed (or reset) after the request went,
        as a proxy does to a body over its limit, but also a network that fails does.
    """

    def __init__(self, message: str, status: int = 0, retry_after: float | None = None,
                 closed: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.closed = closed


class CIKRejected(RequestFailed):
    """401: the CIK is not (or no longer) valid."""


class ActivationRefused(RequestFailed):
    """404 (unknown device) or 409 (not enabled, or already activated) on activation."""


def text_value(payload: bytes) -> str:
    """A payload as the device API's string value (invalid UTF-8 replaced)."""
    return payload.decode("utf-8", errors="replace")


def no_cik(failure: Failure) -> Failure:
    """The failure of a request that carries no CIK, a 401 made a plain :class:`RequestFailed`:
    there is no CIK to forget and activate again for, so it is backed off like any other 4xx."""
    if failure.check(CIKRejected):
        return Failure(RequestFailed(failure.getErrorMessage(), 401))
    return failure


def closed_unanswered(failure: Failure) -> bool:
    """Whether ``failure`` is a connection closed or reset after the request was (being) sent,
    before any answer (not a connection never made, nor a timeout)."""
    from twisted.web.client import RequestTransmissionFailed, ResponseNeverReceived  # (see httpclient)

    value = failure.value
    return isinstance(value, (RequestTransmissionFailed, ResponseNeverReceived)) and any(
        reason.check(ConnectionDone, ConnectionLost) for reason in value.reasons)


class CloudAPI:
    """Requests to one cloud through an injected treq ``HTTPClient``.

    :param client: the HTTP client (``treq.testing.StubTreq`` in unit tests).
    :param url: the base URL (exosite) or the POST URL (json).
    :param clock: for timeouts.
    :param timeout: seconds per request, answer included.
    :ivar bytes_up: request body bytes sent (HTTP headers and TLS not counted).
    :ivar bytes_down: answer body bytes received.
    """

    def __init__(self, client: Any, url: str, clock: Clock, timeout: float) -> None:
        self.client = client
        self.url = url
        self.clock = clock
        self.timeout = timeout
        self.bytes_up = 0
        self.bytes_down = 0

    def request(self, method: str, url: str, headers: dict[str, str], data: bytes | None = None,
                timeout: float | None = None) -> Deferred[tuple[int, Any, bytes]]:
        """``(status, headers, body)`` of a 2xx answer, or of a 304 to a ``GET`` (a long-poll's
        "no change"). Only a ``GET`` without the CIK follows redirects: a ``POST`` answered 3xx
        has not been taken (a 303 turned into a ``GET`` would acknowledge data nobody
        stored), and a request with ``X-Exosite-CIK`` would carry the device's secret to
        whatever host the redirect names (Twisted strips only the standard sensitive headers).

        :raises CIKRejected: on 401.
        :raises RequestFailed: on any other status, a dropped connection or the timeout.
        """
        get = method == "GET"
        d = self.client.request(method, url, headers=headers, data=data,
                                allow_redirects=get and "X-Exosite-CIK" not in headers)
        self.bytes_up += len(data or b"")

        def answered(response: Any) -> Deferred[tuple[int, Any, bytes]]:
            def read(answer: tuple[bytes, bool]) -> tuple[int, Any, bytes]:
                body, cut = answer
                self.bytes_down += len(body)
                if cut and method == "POST" and 200 <= response.code < 300:
                    return response.code, response.headers, b""  # taken; an activation's is no CIK then
                if cut:
                    raise RequestFailed(f"HTTP {response.code}, the answer is over {MAX_ANSWER} bytes", response.code)
                return response.code, response.headers, body

            return read_body(response, MAX_ANSWER).addCallback(read)

        def check(result: tuple[int, Any, bytes]) -> tuple[int, Any, bytes]:
            status, headers_, body = result
            if 200 <= status < 300 or (status == 304 and get):
                return result
            reason = body[:200].decode("utf-8", "replace").strip()
            message = f"HTTP {status}" + (f": {reason}" if reason else "")
            if status == 401:
                raise CIKRejected(message, status)
            wait = retry_after(headers_.getRawHeaders(b"retry-after", [b""])[0], self.clock.seconds()) \
                if status in (429, 503) else None
            raise RequestFailed(message, status, wait)

        def failed(failure: Any) -> Any:
            if failure.check(RequestFailed, CancelledError):  # (cancelled: the link is stopping)
                return failure
            raise RequestFailed(f"no answer: {describe(failure, self.clock.seconds())}",
                                closed=closed_unanswered(failure))

        seconds = self.timeout if timeout is None else timeout

        def timed_out(result: Any, _: float) -> Any:
            return Failure(RequestFailed(f"no answer within {seconds:g} s (timed out)"))

        d.addCallback(answered)
        d.addTimeout(seconds, self.clock, onTimeoutCancel=timed_out)
        return d.addCallback(check).addErrback(failed)

    # -- exosite ----------------------------------------------------------------------------

    def activate(self, vendor: str, model: str, serial: str) -> Deferred[str]:
        """The CIK the platform gives this device.

        :raises ActivationRefused: on 404 or 409.
        :raises RequestFailed: on any other failure, 401 included (the request carries no CIK).
        """
        body = urlencode({"vendor": vendor, "model": model, "sn": serial}).encode()
        d = self.request("POST", self.url.rstrip("/") + "/provision/activate", {
            "Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}, body)

        def cik(result: tuple[int, Any, bytes]) -> str:
            text = result[2].decode("ascii", "replace").strip()
            if not _plausible_cik(text, 40):
                raise RequestFailed(f"activation answered {text[:60]!r}, not a CIK", result[0])
            return text

        def refused(failure: Any) -> Any:
            error = failure.value
            if isinstance(error, RequestFailed) and error.status in (404, 409):
                meaning = "unknown device" if error.status == 404 else "not enabled or already activated"
                raise ActivationRefused(f"activation refused ({meaning}): {error}", error.status)
            return failure

        return d.addCallbacks(cik, refused).addErrback(no_cik)

    def timestamp(self) -> Deferred[float]:
        """The platform's clock (``GET /timestamp``): also how an idle link finds out it can reach it.

        :raises RequestFailed: as :meth:`request`, for a 401 too (the request carries no CIK).
        """
        d = self.request("GET", self.url.rstrip("/") + "/timestamp", {})

        def seconds(result: tuple[int, Any, bytes]) -> float:
            try:
                return float(result[2].strip())
            except ValueError:
                raise RequestFailed(f"/timestamp answered {result[2][:60]!r}", result[0]) from None

        return d.addCallback(seconds).addErrback(no_cik)

    def record(self, cik: str, alias: str, values: Iterable[tuple[int, str]]) -> Deferred[Any]:
        """Post timestamped values of one alias (``POST /onep:v1/stack/alias/<alias>``)."""
        body = urlencode([(str(ts), value) for ts, value in values], quote_via=quote).encode()
        return self.request("POST", f"{self.url.rstrip('/')}/onep:v1/stack/alias/{quote(alias, safe='')}", {
            "X-Exosite-CIK": cik, "Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}, body)

    def long_poll(self, cik: str, alias: str, wait_ms: int,
                  since: bytes | None) -> Deferred[tuple[int, str | None, bytes | None]]:
        """Wait for a new value of ``alias``: ``(status, value, Last-Modified)``; no value on 304 and 204."""
        headers = {"X-Exosite-CIK": cik, "Request-Timeout": str(wait_ms), "Accept": "application/x-www-form-urlencoded"}
        if since is not None:
            headers["If-Modified-Since"] = since.decode("latin-1")
        d = self.request("GET", f"{self.url.rstrip('/')}/onep:v1/stack/alias?{quote(alias, safe='')}", headers,
                         timeout=wait_ms / 1000 + self.timeout)

        def value(result: tuple[int, Any, bytes]) -> tuple[int, str | None, bytes | None]:
            status, headers_, body = result
            if status != 200:
                return status, None, None
            found = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
            return status, found.get(alias), headers_.getRawHeaders(b"last-modified", [None])[0]

        return d.addCallback(value)

    # -- json -------------------------------------------------------------------------------

    def post_json(self, headers: dict[str, str], records: list[Any]) -> Deferred[Any]:
        """POST ``{"records": [...]}``: topic, payload (UTF-8 text, else base64), timestamp, qos, seq.

        :raises RequestFailed: as :meth:`request`, for a 401 too (there is no CIK here: not :class:`CIKRejected`).
        """
        out = []
        for record in records:
            item: dict[str, Any] = {"topic": record.topic, "timestamp": value_time(record), "qos": record.qos,
                                    "seq": record.seq}
            try:
                item["payload"] = record.payload.decode("utf-8")
            except UnicodeDecodeError:
                item["payload"] = base64.b64encode(record.payload).decode("ascii")
                item["encoding"] = "base64"
            out.append(item)
        body = json.dumps({"records": out}, separators=(",", ":")).encode()
        d = self.request("POST", self.url, dict(headers, **{"Content-Type": "application/json"}), body)
        return d.addErrback(no_cik)


class CIKFile:
    """The link's CIK on disk: read at start, written atomically with mode 0600 before use.

    :param path: the file.
    :param run_blocking: ``(function, *args) -> Deferred`` off the reactor thread.
    """

    log = Logger()

    def __init__(self, path: Path, run_blocking: Callable[..., "Deferred[Any]"]) -> None:
        self.path = path
        self.run_blocking = run_blocking

    def load(self) -> Deferred[str | None]:
        """The stored CIK, or ``None`` (no file, or an empty one: the link activates). A file
        that holds no CIK (anything but visible ASCII without spaces) or cannot be read is
        logged and moved aside to ``<name>.damaged``: no CIK either, and the link starts."""
        def read() -> tuple[str | None, str]:
            try:
                text = self.path.read_text().strip()
            except FileNotFoundError:
                return None, ""
            except (OSError, UnicodeDecodeError) as exc:
                return None, f"{getattr(exc, 'strerror', None) or exc}; {set_aside(self.path)}"
            if text and not _plausible_cik(text):
                return None, f"it holds no CIK (visible ASCII without spaces); {set_aside(self.path)}"
            return text or None, ""

        def told(result: tuple[str | None, str]) -> str | None:
            cik, problem = result
            if problem:
                self.log.error("unusable CIK file {path} ({problem}): the link activates", path=str(self.path),
                               problem=problem)
            return cik

        return self.run_blocking(read).addCallback(told)

    def save(self, cik: str) -> Deferred[None]:
        """Store ``cik`` durably (mode 0600)."""
        return self.run_blocking(write_atomically, self.path, cik.encode() + b"\n", 0o600)

    def forget(self) -> Deferred[None]:
        """Remove a CIK the platform refused."""
        def remove() -> None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

        return self.run_blocking(remove)
