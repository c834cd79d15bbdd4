"""SIGKILL the real gateway right after the broker acknowledged: its state survives.

A retained message and messages queued for an offline persistent session are durable
before the publisher's PUBACK, a subscription before the SUBACK (the broker's state log,
the journal's group commit); nothing waits for the broker's 1 s checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.trial.unittest import TestCase

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
