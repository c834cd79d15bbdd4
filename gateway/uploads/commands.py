"""Where upload messages come from: local topics and cloud commands addressed to the gateway.

Two ways in, one handler (:meth:`gateway.uploads.service.UploadService.handle`), as for the
update commands (``gateway/updates/commands.py``; the remote-commands dispatcher was not on
main when this was written):

- local: ``edge/gateway/uploads/<operation>``; the answer goes to ``.../<operation>/response``;
- cloud: a Hono/Kanto command ``upload.<operation>`` to this gateway's device id, which the
  link's downlink republishes as ``command//<device>/req/<req-id>/upload.<operation>``,
  answered on ``command//<device>/res/<req-id>/<status>`` (204, 400, 404 or 500).

``<operation>`` is one of Kanto's AutoUploadable inbox messages: ``trigger``, ``start``,
``cancel``, ``activate``, ``deactivate``.
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any, Callable, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from gateway.broker.bus import BusMessage
from gateway.updates.commands import Bus
from gateway.uploads.messages import OPERATIONS

#: Local topic prefix of upload messages.
UPLOAD_TOPIC = "edge/gateway/uploads"
#: Cloud command names are the operations under this prefix.
COMMAND_PREFIX = "upload."


class Handler(Protocol):
    """What takes an inbox message: the upload service."""

    def handle(self, operation: str, payload: bytes) -> Deferred[tuple[int, dict[str, Any]]]:
        """Handle one message; fires with ``(status, body)``."""


class UploadCommands(Service):
    """Subscribes the upload handler to its local topics and to cloud commands for this device.

    :param handler: the upload service.
    :param bus: the local bus.
    :param device_id: this gateway's device id.
    """

    name = "upload-commands"  # type: ignore[assignment]
    log = Logger()

    def __init__(self, handler: Handler, bus: Bus, device_id: str) -> None:
        self.handler = handler
        self.bus = bus
        self.device_id = device_id
        self._unsubscribe: list[Callable[[], None]] = []

    def startService(self) -> None:
        """Subscribe (local messages and cloud commands)."""
        super().startService()
        for name in OPERATIONS:
            self._unsubscribe.append(self.bus.subscribe(f"{UPLOAD_TOPIC}/{name}", partial(self._local, name)))
            self._unsubscribe.append(self.bus.subscribe(
                f"command//{self.device_id}/req/+/{COMMAND_PREFIX}{name}", partial(self._cloud, name)))

    def stopService(self) -> None:
        """Unsubscribe."""
        super().stopService()
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []

    def _local(self, name: str, message: BusMessage) -> Deferred[Any]:
        def reply(answer: tuple[int, dict[str, Any]]) -> Any:
            status, body = answer
            payload = json.dumps({"status": status, **({"value": body} if body else {})}).encode()
            return self.bus.publish(f"{UPLOAD_TOPIC}/{name}/response", payload, 1, False)

        return self.handler.handle(name, message.payload).addCallback(reply)

    def _cloud(self, name: str, message: BusMessage) -> Deferred[Any]:
        request_id = message.topic.split("/")[4]

        def reply(answer: tuple[int, dict[str, Any]]) -> Any:
            status, body = answer
            self.log.info("cloud command upload.{name} ({request_id}): {status}", name=name,
                          request_id=request_id, status=status)
            topic = f"command//{self.device_id}/res/{request_id}/{status}"
            return self.bus.publish(topic, json.dumps(body).encode(), 1, False)

        return self.handler.handle(name, message.payload).addCallback(reply)
