"""The HTTP side of hawkBit's Direct Device Integration (DDI) API: one small client.

It knows the URLs, the ``Authorization`` header and how the server's answers map to
errors, and sends its requests one at a time; what to do with them is
:mod:`gateway.fleet.service`'s business.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from twisted.internet.defer import CancelledError, Deferred, DeferredLock, inlineCallbacks
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.python.failure import Failure
from twisted.web.client import RequestTransmissionFailed, ResponseNeverReceived

from gateway import jsontext
from gateway.asciidigits import ascii_digits
from gateway.clockstep import CLOCK_SET_SINCE
from gateway.errors import GatewayError
from gateway.httpbody import read_body
from gateway.httpdate import retry_after
from gateway.updates.downloader import url_origin
from gateway.netfailures import describe, describe_answer
from gateway.operations.httpclient import close_connections
from gateway.shown import shown_location

#: The start of hawkBit's ``errorCode`` when a request would exceed one of its quotas (the status
#: entries of an action, the messages of one, a target's attributes...): its DDI answers ``403``
#: (``429`` in later versions) with ``{"errorCode": "hawkbit.server.error.quota.tooManyEntries",
#: "exceptionClass": "...AssignmentQuotaExceededException", "message": ...}``. Sending the request
#: again exceeds it again: no token, time or patience mends it.
QUOTA_ERROR_PREFIX = "hawkbit.server.error.quota."

#: The largest DDI answer read (bytes): hawkBit's are a few kilobytes, a deployment of many
#: artifacts some hundreds; a larger one fails the request.
MAX_ANSWER = 4 * 2**20


class DDIError(GatewayError):
    """A DDI request failed.

    :param message: what went wrong, for a person.
    :param code: the HTTP status, or None when no answer came.
    :param retry_after: the seconds the server's ``Retry-After`` asks for (given as seconds or
        as an HTTP date), when it sent one.
    :param error_code: hawkBit's ``errorCode`` in the answer's JSON body, when it has one.
    """

    def __init__(self, message: str, code: int | None = None, retry_after: float | None = None,
                 error_code: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.retry_after = retry_after
        self.error_code = error_code


def refused_for_good(error: DDIError) -> bool:
    """Whether the server refused the request as it is: a 4xx other than 401, 403, 408 and 429
    (which a new token, time or patience can mend), or a 403 or 429 saying a quota is exceeded
    (:data:`QUOTA_ERROR_PREFIX`): sending it again would change nothing."""
    if error.code in (403, 429):
        return (error.error_code or "").startswith(QUOTA_ERROR_PREFIX)
    return error.code is not None and 400 <= error.code < 500 and error.code not in (401, 408)


def _error_code(content: bytes) -> str | None:
    """hawkBit's ``errorCode`` in an error answer's body (``None`` when the body is not a JSON
    object with a string ``errorCode``: a proxy's page, an empty body)."""
    try:
        body = jsontext.loads(content)
    except ValueError:
        return None
    code = body.get("errorCode") if isinstance(body, dict) else None
    return code if isinstance(code, str) else None


def _closed_unanswered(failure: Failure) -> bool:
    """Whether a request failed only because its connection closed before any answer (no
    refusal, no timeout, no TLS error)."""
    if not failure.check(ResponseNeverReceived, RequestTransmissionFailed):
        return False
    return all(reason.check(ConnectionDone, ConnectionLost) for reason in failure.value.reasons)


def parse_sleep(value: Any) -> float | None:
    """hawkBit's ``config.polling.sleep`` (``"HH:MM:SS"``) in seconds; None when malformed.

    :param value: the field as the server sent it.
    """
    if not isinstance(value, str):
        return None
    parts = value.split(":")
    if len(parts) != 3 or not all(ascii_digits(p) for p in parts):  # (int() read ٠١, +1 and " 1" too)
        return None
    hours, minutes, seconds = (int(p) for p in parts)
    if min(hours, minutes, seconds) < 0 or minutes > 59 or seconds > 59:
        return None
    return float(hours * 3600 + minutes * 60 + seconds)


def poll_answer(body: Any) -> tuple[float | None, dict[str, str]]:
    """The parts of a poll answer the gateway uses: ``config.polling.sleep`` in seconds (None when
    absent or malformed) and the ``_links`` hrefs by name (none when ``_links`` is absent or not
    an object; a link the gateway does not follow, such as ``configData``, is there even
    without an href, as ``""``).

    :param body: the decoded JSON answer (None for an empty one).
    :raises DDIError: for an answer that is not a DDI controller resource (not a JSON object
        with a ``config`` object: a wrong URL, a proxy's page), and for a ``deploymentBase`` or
        ``cancelAction`` link without a string ``href``: a failed poll either way, never a
        quiet one.
    """
    config = body.get("config") if isinstance(body, dict) else None
    if not isinstance(config, dict):
        raise DDIError("the poll answer is not a DDI controller resource (no config object): "
                       "check base_url and tenant")
    polling = config.get("polling")
    sleep = parse_sleep(polling.get("sleep") if isinstance(polling, dict) else None)
    links = body.get("_links")
    hrefs = {}
    for name, link in (links.items() if isinstance(links, dict) else ()):
        href = link.get("href") if isinstance(link, dict) else None
        if not isinstance(href, str) and name in ("deploymentBase", "cancelAction", "confirmationBase"):
            raise DDIError(f"the poll answer's _links.{name} has no href")
        hrefs[str(name)] = href if isinstance(href, str) else ""
    return sleep, hrefs


class DDIClient:
    """Requests to one controller's DDI resources, one at a time, in the order asked: a request
    starts once the one before it is answered (or failed). gooseBit loads the device at a
    request's start and saves it whole at its end, so of two requests under way at once the later
    save writes back what the other changed meanwhile (a ``configData`` beside the closed feedback
    put ``Running`` back over ``Finished``); SWUpdate, its own client, never sends two at once.

    :param http: a treq ``HTTPClient`` (its agent verifies TLS hostnames).
    :param clock: the reactor's clock, for request timeouts.
    :param base_url: the server's root URL.
    :param tenant: the tenant.
    :param controller_id: this gateway's controller id.
    :param authorization: the ``Authorization`` header value (``TargetToken ...``), or None.
    :param timeout: seconds one request may take.
    """

    def __init__(self, http: Any, clock: Any, base_url: str, tenant: str, controller_id: str,
                 authorization: str | None, timeout: float = 30.0) -> None:
        self.http = http
        self.clock = clock
        self.controller_id = controller_id
        self.root = f"{base_url.rstrip('/')}/{quote(tenant, safe='')}/controller/v1/{quote(controller_id, safe='')}"
        self.authorization = authorization
        self.timeout = timeout
        #: ``(scheme, host:port)`` of the server (:func:`~gateway.updates.downloader.url_origin`).
        self.origin = url_origin(self.root)
        self._turn = DeferredLock()  # (the requests' order: first asked, first sent)
        self._asked: list[Deferred[Any]] = []  # the requests asked and not ended, in order (for close)

    def _headers(self, body: bool) -> dict[str, list[str]]:
        headers = {"Accept": ["application/hal+json, application/json"]}
        if body:
            headers["Content-Type"] = ["application/json;charset=UTF-8"]
        if self.authorization:
            headers["Authorization"] = [self.authorization]
        return headers

    def check_link(self, url: str) -> str:
        """A ``_links`` href the server gave, accepted only on the server's own origin (the token
        is sent with it).

        :raises DDIError: for a link elsewhere.
        """
        if url_origin(url) != self.origin:
            raise DDIError(f"the server linked to {url!r}, outside {self.origin[0]}://{self.origin[1]}")
        return url

    def request(self, method: str, url: str, body: Any = None) -> Deferred[Any]:
        """Send one request once the requests asked before it are answered (its timeout runs from
        then); fire with the decoded JSON answer (None for an empty one).

        :param method: ``GET``, ``PUT`` or ``POST``.
        :param url: the full URL.
        :param body: a JSON-able body, or None.
        :raises DDIError: for an error status (with ``code`` and ``retry_after``), no answer, an
            answer over :data:`MAX_ANSWER` bytes, or one that is not JSON (but a ``PUT`` or
            ``POST`` answered 2xx, whose body is not needed, fires with None).
        """
        d = self._turn.run(self._send, method, url, body)

        def ended(result: Any) -> Any:
            if d in self._asked:
                self._asked.remove(d)
            if isinstance(result, Failure) and result.check(CancelledError):
                # given up while it waited for its turn (close): never sent
                raise DDIError(f"{method} {url}: given up before it was sent")
            return result

        self._asked.append(d)
        return d.addBoth(ended)

    def close(self) -> Deferred[None]:
        """Give up every request asked and not ended: those waiting for their turn are never
        sent, the one under way is cancelled (its connection closed); each fails with
        :class:`DDIError`. Fires once none is under way and the connections kept alive to the
        server are closed, so that the client of a service started in this one's place (a
        configuration change restarts the services) never sends beside it, nor leaves them open.
        """
        for d in reversed(self._asked):  # the last first: a cancelled one hands its turn to the next
            d.cancel()
        return self._turn.run(lambda: None).addCallback(lambda _: close_connections(self.http))

    def _request(self, method: str, url: str, data: bytes | None) -> Deferred[Any]:
        """Send one request; a ``PUT`` or ``POST`` whose connection closed before any answer
        is sent once more. A server that answers in HTTP/1.0 closes the connection after its
        answer without saying ``Connection: close``, and Twisted's pool keeps it: the request
        after a poll went on that dead connection. Twisted sends a ``GET`` again itself; a
        configData or a feedback told twice is harmless (the server may get a step twice,
        never not at all)."""
        def once() -> Deferred[Any]:
            return self.http.request(method, url, headers=self._headers(data is not None), data=data,
                                     allow_redirects=False)

        d = once()
        if method != "GET":
            d.addErrback(lambda failure: once() if _closed_unanswered(failure) else failure)
        return d

    @inlineCallbacks
    def _send(self, method: str, url: str, body: Any) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        timer = None
        try:
            d = self._request(method, url, data)
            # the timeout covers the answer's body too: a server that sends its headers and then
            # trickles the body (or stops) would hold the poll for ever
            d.addCallback(lambda response: read_body(response, MAX_ANSWER).addCallback(
                lambda answer: (response, *answer)))
            timer = self.clock.callLater(self.timeout, d.cancel)
            try:
                response, content, cut = yield d
            finally:
                if timer.active():
                    timer.cancel()
        except Exception as error:
            if timer is not None and timer.called:
                raise DDIError(f"{method} {url}: no answer within {self.timeout:g} s (timed out)") from error
            raise DDIError(f"{method} {url}: no answer: {describe(error)}") from error
        if cut and method != "GET" and 200 <= response.code < 300:
            return None  # taken in (feedback, configData); what it says back is not needed
        if cut:
            raise DDIError(f"{method} {url}: HTTP {response.code}, the answer is over {MAX_ANSWER} bytes",
                           response.code)
        if not 200 <= response.code < 300:
            words = describe_answer(response.code, response.phrase, content)
            if 300 <= response.code < 400:  # (not followed: the token would go where base_url does not say)
                location = shown_location(response.headers)
                to = f" to {location!r}" if location is not None else ""
                words += f" (redirected{to}: requests are not redirected; set fleet.base_url to the server's address)"
            raise DDIError(f"{method} {url}: {words}", response.code,
                           retry_after((response.headers.getRawHeaders(b"retry-after") or [None])[0],
                                       self.clock.seconds()), _error_code(content))
        if not content.strip():
            return None
        try:
            return jsontext.loads(content, strict=True)  # (a NaN, or one of two ids, was taken into state.json)
        except ValueError as error:
            if method != "GET":
                # taken in all the same (an "OK" answered to a confirmation failed the poll,
                # though the server had it)
                return None
            raise DDIError(f"{method} {url}: the answer is not JSON ({error})", response.code) from error

    def poll(self) -> Deferred[Any]:
        """``GET`` the controller's base resource: polling config and ``_links``."""
        return self.request("GET", self.root)

    def get(self, href: str) -> Deferred[Any]:
        """``GET`` a resource the server linked to (deploymentBase, cancelAction)."""
        return self.request("GET", self.check_link(href))

    def put_config_data(self, data: dict[str, str]) -> Deferred[Any]:
        """``PUT configData``: the gateway's attributes, merged into what the server has."""
        return self.request("PUT", f"{self.root}/configData", {"mode": "merge", "data": data})

    def confirm(self, action_id: str, details: list[str]) -> Deferred[Any]:
        """``POST`` hawkBit's confirmation of an action waiting for one (its confirmation flow):
        ``{"confirmation": "confirmed", "details": [...]}`` on ``confirmationBase/{actionId}/feedback``.

        :param action_id: the action's id.
        :param details: human-readable lines.
        """
        url = f"{self.root}/confirmationBase/{quote(action_id, safe='')}/feedback"
        return self.request("POST", url, {"confirmation": "confirmed", "details": details})

    def feedback(self, kind: str, action_id: str, status: dict[str, Any], happened_at: float | None = None
                 ) -> Deferred[Any]:
        """``POST`` feedback on an action.

        :param kind: ``deploymentBase`` or ``cancelAction``.
        :param action_id: the action's id.
        :param status: the ``status`` object (execution, result, details).
        :param happened_at: when the step it reports happened (seconds since the epoch), sent as
            DDI's ``timestamp`` (milliseconds since the epoch), which hawkBit records the step at
            (without it, at the feedback's arrival: a step sent after a backoff or a restart
            would be recorded late); not sent when unknown, or before
            :data:`~gateway.clockstep.CLOCK_SET_SINCE` (the clock was not set yet: the server's
            time of arrival is nearer the truth than 1970).
        """
        url = f"{self.root}/{kind}/{quote(action_id, safe='')}/feedback"
        body: dict[str, Any] = {"id": action_id, "status": status}
        if happened_at is not None and happened_at >= CLOCK_SET_SINCE:
            body["timestamp"] = round(happened_at * 1000)
        return self.request("POST", url, body)
