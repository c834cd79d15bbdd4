"""A real mosquitto on 127.0.0.1 as the stand-in cloud broker for integration tests."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path
from typing import Any

from twisted.internet import error, protocol
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.task import deferLater

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def downlink_subscribed(link: Any) -> bool:
    """Whether the gateway's MQTT ``link`` is connected and the cloud broker has answered its
    downlink SUBSCRIBE with a SUBACK: from then on a message a backend publishes (on another
    connection) reaches the gateway. ``is_connected`` alone is not enough: it is set when the
    CONNACK arrives, and the SUBSCRIBE is only sent then."""
    protocol = link.protocol
    return bool(link.is_connected and protocol is not None and not protocol.subscriptions)


class _Process(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.ended: Deferred[None] = Deferred()
        self.output = b""

    def errReceived(self, data: bytes) -> None:
        self.output += data

    outReceived = errReceived

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(None)


class Mosquitto:
    """One mosquitto: persistent (sessions survive restarts), optionally TLS with client certs.

    :param directory: where its config and persistence file go.
    :param port: the port it listens on (the same across restarts).
    :param pki: paths from ``tests.tlscerts.make_pki`` to listen with TLS and require client certs.
    """

    def __init__(self, reactor: Any, directory: Path, port: int, pki: dict[str, str] | None = None) -> None:
        self.reactor = reactor
        self.port = port
        self.process: Any = None
        self.proto: _Process | None = None
        directory.mkdir(parents=True, exist_ok=True)
        lines = [f"listener {port} 127.0.0.1", "allow_anonymous true", "persistence true",
                 f"persistence_location {directory}/", "max_queued_messages 0",
                 "log_dest stderr"]
        if os.geteuid() == 0:
            lines.append("user root")  # otherwise it drops to "mosquitto", who cannot write here
        if pki:
            lines += [f"cafile {pki['ca']}", f"certfile {pki['server_cert']}", f"keyfile {pki['server_key']}",
                      "require_certificate true"]
        self.config = directory / "mosquitto.conf"
        self.config.write_text("\n".join(lines) + "\n")

    @inlineCallbacks
    def start(self) -> Any:
        """Start it and wait until it accepts connections (5 s at most)."""
        self.proto = _Process()
        self.process = self.reactor.spawnProcess(self.proto, MOSQUITTO, [MOSQUITTO, "-c", str(self.config)],
                                                 env=None)
        for _ in range(100):
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                yield deferLater(self.reactor, 0.05, lambda: None)
        raise RuntimeError(f"mosquitto did not start: {self.proto.output!r}")

    def stop(self) -> Deferred[None]:
        """SIGTERM (it saves its persistence file) and wait for it to exit."""
        if self.proto is None or self.proto.ended.called:
            return succeed(None)
        try:
            self.process.signalProcess("TERM")
        except error.ProcessExitedAlready:
            pass
        return self.proto.ended
