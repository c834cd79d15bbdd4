"""The cloud side of an HTTP link: Exosite device API calls, JSON batch posts, their errors.

Every call has a timeout (on the injected clock) and reads the whole answer, so a
kept-alive connection is ready for the next request.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import threading
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import parse_qsl, quote, urlencode

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.atomic import fsync_directory, set_aside, write_atomically
from gateway.configdirectory import link_to_nothing
from gateway.errors import LinkError
from gateway.httpbody import read_body
from gateway.httpdate import retry_after
from gateway.journal.stream import Clock
from gateway.links.valuetime import value_time
from gateway.netfailures import describe, describe_answer

#: What the link keeps as a CIK: visible ASCII without spaces, as an HTTP header carries it.
#: Exosite's CIKs are 40 hex characters; a Murano product's device tokens are 40 characters
#: too, and the platform issues one only once, so nothing narrower is assumed.
_CIK = re.compile(r"[!-~]+")
#: The largest answer read (bytes): the device API's are a CIK, a timestamp or a few values;
#: a larger one is a failure like an error status.
MAX_ANSWER = 2**20
#: Held by each CIK file's work off the reactor thread: the link a configuration change
#: stopped and the one that replaced it may work on the same files at once (a late
#: activation answer's save), and each step reads what the other writes.
_CIK_FILES = threading.Lock()
#: The largest ``.device`` file read (bytes): it names a vendor, a model and a serial.
MAX_DEVICE_FILE = 4096


def _plausible_cik(text: str, length: int | None = None) -> bool:
    """Whether ``text`` can be a CIK (of ``length`` characters, when given)."""
    return bool(_CIK.fullmatch(text)) and (length is None or len(text) == length)


class RequestFailed(LinkError):
    """The cloud answered with an error or not at all: back off and try again.

    :ivar status: the HTTP status (0: no answer).
    :ivar retry_after: seconds the cloud asked us to wait (429, 503), or ``None``.
    :ivar closed: no answer: the connection was closed (or reset) after the request went,
        as a proxy does to a body over its limit, but also a network that fails does.
    :ivar sent: the bytes of the request's body.
    :ivar timed_out: the request went on a connection (all or part of it) and no answer came
        within its timeout (not one that timed out still connecting).
    """

    def __init__(self, message: str, status: int = 0, retry_after: float | None = None,
                 closed: bool = False, sent: int = 0, timed_out: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.closed = closed
        self.sent = sent
        self.timed_out = timed_out


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
    :ivar largest_taken: the largest request body the cloud answered 2xx: a connection closed
        unanswered on a body no larger is no refusal of its size (a network that resets it).
    """

    def __init__(self, client: Any, url: str, clock: Clock, timeout: float) -> None:
        self.client = client
        self.url = url
        self.clock = clock
        self.timeout = timeout
        self.bytes_up = 0
        self.bytes_down = 0
        self.largest_taken = 0

    def request(self, method: str, url: str, headers: dict[str, str], data: bytes | None = None,
                timeout: float | None = None, answer_needed: bool = False) -> Deferred[tuple[int, Any, bytes]]:
        """``(status, headers, body)`` of a 2xx answer, or of a 304 to a ``GET`` (a long-poll's
        "no change"). Only a ``GET`` without the CIK follows redirects: a ``POST`` answered 3xx
        has not been taken (a 303 turned into a ``GET`` would acknowledge data nobody
        stored), and a request with ``X-Exosite-CIK`` would carry the device's secret to
        whatever host the redirect names (Twisted strips only the standard sensitive headers).

        :param answer_needed: a ``POST`` whose answer is what it is for (an activation's CIK):
            over :data:`MAX_ANSWER` bytes, a 2xx is a failure too, not taken with its body unread.

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
                if cut and method == "POST" and not answer_needed and 200 <= response.code < 300:
                    return response.code, response.headers, b""  # taken
                if cut:
                    raise RequestFailed(f"HTTP {response.code}, the answer is over {MAX_ANSWER} bytes", response.code)
                return response.code, response.headers, body

            return read_body(response, MAX_ANSWER).addCallback(read)

        def check(result: tuple[int, Any, bytes]) -> tuple[int, Any, bytes]:
            status, headers_, body = result
            if 200 <= status < 300 or (status == 304 and get):
                if 200 <= status < 300:
                    self.largest_taken = max(self.largest_taken, len(data or b""))
                return result
            message = describe_answer(status, b"", body)  # (no reason phrase: an empty answer is "HTTP 302")
            if status == 401:
                raise CIKRejected(message, status)
            wait = retry_after(headers_.getRawHeaders(b"retry-after", [b""])[0], self.clock.seconds()) \
                if status in (429, 503) else None
            raise RequestFailed(message, status, wait)

        def failed(failure: Any) -> Any:
            if failure.check(RequestFailed, CancelledError):  # (cancelled: the link is stopping)
                return failure
            raise RequestFailed(f"no answer: {describe(failure)}",
                                closed=closed_unanswered(failure), sent=len(data or b""))

        seconds = self.timeout if timeout is None else timeout

        def timed_out(result: Any, _: float) -> Any:
            from twisted.web.client import RequestTransmissionFailed, ResponseNeverReceived

            # (cancelled while it was still connecting, the request never went: no verdict on its body)
            went = isinstance(getattr(result, "value", None), (RequestTransmissionFailed, ResponseNeverReceived))
            return Failure(RequestFailed(f"no answer within {seconds:g} s (timed out)", sent=len(data or b""),
                                         timed_out=went))

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
            "Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}, body, answer_needed=True)

        def cik(result: tuple[int, Any, bytes]) -> str:
            text = result[2].decode("ascii", "replace").strip()
            if _plausible_cik(text) and len(text) != 40:
                # a token of another length may be a credential all the same (the platform issues
                # it once): not repeated in the log, the link's status and last_error
                raise RequestFailed(f"activation answered a token of {len(text)} characters, not a CIK (40; the token "
                                    "is not shown: it may be a credential)", result[0])
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
        """POST ``{"records": [...]}``: topic, payload (UTF-8 text, else base64), timestamp, qos, seq,
        as ``application/json`` unless ``headers`` name a ``Content-Type`` (in any case) of their own.

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
        if not any(name.lower() == "content-type" for name in headers):  # (a configured one wins, any case)
            headers = dict(headers, **{"Content-Type": "application/json"})
        d = self.request("POST", self.url, headers, body)
        return d.addErrback(no_cik)


