"""Where upload messages come from: local topics and cloud commands addressed to the gateway.

Two ways in, one handler (:meth:`gateway.uploads.service.UploadService.handle`):

- local: ``edge/gateway/uploads/<operation>``, subscribed by :class:`UploadCommands`; the
  answer goes to ``.../<operation>/response``;
- cloud: a Hono/Kanto command ``upload.<operation>`` to this gateway's device id, which the
  link's downlink republishes as ``command//<device>/req/<req-id>/upload.<operation>``. It
  comes through the one dispatcher of commands to the gateway
  (:mod:`gateway.commands.dispatcher`), which calls the handlers of :func:`command_handlers`
  and answers on ``command//<device>/res/<req-id>/<status>`` (204, 400, 404 or 500).

``<operation>`` is one of Kanto's AutoUploadable inbox messages: ``trigger``, ``start``,
``cancel``, ``activate``, ``deactivate``.
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any, Callable, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.broker.bus import BusMessage, request_handler
from gateway.clockstep import steady_seconds
from gateway.commands.dispatcher import CommandRequest, Handler as CommandHandler, Reply
from gateway.logthrottle import NOT_PUBLISHED_LOG_INTERVAL, LogThrottle, not_published_since
from gateway.updates.commands import Bus
from gateway.uploads.messages import OPERATIONS

#: Local topic prefix of upload messages.
UPLOAD_TOPIC = "edge/gateway/uploads"
#: Cloud command names are the operations under this prefix.
COMMAND_PREFIX = "upload."
#: The cloud command names: ``upload.<operation>``.
UPLOAD_COMMANDS = tuple(f"{COMMAND_PREFIX}{name}" for name in OPERATIONS)


class Handler(Protocol):
    """What takes an inbox message: the upload service."""

    def handle(self, operation: str, payload: bytes) -> Deferred[tuple[int, dict[str, Any]]]:
        """Handle one message; fires with ``(status, body)``."""


def command_handlers(handler: Handler) -> dict[str, CommandHandler]:
    """The dispatcher's handlers of the cloud commands ``upload.<operation>``: each hands the
    raw body to ``handler`` and answers with its ``(status, body)`` once that fires.

    :param handler: the upload service.
    """

    def answer(operation: str, request: CommandRequest) -> Deferred[Reply]:
        return handler.handle(operation, request.payload).addCallback(lambda answer: Reply(*answer))

    return {f"{COMMAND_PREFIX}{name}": partial(answer, name) for name in OPERATIONS}


class UploadCommands(Service):
    """Subscribes the upload handler to its local topics (cloud commands come through the
    dispatcher, see :func:`command_handlers`).

    :param handler: the upload service.
    :param bus: the local bus.
    :param clock: counts the time between two lines about answers the bus refused.
    """

    name = "upload-commands"  # type: ignore[assignment]
    log = Logger()

    def __init__(self, handler: Handler, bus: Bus, clock: IReactorTime) -> None:
        self.handler = handler
        self.bus = bus
        self._unsubscribe: list[Callable[[], None]] = []
        self._not_published_lines = LogThrottle(NOT_PUBLISHED_LOG_INTERVAL, lambda: steady_seconds(clock))

    def startService(self) -> None:
        """Subscribe to the local topics."""
        super().startService()
        for name in OPERATIONS:
            self._unsubscribe.append(self.bus.subscribe(f"{UPLOAD_TOPIC}/{name}",
                                                       request_handler(partial(self._local, name))))

    def stopService(self) -> None:
        """Unsubscribe."""
        super().stopService()
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []

    def _local(self, name: str, message: BusMessage) -> Deferred[Any]:
        def reply(answer: tuple[int, dict[str, Any]]) -> Deferred[None]:
            status, body = answer
            payload = json.dumps({"status": status, **({"value": body} if body else {})}).encode()
            return maybeDeferred(self.bus.publish, f"{UPLOAD_TOPIC}/{name}/response", payload, 1, False).addCallbacks(
                lambda _: self._not_published_lines.reset(), self._not_published, errbackArgs=(name,))

        return self.handler.handle(name, message.payload).addCallback(reply)

    def _not_published(self, failure: Failure, name: str) -> None:
        """Warn that an answer on a local topic was not published (the broker stopping, a
        journal stream a route takes it to refusing it): the first, then at most one per
        :data:`~gateway.logthrottle.NOT_PUBLISHED_LOG_INTERVAL` until one is; it was a bus
        subscriber's failure, with a traceback each."""
        count = self._not_published_lines.note()
        if count is not None:
            self.log.warn("answer on {topic} not published: {error} ({since})", topic=f"{UPLOAD_TOPIC}/{name}/response",
                          error=failure.getErrorMessage(), since=not_published_since(count))
