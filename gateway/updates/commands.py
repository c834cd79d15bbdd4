"""Where update requests come from: local topics and cloud commands addressed to the gateway.

Two ways in, one handler (:meth:`gateway.updates.service.UpdateService.handle_command`):

- local: ``edge/gateway/updates/<name>`` (an app or an operator on the gateway), subscribed
  by :class:`UpdateCommands`;
- cloud: a Hono/Kanto command to this gateway's device id, which the link's downlink
  republishes locally as ``command//<device>/req/<req-id>/<name>``. It comes through the one
  dispatcher of commands to the gateway (:mod:`gateway.commands.dispatcher`), which calls
  :meth:`UpdateCommands.answer` and answers on ``command//<device>/res/<req-id>/<status>``
  (``204`` accepted, ``400`` refused, with the reason); the default routes take it back up,
  and the operation's progress follows on the status topic.

Either way the body is the Kanto SoftwareUpdatable message, bare or wrapped in a Ditto
envelope (``{"topic", "path", "value"}``), handed over as it came: the handler parses it once
and takes the envelope off.

``<name>`` is ``install``, ``download`` or ``cancel``.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Protocol

from twisted.application.service import Service

from gateway.broker.bus import BusMessage, request_handler

#: Local topic prefix of update requests (and of the status topic, by default).
UPDATE_TOPIC = "edge/gateway/updates"
#: The request names, as Kanto's SoftwareUpdatable feature calls its messages.
UPDATE_COMMANDS = ("install", "download", "cancel")


class Handler(Protocol):
    """What takes a request: the update service."""

    def handle_command(self, command: str, payload: bytes) -> str | None:
        """Handle one request (the Kanto message, bare or in a Ditto envelope, as it came); the
        reason it was refused, or ``None`` once accepted."""


class Bus(Protocol):
    """The local bus (``gateway.broker.bus.LocalBus``)."""

    def subscribe(self, topic_filter: str, callback: Callable[[BusMessage], Any]) -> Callable[[], None]:
        """Call ``callback`` with each message matching ``topic_filter``."""

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> Any:
        """Publish on the local broker."""


class UpdateCommands(Service):
    """Subscribes the update handler to its local topics; answers the cloud commands the
    dispatcher hands it (:meth:`answer`).

    A service placed after the update service in the tree: it takes requests once that has
    started, and stops taking them before that stops.

    :param handler: the update service.
    :param bus: the local bus.
    """

    name = "update-commands"  # type: ignore[assignment]

    def __init__(self, handler: Handler, bus: Bus) -> None:
        self.handler = handler
        self.bus = bus
        self._unsubscribe: list[Callable[[], None]] = []

    def startService(self) -> None:
        """Subscribe to the local topics."""
        super().startService()
        for name in UPDATE_COMMANDS:
            self._unsubscribe.append(self.bus.subscribe(
                f"{UPDATE_TOPIC}/{name}", request_handler(partial(self._local, name))))

    def stopService(self) -> None:
        """Unsubscribe."""
        super().stopService()
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []

    def answer(self, name: str, payload: bytes) -> tuple[int, dict[str, Any]]:
        """Hand one cloud command to the handler; its reply: ``(204, {})`` once accepted,
        ``(400, {"error": why})`` when refused.

        :param name: ``install``, ``download`` or ``cancel``.
        :param payload: the Kanto message, bare or in a Ditto envelope.
        """
        refused = self.handler.handle_command(name, payload)
        return (400, {"error": refused}) if refused else (204, {})

    def _local(self, name: str, message: BusMessage) -> str | None:
        return self.handler.handle_command(name, message.payload)
