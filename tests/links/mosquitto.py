"""A real mosquitto on 127.0.0.1 as the stand-in cloud broker for integration tests."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred

from tests.peerprocess import PeerProcess

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def downlink_subscribed(link: Any) -> bool:
    """Whether the gateway's MQTT ``link`` is connected and the cloud broker has answered its
    downlink SUBSCRIBE with a SUBACK: from then on a message a backend publishes (on another
    connection) reaches the gateway. ``is_connected`` alone is not enough: it is set when the
    CONNACK arrives, and the SUBSCRIBE is only sent then."""
    protocol = link.protocol
    return bool(link.is_connected and protocol is not None and not protocol.subscriptions)


class Mosquitto(PeerProcess):
    """One mosquitto: persistent (sessions survive restarts), optionally TLS with client certs.

    :param directory: where its config and persistence file go.
    :param port: the port it listens on (the same across restarts).
    :param pki: paths from ``tests.tlscerts.make_pki`` to listen with TLS and require client certs.
    :param options: more lines of its configuration (``max_packet_size 1000``).
    """

    def __init__(self, reactor: Any, directory: Path, port: int, pki: dict[str, str] | None = None,
                 options: tuple[str, ...] = ()) -> None:
        super().__init__(reactor, port)
        directory.mkdir(parents=True, exist_ok=True)
        lines = [f"listener {port} 127.0.0.1", "allow_anonymous true", "persistence true",
                 f"persistence_location {directory}/", "max_queued_messages 0",
                 "log_dest stderr"]
        if os.geteuid() == 0:
            lines.append("user root")  # otherwise it drops to "mosquitto", who cannot write here
        if pki:
            lines += [f"cafile {pki['ca']}", f"certfile {pki['server_cert']}", f"keyfile {pki['server_key']}",
                      "require_certificate true"]
        lines += options
        self.config = directory / "mosquitto.conf"
        self.config.write_text("\n".join(lines) + "\n")

    def start(self) -> Deferred[None]:
        """Start it and wait until it accepts connections (5 s at most). :meth:`stop` sends
        SIGTERM, on which it saves its persistence file."""
        self.spawn(MOSQUITTO, [MOSQUITTO, "-c", str(self.config)])
        d: Deferred[None] = self.wait_for_port("mosquitto", 5, 0.05)
        return d
