"""SIGKILL the real gateway process under load: every message it acknowledged reaches the cloud."""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path

from twisted.internet import reactor
from twisted.internet import defer
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall, deferLater
from twisted.trial.unittest import TestCase

from gateway.mqtt import packets as codec
from tests.broker import packets
from tests.broker.harness import eventually
from tests.gatewayprocess import GatewayProcess, spawn_gateway
from tests.links.mosquitto import MOSQUITTO_PUB, Mosquitto, publish_lines
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


def gateway_config(work: Path, port: int, cloud_port: int, link: str) -> Path:
    """``work/gateway.yaml``: state in ``work/state``, the broker on ``port``, a link ``cloud``
    to 127.0.0.1:``cloud_port`` with ``link`` (more of its keys, each line indented 6 spaces)
    routing ``telemetry/#`` to ``up/...`` at QoS 1."""
    config = work / "gateway.yaml"
    config.write_text(
        f"gateway:\n  state_dir: {work / 'state'}\n"
        f"broker:\n  listeners:\n    default:\n      endpoint: 'tcp:{port}:interface=127.0.0.1'\n"
        "  plugins:\n    amqtt.plugins.authentication.AnonymousAuthPlugin: {allow_anonymous: true}\n"
        f"links:\n  links:\n    cloud:\n      endpoint: 'tcp:host=127.0.0.1:port={cloud_port}'\n{link}"
        "      routes:\n        - {filter: 'telemetry/#', topic: 'up/{#}', qos: 1}\n" + NO_FIXED_PORTS)
    return config


def start_gateway(test: TestCase, config: Path) -> Deferred[GatewayProcess]:
    """``twistd gateway --config config``, killed on cleanup; fires with it once it has started."""
    proc = spawn_gateway(test, reactor, "--nodaemon", "--pidfile=", "gateway", "--config", str(config))
    return proc.ready.addTimeout(60, reactor).addErrback(started_or_why, proc).addCallback(lambda _: proc)


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
        config = gateway_config(work, port, cloud.port, "      backoff_initial: 0.1\n      backoff_max: 0.5\n")
        acked: set[str] = set()
        pending: list[Deferred[object]] = []
        sent = 0
        rng = random.Random(4)
        for round_ in range(KILLS + 1):
            proc = yield start_gateway(self, config)
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


BACKLOG = 40_000  # (20,000 drained before the kill once, on an idle machine)
RESEND_LIMIT = 256


class RestartResendTests(TestCase):
    """A gateway killed while it drains a backlog sends again at most ``resend_limit`` records a crash."""

    timeout = 300

    @inlineCallbacks
    def test_sigkill_while_draining_resends_at_most_resend_limit(self):
        """40,000 messages journaled while the cloud is down; the gateway is SIGKILLed
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
        config = gateway_config(work, port, cloud.port, "      backoff_initial: 0.05\n      backoff_max: 0.2\n"
                                f"      resend_limit: {RESEND_LIMIT}\n")
        proc = yield start_gateway(self, config)
        # The cloud is down: all of it is backlog. mosquitto_pub where it is there (about
        # 3 s here; paho, whose thread in this process was the bottleneck, took 8 to 11).
        if MOSQUITTO_PUB is not None:
            yield publish_lines(reactor, port, "telemetry/backlog", [b"m%d" % i for i in range(BACKLOG)])
        else:
            device = TestClient(reactor)
            device.client.max_inflight_messages_set(100)
            yield device.connect(port)
            for start in range(0, BACKLOG, 1000):
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
                try:
                    sent = device.publish("telemetry/live", payload, 1)
                except RuntimeError:  # the killed gateway closed the connection: nothing was sent
                    return
                pending.append(sent.addCallbacks(lambda _, p=payload: expected.add(p), lambda _: None))

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
                proc = yield start_gateway(self, config)
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
            if publishing.running:
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


class CloudThatMayAck(Protocol):
    """One connection of :class:`SlowCloud`: it accepts, and acknowledges a PUBLISH only
    while its factory's ``acking`` is set."""

    factory: "SlowCloud"

    def connectionMade(self) -> None:
        self.rest = b""

    def dataReceived(self, data: bytes) -> None:
        found, self.rest = packets.split(self.rest + data)
        assert self.transport is not None
        for first, body in found:
            kind = first >> 4
            if kind == codec.CONNECT:
                self.transport.write(codec.connack(False, 0))
            elif kind == codec.SUBSCRIBE:
                self.transport.write(codec.suback(struct.unpack("!H", body[:2])[0], [1]))
            elif kind == codec.PINGREQ:
                self.transport.write(codec.PINGRESP_PACKET)
            elif kind == codec.PUBLISH:
                topic, payload, _, packet_id, _, _ = packets.parse_publish(first, body)
                self.factory.received.append((topic, payload))
                if self.factory.acking:
                    self.transport.write(codec.ack(codec.PUBACK, packet_id or 0))


class SlowCloud(Factory):
    """A cloud broker that takes everything and acknowledges nothing until told to."""

    protocol = CloudThatMayAck

    def __init__(self) -> None:
        self.acking = False
        self.received: list[tuple[str, bytes]] = []


class SkippedOnceTests(TestCase):
    """A message over the cloud's limit, skipped, and the gateway SIGKILLed before its cursor
    passes it: the restarted gateway skips it again and counts it once (links.md)."""

    timeout = 120

    @inlineCallbacks
    def test_sigkill_before_the_cursor_s_save_counts_the_skip_once(self):
        """A small message goes out and is never acknowledged, so the cursor stays before it;
        a big one behind it is skipped and counted in losses.json; SIGKILL. Restarted with a
        cloud that acknowledges, the link sends the small one again, skips the big one
        again, and its cursor passes both: losses.json counts one over-cloud-limit loss.
        It counted two."""
        work = Path(self.mktemp()).resolve()
        work.mkdir()
        cloud = SlowCloud()
        listening = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(cloud)
        self.addCleanup(listening.stopListening)
        port = free_port()
        config = gateway_config(work, port, listening.getHost().port,
                                "      backoff_initial: 0.1\n      backoff_max: 0.5\n      max_message_bytes: 100\n")
        stream = work / "state" / "journal" / "link-cloud"

        def over_limit() -> int:
            path = stream / "losses.json"
            entries = json.loads(path.read_text())["entries"] if path.exists() else []
            return sum(e["records"] for e in entries if e["reason"] == "over-cloud-limit")

        def cursor() -> int:
            path = stream / "cursors" / "cloud.json"
            return json.loads(path.read_text())["acked"] if path.exists() else 0

        proc = yield start_gateway(self, config)
        device = TestClient(reactor)
        yield device.connect(port)
        yield device.publish("telemetry/small", b"s" * 10, 1)
        yield device.publish("telemetry/big", b"B" * 200, 1)
        device.stop()
        yield eventually(reactor, lambda: (b"s" * 10) in [p for _, p in cloud.received], 20)  # sent
        yield eventually(reactor, lambda: over_limit() == 1, 20)  # the big one counted in losses.json
        self.assertEqual(cursor(), 0)  # the small one is not acknowledged: the cursor stays
        proc.transport.signalProcess("KILL")
        yield proc.ended

        cloud.acking = True
        proc = yield start_gateway(self, config)
        yield eventually(reactor, lambda: cursor() >= 2, 20)  # the cursor saved past both
        self.assertNotIn(b"B" * 200, [p for _, p in cloud.received])
        self.assertEqual(over_limit(), 1)
