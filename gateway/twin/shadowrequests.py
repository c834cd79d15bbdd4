"""The shadow sync's requests in flight: their client tokens, the answers matched to them,
their timeouts, and the waits after the cloud refused one with 429 or 5xx; a shadow's
consecutive updates waiting in the stream merged into one request, and sent again one at a
time when the cloud refuses that request for good."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from gateway.clockstep import steady_seconds
from gateway.logthrottle import LogThrottle, since_last_line
from gateway.operations.retry import lazy_backoff
from gateway.twin import shadows
from gateway.twin.document import MISSING, compose
from gateway.twin.settings import TwinSettings

#: Seconds before a request refused with 429 or 5xx is first tried again; while its shadow's
#: requests keep being refused the wait grows (1.5-fold, plus up to a second of jitter) to
#: RETRY_MAX_DELAY.
RETRY_DELAY = 2.0
RETRY_MAX_DELAY = 60.0
#: Seconds between two log lines about requests the cloud did not answer in time, at least.
UNANSWERED_LOG_INTERVAL = 600.0


@dataclass
class Request:
    """A request waiting for its reply."""

    kind: str  # "get" or "record"
    shadow: str
    records: list[Any]  # the records of the stream it stands for (none for a get)
    timer: IDelayedCall | None
    versioned: bool = False  # an update sent with the shadow's version (a 404 then: the cloud lost it)


def reported_patch(body: Any) -> dict[str, Any] | None:
    """The patch of an update request's body that is ``{"state": {"reported": <patch>}}`` and
    nothing else (``None`` for any other body: it is sent as it is)."""
    if not isinstance(body, dict) or list(body) != ["state"]:
        return None
    state = body["state"]
    if not isinstance(state, dict) or list(state) != ["reported"] or not isinstance(state["reported"], dict):
        return None
    return state["reported"]


def merged_run(shadow: str, records: list[Any], until: int | None, settings: TwinSettings) -> tuple[
        list[Any], dict[str, Any]]:
    """The records one request of ``shadow`` stands for, and its body: the first of
    ``records`` (the shadow's records waiting in the stream, in order) and, when it is an
    update, the updates right after it whose patches compose with it (RFC 7396) into one
    document within ``max_document_bytes`` and ``max_depth``; a delete, or an update that
    does not compose, ends the run (it goes in a request of its own, after).

    :param until: the seq of the last record this shadow's request had when it was last
        sent, unanswered: it is sent again as it was, with the same clientToken, so that an
        answer later than ``request_timeout`` still matches it; ``None``: as many as fit.
    """
    first = records[0]
    body = json.loads(first.payload)
    reported = reported_patch(body)
    taken = [first]
    if reported is None or not first.topic.endswith("/update"):
        return taken, body
    for record in records[1:]:
        if until is not None and record.seq > until:
            break
        patch = reported_patch(json.loads(record.payload)) if record.topic == first.topic else None
        merged = MISSING if patch is None else compose(reported, patch)
        if merged is MISSING or shadows.size_problem(shadow, merged, settings.max_document_bytes,
                                                     settings.max_depth) is not None:
            break
        reported = merged
        taken.append(record)
    return taken, {"state": {"reported": reported}}


class ShadowRequests:
    """The requests one shadow sync sent that the cloud has not answered yet, one at a time
    per shadow.

    :param settings: the ``twin:`` section (``request_timeout``).
    :param clock: timeouts and retries.
    :param thing: the AWS thing name.
    :param log: the sync's logger (the lines keep the sync's namespace).
    :param again: called with a shadow free again after a timeout or a wait, and whether its
        get is to be sent again; it sends what is next.
    :param retry_policy: ``attempt -> seconds`` before a request refused with 429 or 5xx goes
        again (``attempt``: that shadow's refusals in a row, from 0); by default backoff with
        jitter from :data:`RETRY_DELAY` to :data:`RETRY_MAX_DELAY`.
    """

    def __init__(self, settings: TwinSettings, clock: Any, thing: str, log: Logger,
                 again: Callable[[str, bool], None], retry_policy: Callable[[int], float] | None = None) -> None:
        self.settings = settings
        self.clock = clock
        self.thing = thing
        self.log = log
        self.again = again
        self.inflight: dict[str, Request] = {}  # clientToken -> request
        self.busy: set[str] = set()  # shadows with a request in flight or waiting to retry
        self._get_count = 0
        #: shadow -> the clientToken of its get awaiting an answer: sent again with it, so that an
        #: answer slower than request_timeout still reads the shadow (a new token at each timeout
        #: would drop every late answer, and a cloud always that slow would never be read)
        self._get_tokens: dict[str, str] = {}
        #: shadow -> the seq of the last record its unanswered request stands for: it is sent
        #: again as it was (same records, same clientToken) until it is answered
        self._record_ends: dict[str, int] = {}
        #: shadow -> the seq of the last record of its merged request the cloud refused for good:
        #: its records up to there go one request each, so that only one refused alone is dropped
        self._alone: dict[str, int] = {}
        #: clientTokens of requests unanswered within request_timeout (and sent again), on this
        #: connection: their answers, late, do not make the next unanswered request news
        self._overdue: set[str] = set()
        self._timers: list[IDelayedCall] = []
        self.retry_policy = retry_policy or lazy_backoff(initialDelay=RETRY_DELAY, maxDelay=RETRY_MAX_DELAY)
        self._throttled: dict[str, int] = {}  # shadow -> its 429/5xx refusals in a row
        self._unanswered_lines = LogThrottle(UNANSWERED_LOG_INTERVAL, lambda: steady_seconds(clock))

    def send_get(self, protocol: Any, shadow: str) -> None:
        """Send a get of ``shadow`` (with the token of its get unanswered, if one is)."""
        token = self._get_tokens.get(shadow)
        if token is None:
            self._get_count += 1
            token = self._get_tokens[shadow] = f"get-{self._get_count}"
        self._send(protocol, shadows.shadow_topic(self.thing, shadow, "get"), {"clientToken": token},
                   Request("get", shadow, [], None), token)

    def send_records(self, protocol: Any, shadow: str, records: list[Any], version: int | None) -> None:
        """Send the request of the first of ``records`` (``shadow``'s records waiting in the
        stream, in order), the updates right after it merged in (:func:`merged_run`), with the
        seq of the last record it stands for as clientToken; an update with ``version``, the
        last seen of ``shadow`` (``None``: none known). The records of a merged request the
        cloud refused for good (:meth:`one_at_a_time`) go alone."""
        alone = self._alone.get(shadow)
        if alone is not None and records[0].seq > alone:  # (past them: merged again)
            del self._alone[shadow]
            alone = None
        until = records[0].seq if alone is not None else self._record_ends.get(shadow)
        taken, body = merged_run(shadow, records, until, self.settings)
        token = str(taken[-1].seq)
        self._record_ends[shadow] = taken[-1].seq
        body["clientToken"] = token
        versioned = taken[0].topic.endswith("/update") and version is not None
        if versioned:
            body["version"] = version
        self._send(protocol, taken[0].topic, body, Request("record", shadow, taken, None, versioned), token)

    def _send(self, protocol: Any, topic: str, body: dict[str, Any], request: Request, token: str) -> None:
        request.timer = self.clock.callLater(self.settings.request_timeout, self._timed_out, token)
        self.inflight[token] = request
        self.busy.add(request.shadow)
        # compact, as shadows.size_problem measured it against max_document_bytes
        protocol.publish(topic, json.dumps(body, separators=(",", ":")).encode(), 0, False, 0, False)

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
                          " ({since}): does the cloud serve the shadows of {thing}, and does its policy let this"
                          " client use their topics?",
                          shadow=shadows.shown_shadow(request.shadow), token=token, timeout=self.settings.request_timeout,
                          thing=self.thing, since=since_last_line(
                              count, "unanswered", f"logged at most once every {UNANSWERED_LOG_INTERVAL / 60:g}"
                              " minutes until one is answered in time"))
        self.busy.discard(request.shadow)
        self.again(request.shadow, request.kind == "get")

    def waiting(self, token: str, shadow: str) -> Request | None:
        """The request an answer on ``shadow``'s topics with ``token`` is for (``None``: none)."""
        request = self.inflight.get(token)
        if request is not None and request.shadow != shadow:
            request = None
        return request

    def finish(self, token: str) -> Request | None:
        """Take the request ``token`` names out of the requests in flight (its shadow is free
        again); ``None`` when none is."""
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
            else:
                self._record_ends.pop(request.shadow, None)  # (the next may merge more records)
        return request

    def one_at_a_time(self, shadow: str, last: int) -> None:
        """The cloud refused for good a merged request of ``shadow`` standing for its records up
        to the seq ``last``: send each of them in a request of its own (one of them may be
        bad, not all), then merge again."""
        self._alone[shadow] = last

    def accepted(self, shadow: str) -> None:
        """The cloud took a request of ``shadow``: its next refusal with 429 or 5xx is the first
        in a row."""
        self._throttled.pop(shadow, None)

    def retry_later(self, shadow: str, get: bool = False) -> None:
        """Hold ``shadow`` for the retry policy's delay (429, 5xx: longer at each refusal in a
        row), then send again: its get when ``get``, else its next record."""
        self.busy.add(shadow)
        attempt = self._throttled.get(shadow, 0)
        self._throttled[shadow] = attempt + 1
        delay = self.retry_policy(attempt)
        self.log.info("shadow {shadow}: throttled or unavailable ({n} in a row); again in {delay:.1f}s",
                      shadow=shadows.shown_shadow(shadow), n=attempt + 1, delay=delay)

        def retry() -> None:
            self._timers.remove(timer)  # only pending timers are kept: a link up for long refused often
            self.busy.discard(shadow)
            self.again(shadow, get)

        timer = self.clock.callLater(delay, retry)
        self._timers.append(timer)

    def forget(self) -> None:
        """Forget every request in flight and every wait (the connection is gone): each is sent
        again, with the same clientToken, on the next connect."""
        for request in self.inflight.values():
            if request.timer is not None and request.timer.active():
                request.timer.cancel()
        for timer in self._timers:
            if timer.active():
                timer.cancel()
        self._timers = []
        self.inflight.clear()
        self.busy.clear()
        self._get_tokens.clear()
        self._overdue.clear()
