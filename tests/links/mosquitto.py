"""A real mosquitto on 127.0.0.1 as the stand-in cloud broker for integration tests."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from tests.peerprocess import PeerProcess

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
#: mosquitto's command-line publisher (Debian's mosquitto-clients), None where it is missing.
MOSQUITTO_PUB = shutil.which("mosquitto_pub")


class _LinesPublisher(ProcessProtocol):
    """Feeds ``mosquitto_pub -l`` its lines on stdin; ``done`` fires when it exits 0."""

    def __init__(self, lines: bytes) -> None:
        self.lines = lines
        self.output = b""
        self.done: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.lines)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason: Failure) -> None:
        if reason.check(ProcessDone):
            self.done.callback(None)
        else:
            self.done.errback(AssertionError(f"mosquitto_pub failed ({reason.value}): {self.output[-2000:]!r}"))


def publish_lines(reactor: Any, port: int, topic: str, payloads: list[bytes], qos: int = 1) -> Deferred[None]:
    """Publish each of ``payloads`` (no newline in any) to ``topic`` on 127.0.0.1:``port`` at
    ``qos``, in order, with one ``mosquitto_pub -l`` (:data:`MOSQUITTO_PUB`, which must be
    there); fires once it has exited 0, which it does after the last message's acknowledgement.

    A C client: about three times as fast as the paho client of :mod:`tests.mqttclient` at
    filling a gateway's journal (40,000 QoS 1 messages in 2.7 s, not 8 to 11 s), whose
    Python thread in the test's process, not the gateway, was the bottleneck."""
    assert MOSQUITTO_PUB is not None
    assert not any(b"\n" in p for p in payloads)
    proc = _LinesPublisher(b"".join(p + b"\n" for p in payloads))
    reactor.spawnProcess(proc, MOSQUITTO_PUB, [MOSQUITTO_PUB, "-h", "127.0.0.1", "-p", str(port), "-q", str(qos),
                                               "-M", "100", "-t", topic, "-l"], env=os.environ.copy())
    return proc.done


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
