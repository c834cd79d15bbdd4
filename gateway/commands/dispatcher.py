"""One subscriber for every cloud command addressed to the gateway itself.

A link with a downlink republishes a Hono/Kanto command to this gateway's device id on
the local broker as ``command//<device>/req/<req-id>/<name>``. The dispatcher takes
every such topic, runs the handler registered for ``<name>`` and answers on
``command//<device>/res/<req-id>/<status>`` with a JSON body (the default routes take
replies back up). An unknown name is answered 404 (a name of several levels,
``.../req/<req-id>/a/b``, too: no command has one), bad arguments 400, each with
``{"error": why}``. A one-way command (empty ``<req-id>``) runs without a reply.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Collection, Mapping, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway import jsontext
from gateway.broker.bus import BusMessage, request_handler
from gateway.clockstep import steady_seconds
from gateway.errors import GatewayError
from gateway.journal.errors import RecordTooLargeError, StreamFullError
from gateway.logthrottle import (NOT_PUBLISHED_LOG_INTERVAL, REFUSED_LOG_INTERVAL, LogThrottle, not_published_since,
                                 refused_since)
from gateway.payloadlimits import too_large
from gateway.shown import escaped, shown, shown_repr


class CommandError(GatewayError):
    """A command cannot be carried out; answered with ``status`` and ``{"error": message}``.

    :param status: the reply status (400 bad arguments, 404 unknown, 409 conflict, 503 unavailable).
    :param message: why, for the operator.
    :param details: more fields for the reply body (e.g. every configuration error).
    """

    def __init__(self, status: int, message: str, details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = dict(details or {})


@dataclass(frozen=True)
class Reply:
    """A command's answer: a status (HTTP-like, as Hono's) and a JSON-ready body."""

    status: int
    body: Any


@dataclass(frozen=True)
class CommandRequest:
    """One command as it arrived.

    :ivar name: the command name (the topic levels after the request id).
    :ivar request_id: its request id ("" for a one-way command).
    :ivar payload: the raw body.
    """

    name: str
    request_id: str
    payload: bytes

    def args(self, keys: Collection[str] | None = None) -> dict[str, Any]:
        """The body as a JSON object (a Ditto envelope's ``value``; empty body: ``{}``).

        :param keys: the keys the object may hold (a typo must not be dropped silently);
            ``None``: any.
        :raises CommandError: 400 when it is not a JSON object (RFC 8259's: no ``NaN``, no key
            given twice...), nests deeper than
            :data:`gateway.jsontext.MAX_NESTING` levels, or holds a key not in ``keys``.
        """
        if not self.payload.strip():
            return {}
        try:
            body = jsontext.loads(self.payload, strict=True)  # (a NaN went on into the configuration)
        except ValueError as exc:
            raise CommandError(400, f"the body is not JSON: {exc}") from None
        if isinstance(body, dict) and "value" in body and ("path" in body or "topic" in body):
            body = body["value"]
        if not isinstance(body, dict):
            raise CommandError(400, f"the body must be a JSON object, not {jsontext.kind(body)}")
        if jsontext.nesting(body) > jsontext.MAX_NESTING:
            raise CommandError(400, f"the body nests deeper than {jsontext.MAX_NESTING} levels")
        problem = jsontext.unknown_keys(body, keys) if keys is not None else None
        if problem is not None:
            raise CommandError(400, problem)
        return body


#: Carries out one command: returns a Reply, or a Deferred firing with one.
Handler = Callable[[CommandRequest], "Reply | Deferred[Reply]"]


class Bus(Protocol):
    """The local bus (``gateway.broker.bus.LocalBus``)."""

    def subscribe(self, topic_filter: str, callback: Callable[[BusMessage], Any]) -> Callable[[], None]:
        """Call ``callback`` with each message matching ``topic_filter``."""

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False,
                reserved: bool = False) -> Any:
        """Publish on the local broker (``reserved``: the journal's reserve may take it)."""


class CommandDispatcher(Service):
    """Subscribes ``command//<device>/req/+/+/#`` and runs the handler of each command.

    :param bus: the local bus.
    :param device_id: this gateway's device id (commands to other devices are their apps').
    :param handlers: command name -> handler.
    :param clock: counts the time between two lines about replies not published, or about
        commands refused.
    """

    name = "commands"  # type: ignore[assignment]
    log = Logger()

    def __init__(self, bus: Bus, device_id: str, handlers: Mapping[str, Handler], clock: IReactorTime) -> None:
        self.bus = bus
        self.device_id = device_id
        self.handlers = dict(handlers)
        # (a stream full for hours refuses the reply to every command the cloud sends)
        self._not_published_lines = LogThrottle(NOT_PUBLISHED_LOG_INTERVAL, lambda: steady_seconds(clock))
        # (a client may send retained or bad commands in a loop: one line per interval for each)
        self._retained_lines = LogThrottle(REFUSED_LOG_INTERVAL, lambda: steady_seconds(clock))
        self._refused_lines = LogThrottle(REFUSED_LOG_INTERVAL, lambda: steady_seconds(clock))
        self._unsubscribe: Callable[[], None] | None = None

    def startService(self) -> None:
        """Start taking commands."""
        super().startService()
        # (+/+/# takes deeper topics too, so that they are answered 404 rather than never; the
        # removal of a retained command, which its link's cloud withdrew, is no command)
        self._unsubscribe = self.bus.subscribe(f"command//{self.device_id}/req/+/+/#", request_handler(self._received))

    def stopService(self) -> None:
        """Stop taking commands (those under way still reply)."""
        super().stopService()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def _received(self, message: BusMessage) -> Deferred[Any] | None:
        levels = message.topic.split("/")
        request = CommandRequest("/".join(levels[5:]), levels[4], message.payload)
        if message.retain:  # a broker's stored copy: a live command never comes retained from the cloud
            count = self._retained_lines.note()
            if count is not None:
                self.log.warn("command {name} ({request_id}) not run: it came retained, a copy the broker kept and"
                              " sends again on every subscription (each reconnect); send commands without retain"
                              " ({since})", name=escaped(shown(request.name)),
                              request_id=escaped(request.request_id or "one-way"), since=refused_since(count))
            return None
        handler = self.handlers.get(request.name)
        oversized = too_large(message.payload)
        if oversized is not None:  # (refused unread: parsing it could hold the reactor for seconds)
            d: Deferred[Any] = maybeDeferred(lambda: Reply(413, {"error": oversized}))
        elif handler is None:
            known = ", ".join(sorted(self.handlers))
            unknown = f"unknown command {shown_repr(request.name)} (known: {known})"
            d = maybeDeferred(lambda: Reply(404, {"error": unknown}))
        else:
            d = maybeDeferred(handler, request)
        d.addErrback(self._error, request)
        return d.addCallback(self._reply, request)

    def _error(self, failure: Failure, request: CommandRequest) -> Reply:
        if failure.check(CommandError):
            error: CommandError = failure.value
            return Reply(error.status, {"error": error.message, **error.details})
        self.log.failure("command {name} ({request_id}) failed", failure, name=escaped(shown(request.name)),
                         request_id=escaped(request.request_id))
        return Reply(500, {"error": f"internal error: {failure.getErrorMessage()}"})

    def _reply(self, reply: Reply, request: CommandRequest) -> Any:
        """Log the reply (one refused, a 4xx, at most once per :data:`~gateway.logthrottle.REFUSED_LOG_INTERVAL`
        with how many were refused since) and publish it, when the command wants one."""
        name, request_id = escaped(shown(request.name)), escaped(request.request_id or "one-way")
        if 400 <= reply.status < 500:
            count = self._refused_lines.note()
            if count is not None:
                self.log.info("command {name} ({request_id}): {status} ({since})", name=name,
                              request_id=request_id, status=reply.status, since=refused_since(count))
        else:
            self.log.info("command {name} ({request_id}): {status}", name=name, request_id=request_id,
                          status=reply.status)
        if not request.request_id:
            return None
        # (reserved: a stream full under reject-new, of a backlog draining or of a local
        # flood, must not swallow the reply the cloud waits for)
        return self._publish(reply, request, reserved=True)

    def _publish(self, reply: Reply, request: CommandRequest, reserved: bool) -> Any:
        """Publish ``reply`` on its topic, into the journal streams' reserve if ``reserved``."""
        topic = f"command//{self.device_id}/res/{request.request_id}/{reply.status}"
        try:
            d = self.bus.publish(topic, json.dumps(reply.body).encode(), 1, False, reserved=reserved)
        except Exception as exc:  # noqa: BLE001 - e.g. the broker is stopping
            self._not_published(request, str(exc))
            return None
        if isinstance(d, Deferred):
            d.addCallbacks(lambda _: self._not_published_lines.reset(), self._refused,
                           errbackArgs=(reply, request, reserved))
        else:
            self._not_published_lines.reset()
        return d

    def _refused(self, failure: Failure, reply: Reply, request: CommandRequest, reserved: bool) -> Any:
        """Log a reply the broker or the journal refused. One refused beyond the reserve is
        published again as any message (drop-oldest then makes room for it; reject-new refuses
        it, counted). One that no journal stream can ever hold (larger than its ``max_bytes``)
        is replaced by a 413 saying so: the cloud would otherwise wait for it for ever (its
        local subscribers have seen the reply itself)."""
        if reserved and failure.check(StreamFullError) and not failure.check(RecordTooLargeError):
            return self._publish(reply, request, reserved=False)
        self._not_published(request, failure.getErrorMessage())
        if failure.check(RecordTooLargeError) and reply.status != 413:
            return self._reply(Reply(413, {"error": f"the reply ({reply.status}) can never be stored:"
                                                    f" {failure.getErrorMessage()}"}), request)
        return None

    def _not_published(self, request: CommandRequest, error: str) -> None:
        """Warn that the reply to ``request`` was not published: the first, then at most one
        per :data:`~gateway.logthrottle.NOT_PUBLISHED_LOG_INTERVAL` until one is."""
        count = self._not_published_lines.note()
        if count is not None:
            self.log.warn("reply to {name} not published: {error} ({since})", name=escaped(shown(request.name)),
                          error=error, since=not_published_since(count))
