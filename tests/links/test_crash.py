"""SIGKILL the real gateway process under load: every message it acknowledged reaches the cloud."""

from __future__ import annotations

import json
import random
from pathlib import Path

from twisted.internet import reactor
from twisted.internet import defer
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.task import LoopingCall, deferLater
from twisted.trial.unittest import TestCase

from tests.gatewayprocess import spawn_gateway
from tests.links.mosquitto import Mosquitto
from tests.mqttclient import TestClient
from tests.ports import free_port

KILLS = 10
#: The ingest and /metrics listen on fixed ports by default: off, so gateways of other
#: test runs on the same machine cannot make this one fail to start.
NO_FIXED_PORTS = "ingest:\n  enabled: false\ntelemetry:\n  metrics_endpoint: ''\n"
BATCH = 20


def started_or_why(failure: object, proc: object) -> None:
    """A gateway that did not start: fail with the end of what it printed."""
    output = getattr(proc, "output", b"").decode(errors="replace")[-3000:]
    raise AssertionError(f"the gateway did not start ({failure}): {output}")


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
            f"broker:\n  listeners:\n    default:\n      endpoint: 'tcp:{port}:interface=127.0.0.1'\n"
            "  plugins:\n    amqtt.plugins.authentication.AnonymousAuthPlugin: {allow_anonymous: true}\n"
            f"links:\n  links:\n    cloud:\n      endpoint: 'tcp:host=127.0.0.1:port={cloud.port}'\n"
            "      backoff_initial: 0.1\n      backoff_max: 0.5\n"
            "      routes:\n        - {filter: 'telemetry/#', topic: 'up/{#}', qos: 1}\n" + NO_FIXED_PORTS)
        acked: set[str] = set()
        pending: list[Deferred[object]] = []
        sent = 0
        rng = random.Random(4)
        for round_ in range(KILLS + 1):
            proc = spawn_gateway(self, reactor, "--nodaemon", "--pidfile=", "gateway", "--config", str(config))
            yield proc.ready.addTimeout(60, reactor).addErrback(started_or_why, proc)
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


BACKLOG = 20_000
RESEND_LIMIT = 256