class CIKFile:
    """The link's CIK on disk: read at start, written atomically with mode 0600 before use,
    with the device it was issued for beside it (``<name>.device``).

    A CIK authenticates one device of one product: a configuration that names another
    (vendor, model or serial changed) must not send it. Such a CIK is kept aside as
    ``<name>.<digest of its device>`` and comes back when that device is configured again
    (a reverted change): the platform issues a CIK only once per device. A CIK file without
    its ``.device`` (put there by hand: GWE's) is taken as the configured device's.

    :param link: the link's name, which its log lines start with.
    :param path: the file.
    :param run_blocking: ``(function, *args) -> Deferred`` off the reactor thread.
    :param device: the configured device, as its activation names it (vendor, model, serial).
    """

    log = Logger()

    def __init__(self, link: str, path: Path, run_blocking: Callable[..., "Deferred[Any]"],
                 device: tuple[str, str, str] = ("", "", "")) -> None:
        self.link = link
        self.path = path
        self.run_blocking = run_blocking
        vendor, model, serial = device
        self.device = urlencode({"vendor": vendor, "model": model, "sn": serial})
        self.device_path = path.with_name(path.name + ".device")

    def _aside(self, device: str) -> Path:
        """Where the CIK of ``device`` waits while another device is configured."""
        return self.path.with_name(f"{self.path.name}.{hashlib.sha256(device.encode()).hexdigest()[:16]}")

    def _owner(self) -> str | None:
        """The device the file's ``.device`` names (``None``: none, or none it can name: the
        CIK is the configured device's)."""
        return self._read_device()[0]

    def _read_device(self) -> tuple[str | None, str]:
        """The device the ``.device`` names (as :meth:`_owner`), and what is wrong with it
        (``""``: nothing, or there is none): it names a device only as the gateway writes one,
        ``vendor=...&model=...&sn=...``."""
        try:
            with open(self.device_path, "rb") as file:
                data = file.read(MAX_DEVICE_FILE + 1)
        except FileNotFoundError:
            return None, link_to_nothing(self.device_path) or ""
        except OSError as exc:  # (a directory, a loop of links; one out of the user's reach stops the load)
            return None, exc.strerror or str(exc)
        if len(data) > MAX_DEVICE_FILE:
            return None, f"it holds more than {MAX_DEVICE_FILE} bytes"
        try:
            text = data.decode("utf-8").strip()
        except UnicodeDecodeError:
            return None, "it is not UTF-8 text"
        named = parse_qsl(text, keep_blank_values=True)
        if [key for key, _ in named] != ["vendor", "model", "sn"] or urlencode(named) != text:
            return None, "it names no device (vendor=...&model=...&sn=...)"
        return text, ""

    def _switch_device(self, owner: str | None) -> str:
        """Put a CIK of another device aside (``owner``: the device the ``.device`` names), and
        the configured device's back if it was aside; what was done, for the log (``""``:
        nothing). Each step leaves files that the next load reads right, should the process die
        between two of them."""
        said = []
        if owner is not None and owner != self.device:
            if self.path.exists():
                self.path.replace(self._aside(owner))
                said.append(f"the CIK of {owner} is kept aside as {self._aside(owner).name}")
            self.device_path.unlink()
            fsync_directory(self.path.parent)
            owner = None
        if owner is None:
            back = self._aside(self.device)
            if not self.path.exists() and back.exists():
                back.replace(self.path)
                said.append(f"the CIK of {self.device} is back from {back.name}")
        return "; ".join(said)

    def _claim(self) -> str:
        """Write that the CIK read is the configured device's (a CIK file without its
        ``.device``); what went wrong, for the log (``""``: nothing)."""
        if self.device_path.exists():
            return ""
        try:
            write_atomically(self.device_path, self.device.encode() + b"\n", 0o600)
        except OSError as exc:  # (a full disk: the CIK is used all the same, claimed at the next load)
            return f"{self.device_path.name} cannot be written ({exc.strerror or exc})"
        return ""

    def load(self) -> Deferred[str | None]:
        """The stored CIK of the configured device, or ``None`` (no file, an empty one, or one
        of another device, kept aside: the link activates). A file that holds no CIK (anything
        but visible ASCII without spaces) or cannot be read is logged and moved aside to
        ``<name>.damaged``: no CIK either, and the link starts. A damaged ``.device`` (not
        one the gateway writes: not UTF-8, too long, no device named, a directory, a symbolic
        link to nothing) is logged and moved aside to ``<name>.device.damaged``: the CIK is
        taken as the configured device's, as one put there by hand."""
        def read() -> tuple[str | None, str, str, str]:
            with _CIK_FILES:
                owner, problem = self._read_device()  # (read once: a damaged one goes aside, 0600)
                device_problem = f"{problem}; {set_aside(self.device_path, secret=True)}" if problem else ""
                return (*read_cik(owner), device_problem)

        def read_cik(owner: str | None) -> tuple[str | None, str, str]:
            try:
                switched = self._switch_device(owner)
                text = self.path.read_text().strip()
            except FileNotFoundError:
                dangling = link_to_nothing(self.path)
                if dangling is not None:  # (a link to nothing: damage, told, not a first start)
                    return None, f"{dangling}; {set_aside(self.path, secret=True)}", switched
                return None, "", switched
            except (OSError, UnicodeDecodeError) as exc:
                return None, f"{getattr(exc, 'strerror', None) or exc}; {set_aside(self.path, secret=True)}", ""
            if text and not _plausible_cik(text):
                aside = set_aside(self.path, secret=True)
                return None, f"it holds no CIK (visible ASCII without spaces); {aside}", switched
            if text:  # (read, and a CIK: the configured device's from now on)
                switched = "; ".join(filter(None, (switched, self._claim())))
            return text or None, "", switched

        def told(result: tuple[str | None, str, str, str]) -> str | None:
            cik, problem, switched, device_problem = result
            if device_problem:
                self.log.error("link {link}: unusable {path} ({problem}): the CIK beside it is taken as the"
                               " configured device's ({device}), as one put there by hand", link=self.link,
                               path=str(self.device_path), problem=device_problem, device=self.device)
            if switched:
                self.log.info("link {link}: {path}: the link's device is {device} now: {switched}",
                              link=self.link, path=str(self.path), device=self.device, switched=switched)
            if problem:
                self.log.error("link {link}: unusable CIK file {path} ({problem}): the link activates",
                               link=self.link, path=str(self.path), problem=problem)
            return cik

        return self.run_blocking(read).addCallback(told)

    def save(self, cik: str, claim: bool = True) -> Deferred[None]:
        """Store ``cik`` durably (mode 0600), the configured device first: a crash between the
        two leaves that device's file beside no CIK or the CIK it had. A CIK of another device
        found in the file (saved late by a link a configuration change stopped) is put aside
        first, as a load does.

        :param claim: whether the link saving is the one configured now; ``False``: it is
            stopped (its activation was answered after its stop), so a file another device's
            link has taken meanwhile (its ``.device`` names another device) stays that link's,
            and ``cik`` is kept aside for its own device, which gets it back when configured again.
        """
        def write() -> str:
            with _CIK_FILES:
                owner = self._owner()
                said = ""
                if owner is not None and owner != self.device:
                    if not claim:
                        aside = self._aside(self.device)
                        write_atomically(aside, cik.encode() + b"\n", 0o600)
                        return (f"{self.path.name} is taken by {owner} now: the CIK of {self.device} is kept aside"
                                f" as {aside.name}")
                    if self.path.exists():
                        aside = self._aside(owner)
                        self.path.replace(aside)
                        said = f"the CIK of {owner} is kept aside as {aside.name}"
                write_atomically(self.device_path, self.device.encode() + b"\n", 0o600)
                write_atomically(self.path, cik.encode() + b"\n", 0o600)
                return said

        def told(said: str) -> None:
            if said:
                self.log.info("link {link}: {path}: {said}", link=self.link, path=str(self.path), said=said)

        return self.run_blocking(write).addCallback(told)

    def forget(self) -> Deferred[None]:
        """Remove a CIK the platform refused."""
        def remove() -> None:
            with _CIK_FILES:
                try:
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass

        return self.run_blocking(remove)
