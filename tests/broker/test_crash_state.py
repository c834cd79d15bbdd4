"""SIGKILL the real gateway right after the broker acknowledged: its state survives.

A retained message and messages queued for an offline persistent session are durable
before the publisher's PUBACK, a subscription before the SUBACK (the broker's state log,
the journal's group commit); nothing waits for the broker's 1 s checkpoint. So is the time
a persistent session's client went offline: its expiry counts the time before the restart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from treq.client import HTTPClient

from tests.broker import packets
from tests.broker.mqttraw import scripted_connect
from tests.gatewayprocess import spawn_gateway
from tests.mqttclient import TestClient
from tests.ports import free_port

#: The ingest and /metrics listen on fixed ports by default: off here.
NO_FIXED_PORTS = "ingest:\n  enabled: false\ntelemetry:\n  metrics_endpoint: ''\n"
QUEUED = 20


def started_or_why(failure: object, proc: object) -> None:
    """A gateway that did not start: fail with the end of what it printed."""
    output = getattr(proc, "output", b"").decode(errors="replace")[-3000:]
    raise AssertionError(f"the gateway did not start ({failure}): {output}")


class BrokerStateCrashTests(TestCase):
    """The gateway is SIGKILLed the moment the acknowledgements arrived; a restart has it all."""

    timeout = 120

    def setUp(self) -> None:
        work = Path(self.mktemp()).resolve()
        work.mkdir()
        self.port = free_port()
        self.config = work / "gateway.yaml"
        self.config.write_text(
            f"gateway:\n  state_dir: {work / 'state'}\n"
            f"broker:\n  listeners:\n    default:\n      endpoint: 'tcp:{self.port}:interface=127.0.0.1'\n"
            "  plugins:\n    amqtt.plugins.authentication.AnonymousAuthPlugin: {allow_anonymous: true}\n"
            + NO_FIXED_PORTS)

    @inlineCallbacks
    def start_gateway(self) -> Any:
        proc = spawn_gateway(self, reactor, "--nodaemon", "--pidfile=", "gateway", "--config", str(self.config))
        yield proc.ready.addTimeout(60, reactor).addErrback(started_or_why, proc)
        return proc

    @inlineCallbacks
    def kill(self, proc: Any) -> Any:
        proc.transport.signalProcess("KILL")
        yield proc.ended

    def client(self, **kwargs: Any) -> TestClient:
        client = TestClient(reactor, **kwargs)
        self.addCleanup(client.stop)
        return client

    @inlineCallbacks
    def test_retained_and_offline_queue_survive_sigkill(self):
        """Retained QoS 1 and QoS 1/2 messages for an offline persistent subscriber, PUBACKed/PUBCOMPed,
        then SIGKILL at once: after the restart the retained message and every queued one are delivered."""
        proc = yield self.start_gateway()
        offline = self.client(client_id="offline-sub", clean_session=False)
        self.assertEqual((yield offline.connect(self.port)), 0)
        yield offline.subscribe("q/#", 2)
        offline.stop()
        yield offline.disconnected()
        publisher = self.client()
        self.assertEqual((yield publisher.connect(self.port)), 0)
        acks = [publisher.publish("r/config", b"retained v1", 1, retain=True)]
        acks += [publisher.publish(f"q/{n}", b"queued %d" % n, 1 + n % 2) for n in range(QUEUED)]
        yield gatherResults(acks)
        yield self.kill(proc)  # at once: the 1 s checkpoint has not run
        publisher.stop(drop=True)

        yield self.start_gateway()
        late = self.client()
        self.assertEqual((yield late.connect(self.port)), 0)
        yield late.subscribe("r/#", 1)
        retained = yield late.next_message()
        self.assertEqual((retained.topic, retained.payload, retained.retain), ("r/config", b"retained v1", True))
        back = self.client(client_id="offline-sub", clean_session=False)
        self.assertEqual((yield back.connect(self.port)), 0)
        received = []
        for _ in range(QUEUED):
            received.append((yield back.next_message()).payload)
        self.assertEqual(sorted(received), sorted(b"queued %d" % n for n in range(QUEUED)))

    @inlineCallbacks
    def test_subscription_survives_sigkill(self):
        """SUBACK received, SIGKILL at once: the client reconnects with CleanSession=0 and gets
        messages without subscribing again."""
        proc = yield self.start_gateway()
        device = self.client(client_id="persistent-sub", clean_session=False)
        self.assertEqual((yield device.connect(self.port)), 0)
        self.assertEqual(list((yield device.subscribe("s/#", 1))), [1])
        yield self.kill(proc)
        device.stop(drop=True)

        yield self.start_gateway()
        again = self.client(client_id="persistent-sub", clean_session=False)
        self.assertEqual((yield again.connect(self.port)), 0)
        publisher = self.client()
        self.assertEqual((yield publisher.connect(self.port)), 0)
        yield publisher.publish("s/1", b"after the crash", 1)
        message = yield again.next_message()
        self.assertEqual((message.topic, message.payload), ("s/1", b"after the crash"))


#: CONNACK with SessionPresent=1 and =0, as the byte-level client records it.
SESSION_PRESENT, NEW_SESSION = (0x20, b"\x01\x00"), (0x20, b"\x00\x00")
#: Seconds the tests let the journal write the record of a client's leaving before the
#: SIGKILL: less than the broker's 1 s checkpoint, so only the state log has it.
LOG_WRITTEN = 0.5


class SessionExpiryAcrossRestartTests(TestCase):
    """A persistent session's client leaves, the gateway is SIGKILLed and started again: the
    session expires at the restart when its client has been away longer than
    ``persistent_client_expiration``, and is there (its queue too) when it has not."""

    timeout = 120

    def setUp(self) -> None:
        self.work = Path(self.mktemp()).resolve()
        self.work.mkdir()
        self.port, self.metrics_port = free_port(), free_port()

    @inlineCallbacks
    def start_gateway(self, expiration: float) -> Any:
        config = self.work / "gateway.yaml"
        config.write_text(
            f"gateway:\n  state_dir: {self.work / 'state'}\n"
            f"broker:\n  listeners:\n    default:\n      endpoint: 'tcp:{self.port}:interface=127.0.0.1'\n"
            "  plugins:\n    amqtt.plugins.authentication.AnonymousAuthPlugin: {allow_anonymous: true}\n"
            f"  persistent_client_expiration: {expiration}\n"
            "ingest:\n  enabled: false\n"
            f"telemetry:\n  metrics_endpoint: 'tcp:{self.metrics_port}:interface=127.0.0.1'\n")
        proc = spawn_gateway(self, reactor, "--nodaemon", "--pidfile=", "gateway", "--config", str(config))
        yield proc.ready.addTimeout(60, reactor).addErrback(started_or_why, proc)
        return proc

    @inlineCallbacks
    def connect(self, client_id: str, *sent: bytes) -> Any:
        """A byte-level client with CleanSession=0, its CONNACK read, having sent ``sent``."""
        client = yield scripted_connect(reactor, self.port)
        self.addCleanup(lambda: client.transport.abortConnection())
        client.transport.write(packets.connect(client_id, flags=0x00) + b"".join(sent))
        yield client.until(lambda: bool(client.others), reactor)
        return client

    @inlineCallbacks
    def subscribe_and_leave(self, proc: Any) -> Any:
        """``device`` subscribes to ``s/#`` at QoS 1 and disconnects; a publisher's QoS 1
        message to ``s/1`` is queued for it; then the gateway is SIGKILLed."""
        device = yield self.connect("device", packets.subscribe(("s/#", 1)))
        yield device.until(lambda: len(device.others) == 2, reactor)  # the SUBACK
        device.transport.write(packets.DISCONNECT)
        yield device.lost
        publisher = yield self.connect("publisher", packets.publish("s/1", b"queued", 1, packet_id=3))
        yield publisher.until(lambda: (0x40, b"\x00\x03") in publisher.others, reactor)
        yield deferLater(reactor, LOG_WRITTEN)
        proc.transport.signalProcess("KILL")
        yield proc.ended

    @inlineCallbacks
    def metric(self, name: str) -> Any:
        """The value of an unlabelled metric on the gateway's /metrics."""
        http = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
        response = yield http.get(f"http://127.0.0.1:{self.metrics_port}/metrics")
        text = (yield response.text()).splitlines()
        [value] = [line.split()[1] for line in text if line.startswith(name + " ")]
        return float(value)

    @inlineCallbacks
    def test_expired_at_the_restart(self):
        """Expiration 3 s: started again more than 3 s after the client left, the gateway ends
        its session as it starts (logged before "gateway started", counted in
        sessions_expired); the client gets SessionPresent=0 and no queued message. The
        restored session counted as offline from the start, and was still there (the kill
        comes about LOG_WRITTEN after the client left, well before the first gateway could
        expire it: at 3 s, swept every 1 s)."""
        proc = yield self.start_gateway(3)
        yield self.subscribe_and_leave(proc)
        yield deferLater(reactor, 3.5 - LOG_WRITTEN)
        proc = yield self.start_gateway(3)
        output = proc.output.decode(errors="replace")
        expired = output.find("ended 1 offline persistent sessions (1 expired")
        self.assertTrue(0 <= expired < output.find("gateway started"), output[-3000:])
        device = yield self.connect("device")
        self.assertEqual(device.others[0], NEW_SESSION)
        self.assertEqual((yield self.metric("gateway_broker_sessions_expired_total")), 1)
        yield deferLater(reactor, 0.2)
        self.assertEqual(device.publishes, [])

    @inlineCallbacks
    def test_kept_when_back_in_time(self):
        """Expiration 60 s, started again at once: the session is there (SessionPresent=1)
        with its queued QoS 1 message, and nothing was expired."""
        proc = yield self.start_gateway(60)
        yield self.subscribe_and_leave(proc)
        yield self.start_gateway(60)
        device = yield self.connect("device")
        self.assertEqual(device.others[0], SESSION_PRESENT)
        yield device.until(lambda: bool(device.publishes), reactor)
        self.assertEqual(device.publishes[0][:3], ("s/1", b"queued", 1))
        self.assertEqual((yield self.metric("gateway_broker_sessions_expired_total")), 0)