class RestartResendTests(TestCase):
    """A gateway killed while it drains a backlog sends again at most ``resend_limit`` records a crash."""

    timeout = 300

    @inlineCallbacks
    def test_sigkill_while_draining_resends_at_most_resend_limit(self):
        """20,000 messages journaled while the cloud is down; the gateway is SIGKILLed
        0.1-0.2 s after its link connects, twice, while a device keeps publishing live
        data (sent beside the backlog): each crash costs at most ``resend_limit`` (256 here)
        duplicates upstream, and every acknowledged message arrives."""
        work = Path(self.mktemp()).resolve()
        work.mkdir()
        cloud = Mosquitto(reactor, work / "cloud", free_port())
        self.addCleanup(cloud.stop)
        # The cloud's subscriber session exists (and keeps what arrives for it) from the start.
        yield cloud.start()
        subscriber = TestClient(reactor, client_id="cloud-sub", clean_session=False)
        yield subscriber.connect(cloud.port)
        yield subscriber.subscribe("up/#", 1)
        subscriber.stop()
        yield cloud.stop()
        port = free_port()
        config = work / "gateway.yaml"
        config.write_text(
            f"gateway:\n  state_dir: {work / 'state'}\n"
            f"broker:\n  listeners:\n    default:\n      endpoint: 'tcp:{port}:interface=127.0.0.1'\n"
            "  plugins:\n    amqtt.plugins.authentication.AnonymousAuthPlugin: {allow_anonymous: true}\n"
            f"links:\n  links:\n    cloud:\n      endpoint: 'tcp:host=127.0.0.1:port={cloud.port}'\n"
            f"      backoff_initial: 0.05\n      backoff_max: 0.2\n      resend_limit: {RESEND_LIMIT}\n"
            "      routes:\n        - {filter: 'telemetry/#', topic: 'up/{#}', qos: 1}\n" + NO_FIXED_PORTS)

        def start_gateway():
            proc = spawn_gateway(self, reactor, "--nodaemon", "--pidfile=", "gateway", "--config", str(config))

            return proc.ready.addTimeout(60, reactor).addErrback(started_or_why, proc).addCallback(lambda _: proc)

        proc = yield start_gateway()
        device = TestClient(reactor)
        device.client.max_inflight_messages_set(100)
        yield device.connect(port)
        for start in range(0, BACKLOG, 1000):  # the cloud is down: all of it is backlog
            yield gatherResults([device.publish("telemetry/backlog", b"m%d" % i, 1)
                                 for i in range(start, start + 1000)])
        device.stop()

        yield cloud.start()
        subscriber = TestClient(reactor, client_id="cloud-sub", clean_session=False)
        self.addCleanup(subscriber.stop)
        yield subscriber.connect(cloud.port)
        backlog = {b"m%d" % i for i in range(BACKLOG)}
        expected = set(backlog)  # and the live messages the gateway acknowledged
        pending: list[Deferred[object]] = []
        self.addCleanup(lambda: [d.cancel() for d in pending])  # (publishes still waiting, if it fails)
        seen: set[bytes] = set()
        duplicates: list[int] = []  # per run: messages the cloud had received before

        def publish_live(device: TestClient) -> None:
            for _ in range(10):
                payload = b"live%d" % len(pending)
                pending.append(device.publish("telemetry/live", payload, 1).addCallbacks(
                    lambda _, p=payload: expected.add(p), lambda _: None))

        @inlineCallbacks
        def receive(quiet: float, until_all: bool = False):
            """Count what arrives until nothing has for ``quiet`` s (and everything has)."""
            dups = 0
            while True:
                try:
                    message = yield subscriber.next_message(quiet if not until_all or expected <= seen
                                                            else 30)
                except defer.TimeoutError:
                    return dups
                dups += message.payload in seen
                seen.add(message.payload)

        rng = random.Random(19)
        for run in range(3):
            if run:
                proc = yield start_gateway()
            live = TestClient(reactor)
            yield live.connect(port)
            publishing = LoopingCall(publish_live, live)
            publishing.start(0.02)
            status = TestClient(reactor)
            yield status.connect(port)
            yield status.subscribe("edge/connection/remote/status", 1)
            while not json.loads((yield status.next_message(30)).payload)["connected"]:
                pass
            status.stop()
            if run == 2:  # the last run drains the rest
                publishing.stop()
                live.stop()
                duplicates.append((yield receive(1.0, until_all=True)))
                break
            yield deferLater(reactor, rng.uniform(0.1, 0.2), lambda: None)
            proc.transport.signalProcess("KILL")
            yield proc.ended
            publishing.stop()
            live.stop(drop=True)
            # What the killed run sent has arrived once nothing more does; what arrives
            # after this, the next run sent (its duplicates are its resends).
            duplicates.append((yield receive(1.0)))
            if run == 0:
                self.assertLess(len(seen & backlog), BACKLOG, "the kill landed after the backlog drained")
        for d in pending:
            d.cancel()  # publishes a killed gateway never acknowledged (and their timeouts)
        missing = expected - seen
        self.assertFalse(missing, f"{len(missing)} acknowledged messages never reached the cloud: {sorted(missing)[:5]}")
        self.assertGreater(len(expected - backlog), 20, "too few live messages were acknowledged to prove anything")
        self.assertEqual(duplicates[0], 0)
        for crashes in (1, 2):  # (a run killed before it resent what it inherited leaves it to the next)
            self.assertLessEqual(sum(duplicates[:crashes + 1]), crashes * RESEND_LIMIT,
                                 f"duplicates after each restart: {duplicates[1:]} (limit {RESEND_LIMIT} a crash)")
