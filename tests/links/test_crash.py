"""SIGKILL the real gateway process under load: every message it acknowledged reaches the cloud."""

from __future__ import annotations

import random
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tests.gatewayprocess import spawn_gateway
from tests.links.mosquitto import Mosquitto
from tests.mqttclient import TestClient
from tests.ports import free_port

KILLS = 10
BATCH = 20


class CrashTests(TestCase):
    """The gateway dies by SIGKILL mid-load, again and again; acknowledged data survives."""

    timeout = 240

    @inlineCallbacks
    def test_sigkill_loses_nothing_acknowledged(self):
        """Over 10 SIGKILLs mid-load, every PUBACKed message arrives at mosquitto."""
        work = Path(self.mktemp()).resolve()
        work.mkdir()
        cloud = Mosquitto(reactor, work / "cloud", free_port())
        yield cloud.start()
        self.addCleanup(cloud.stop)
        subscriber = TestClient(reactor, client_id="cloud-sub", clean_session=False)
        self.addCleanup(subscriber.stop)
        yield subscriber.connect(cloud.port)
        yield subscriber.subscribe("up/#", 1)
        port = free_port()
        config = work / "gateway.yaml"
        config.write_text(
            f"gateway:\n  state_dir: {work / 'state'}\n"
            "telemetry:\n  metrics_endpoint: ''\n"
            f"broker:\n  listeners:\n    default:\n      endpoint: 'tcp:{port}:interface=127.0.0.1'\n"
            "  plugins:\n    amqtt.plugins.authentication.AnonymousAuthPlugin: {allow_anonymous: true}\n"
            f"links:\n  links:\n    cloud:\n      endpoint: 'tcp:host=127.0.0.1:port={cloud.port}'\n"
            "      backoff_initial: 0.1\n      backoff_max: 0.5\n"
            "      routes:\n        - {filter: 'telemetry/#', topic: 'up/{#}', qos: 1}\n")
        acked: set[str] = set()
        pending: list[Deferred[object]] = []
        sent = 0
        rng = random.Random(4)
        for round_ in range(KILLS + 1):
            proc = spawn_gateway(self, reactor, "--nodaemon", "--pidfile=", "gateway", "--config", str(config))
            yield proc.ready.addTimeout(60, reactor)
            device = TestClient(reactor)
            yield device.connect(port)
            stop_at = reactor.seconds() + (rng.uniform(0.2, 0.8) if round_ < KILLS else 0.2)
            # Keep the gateway busy until the kill lands, and on a loaded machine until enough
            # was acknowledged to prove something (bounded: 30 s a round).
            enough, give_up = (round_ + 1) * 10 * BATCH + 1, reactor.seconds() + 30
            while reactor.seconds() < stop_at or (len(acked) < enough and reactor.seconds() < give_up):
                for _ in range(BATCH):
                    payload = f"m{sent}"
                    sent += 1
                    pending.append(device.publish("telemetry/crash", payload.encode(), 1).addCallbacks(
                        lambda _, p=payload: acked.add(p), lambda _: None))
                yield deferLater(reactor, 0.005, lambda: None)
            if round_ == KILLS:
                break
            proc.transport.signalProcess("KILL")
            yield proc.ended
            device.stop(drop=True)
        received: set[str] = set()
        while not acked <= received:
            try:
                message = yield subscriber.next_message(30)
            except Exception:
                break
            received.add(message.payload.decode())
        device.stop()
        for d in pending:
            d.cancel()  # publishes a killed gateway never acknowledged (and their timeouts)
        missing = acked - received
        self.assertFalse(missing, f"{len(missing)} acknowledged messages never reached the cloud: "
                                  f"{sorted(missing)[:10]} (acked {len(acked)} of {sent})")
        self.assertGreater(len(acked), 10 * BATCH * KILLS, "too few messages were acknowledged to prove anything")
