"""Chaos from outside: a real ``twistd gateway`` SIGKILLed at varied moments loses nothing
it acknowledged (README, docs/journal.md, docs/broker.md, docs/links.md).

What tests/links/test_crash.py (one QoS 1 publisher, kills under load) and
tests/broker/test_crash_state.py (one kill right after the acknowledgements) leave out:
several publishers at QoS 1 and 2, retained and not, persistent sessions kept across the
kills (QoS 2 packet ids held over a crash), an offline persistent subscriber whose queue
lives through every kill, kills during a configuration change applied through the admin
API and during the link's reconnect to a cloud that was down, and the order per publisher.

The link drains with ``drain_order: oldest``: the default, ``interleave``, sends live data
beside a backlog, out of stream order by design (docs/links.md). The cloud mosquitto is
stopped with SIGTERM, not killed: a SIGKILLed mosquitto loses what it acknowledged itself.
Seeded: the same kills at the same moments (within the machine's timing) on every run.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from io import BytesIO
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, TimeoutError, inlineCallbacks
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, FileBodyProducer
from twisted.web.http_headers import Headers

from tests.gatewayprocess import spawn_gateway
from tests.links.mosquitto import Mosquitto
from tests.links.test_crash import NO_FIXED_PORTS, started_or_why
from tests.mqttclient import TestClient
from tests.ports import free_port

#: Publisher name -> (QoS, retain, persistent session).
PUBLISHERS = {"p1": (1, False, False), "p2": (2, False, True), "p3": (1, True, True), "p4": (2, True, False)}
#: The moment of each SIGKILL, in this order (seeded delays within each).
KILLS = ("burst", "commit", "config", "reconnect", "commit", "config", "reconnect", "burst")
BURST = 8


def first_order(payloads: list[bytes], name: str, acked: set[int]) -> list[int]:
    """The acknowledged message numbers of publisher ``name`` in the order they first
    appear in ``payloads`` (``<name>-<n>``)."""
    seen: list[int] = []
    for payload in payloads:
        who, _, number = payload.decode().partition("-")
        if who == name and int(number) in acked and int(number) not in seen:
            seen.append(int(number))
    return seen


class ChaosTests(TestCase):
    """SIGKILL during bursts, group commits, a configuration change and a cloud reconnect."""

    timeout = 120

    @inlineCallbacks
    def test_nothing_acknowledged_is_lost(self):
        """Eight SIGKILLs at varied moments: every message a publisher got its PUBACK or
        PUBCOMP for reaches the cloud, the offline persistent subscriber and (the last one
        of each retained topic, or a later one) the retained stores, first arrivals in the
        order each publisher sent them."""
        rng = random.Random(47)
        work = Path(self.mktemp()).resolve()
        work.mkdir()
        cloud = Mosquitto(reactor, work / "cloud", free_port())
        yield cloud.start()
        self.addCleanup(cloud.stop)
        upstream = self.client(client_id="cloud-sub", clean_session=False, reconnect=(0.05, 0.2))
        yield upstream.connect(cloud.port)
        yield upstream.subscribe("up/#", 2)
        run = Path(tempfile.mkdtemp(prefix="gwchaos-"))  # short: a unix socket path is at most 107 bytes
        self.addCleanup(shutil.rmtree, run, True)
        port = free_port()
        config = work / "gateway.yaml"
        config.write_text(
            f"gateway:\n  state_dir: {work / 'state'}\n"
            f"broker:\n  max_queued_messages: 100000\n"
            f"  listeners:\n    default:\n      endpoint: 'tcp:{port}:interface=127.0.0.1'\n"
            "  plugins:\n    amqtt.plugins.authentication.AnonymousAuthPlugin: {allow_anonymous: true}\n"
            f"links:\n  links:\n    cloud:\n      endpoint: 'tcp:host=127.0.0.1:port={cloud.port}'\n"
            "      backoff_initial: 0.05\n      backoff_max: 0.2\n      min_connect_interval: 0.05\n"
            "      drain_order: oldest\n"
            "      routes:\n        - {filter: 'telemetry/#', topic: 'up/{#}', qos: 1}\n"
            f"admin:\n  socket: {run / 'admin.sock'}\n" + NO_FIXED_PORTS)
        admin = str(run / "admin.sock")

        proc = yield self.start_gateway(config)
        offline = self.client(client_id="offline-sub", clean_session=False)
        yield offline.connect(port)
        yield offline.subscribe("telemetry/#", 2)
        offline.stop()
        yield offline.disconnected()
        publishers = {}
        for name, (_, _, persistent) in PUBLISHERS.items():
            publisher = self.client(client_id=name, clean_session=not persistent, reconnect=(0.05, 0.2))
            publisher.client.max_inflight_messages_set(100)
            publisher.client.max_queued_messages_set(0)
            publishers[name] = publisher
            yield publisher.connect(port)
        sent = dict.fromkeys(PUBLISHERS, 0)
        answers: list[int] = []  # the admin API's answers to the changes it finished
        acked: dict[str, set[int]] = {name: set() for name in PUBLISHERS}
        pending: list[Deferred[Any]] = []
        self.addCleanup(lambda: [d.cancel() for d in pending])

        def burst() -> None:
            for name, (qos, retain, _) in PUBLISHERS.items():
                if not publishers[name].client.is_connected():
                    continue
                for _ in range(BURST):
                    n = sent[name]
                    sent[name] += 1
                    try:
                        ack = publishers[name].publish(f"telemetry/{name}", f"{name}-{n}".encode(), qos, retain)
                    except RuntimeError:  # the connection closed meanwhile: not acknowledged
                        break
                    pending.append(ack.addCallbacks(lambda _, a=acked[name], n=n: a.add(n), lambda _: None))

        @inlineCallbacks
        def publish_for(seconds: float) -> Any:
            end = reactor.seconds() + seconds
            while reactor.seconds() < end:
                burst()
                yield deferLater(reactor, 0.01, lambda: None)

        for round_, moment in enumerate(KILLS):
            yield self.all_connected(publishers.values())
            # What the last kill cut off is resent by paho's own thread just after its CONNACK,
            # while is_connected() already says True: new messages published now could go out
            # before those resends, out of order before they reach the gateway (seen: a burst
            # first at the cloud, the resent one after). Wait for the resends' answers first.
            for d in list(pending):
                if not d.called:
                    yield d
            yield publish_for(0.2)  # acknowledged before anything happens
            if moment == "burst":
                yield publish_for(rng.uniform(0.05, 0.3))
            elif moment == "commit":
                burst()  # the kill lands while this burst's group commits are under way
                yield deferLater(reactor, rng.uniform(0.001, 0.01), lambda: None)
            elif moment == "config":
                change = {"links.links.cloud.window": 16 + 16 * (round_ % 2)}
                applying = self.post(admin, "/config/apply", {"changes": change, "confirm_within": None})
                applying.addCallbacks(lambda r: answers.append(r.code), lambda _: None)  # or cut off by the kill
                yield publish_for(rng.uniform(0.02, 0.4))
                if not answers and KILLS.index("config") == round_:
                    # The first change is let through (on a slow disk its fsyncs outlast the whole
                    # window, and no change would ever be applied); the second is killed at random.
                    yield applying
            else:  # reconnect: the cloud goes away, a backlog builds, the link reconnects
                yield cloud.stop()
                yield publish_for(0.2)
                yield cloud.start()
                yield publish_for(rng.uniform(0.0, 0.3))
            burst()  # and a burst on its way as the kill lands
            proc.transport.signalProcess("KILL")
            yield proc.ended
            proc = yield self.start_gateway(config)

        yield self.all_connected(publishers.values())
        yield publish_for(0.2)
        # Publishers resend what was in flight at the last kill; wait for the answers.
        for d in list(pending):
            if not d.called:
                yield d
        self.assertTrue((work / "conf.d" / "90-remote.yaml").exists(), "no configuration change was applied")
        # Each kill is told by the next start, and counted (docs/install.md, after a power cut or a kill).
        self.assertIn(b"this state directory has seen that %d times" % len(KILLS), proc.output)
        self.assertTrue(all(code == 200 for code in answers), f"the admin API answered {answers}")
        for name in PUBLISHERS:
            self.assertGreater(len(acked[name]), 100, f"too few {name} messages acknowledged to prove anything")

        cloud_got = yield self.receive(upstream, acked, "up/")
        back = self.client(client_id="offline-sub", clean_session=False)
        yield back.connect(port)
        offline_got = yield self.receive(back, acked, "telemetry/")
        for name in PUBLISHERS:
            for where, got in (("the cloud", cloud_got), ("the offline subscriber", offline_got)):
                order = first_order(got, name, acked[name])
                missing = acked[name] - set(order)
                self.assertFalse(missing, f"{len(missing)} acknowledged {name} messages never reached {where}: "
                                          f"{sorted(missing)[:10]} (acked {len(acked[name])} of {sent[name]})")
                self.assertEqual(order, sorted(order), f"{name} out of order at {where}")
        for name, (_, retain, _) in PUBLISHERS.items():
            if not retain:
                continue
            for where, port_, topic in (("the gateway", port, f"telemetry/{name}"), ("the cloud", cloud.port, f"up/{name}")):
                late = self.client()
                yield late.connect(port_)
                yield late.subscribe(topic, 1)
                message = yield late.next_message()
                late.stop()
                self.assertTrue(message.retain)
                kept = int(message.payload.decode().partition("-")[2])
                self.assertGreaterEqual(kept, max(acked[name]), f"{where} retains an older {name} message")

    def client(self, **kwargs: Any) -> TestClient:
        """A paho client, stopped at the end of the test."""
        client = TestClient(reactor, **kwargs)
        self.addCleanup(client.stop)
        return client

    @inlineCallbacks
    def start_gateway(self, config: Path) -> Any:
        """Start ``twistd gateway`` on ``config``; fires with it once it is up."""
        proc = spawn_gateway(self, reactor, "--nodaemon", "--pidfile=", "gateway", "--config", str(config))
        yield proc.ready.addTimeout(60, reactor).addErrback(started_or_why, proc)
        return proc

    @inlineCallbacks
    def all_connected(self, clients: Any) -> Any:
        """Wait (10 s at most) until every paho client has reconnected by itself."""
        deadline = reactor.seconds() + 10
        while not all(c.client.is_connected() for c in clients):
            self.assertLess(reactor.seconds(), deadline, "the publishers did not reconnect")
            yield deferLater(reactor, 0.02, lambda: None)

    @inlineCallbacks
    def receive(self, subscriber: TestClient, acked: dict[str, set[int]], prefix: str) -> Any:
        """The payloads ``subscriber`` gets under ``prefix``, in arrival order, until every
        acknowledged one has come (or nothing more does for 10 s)."""
        wanted = {f"{name}-{n}".encode() for name, numbers in acked.items() for n in numbers}
        got: list[bytes] = []
        while not wanted <= set(got):
            try:
                message = yield subscriber.next_message(10)
            except TimeoutError:
                break
            if message.topic.startswith(prefix):
                got.append(message.payload)
        return got

    def post(self, socket: str, path: str, body: object) -> Deferred[Any]:
        """POST ``body`` as JSON to the admin API on the unix ``socket``."""

        class OverTheSocket:
            def endpointForURI(self, uri: Any) -> UNIXClientEndpoint:
                return UNIXClientEndpoint(reactor, socket)

        agent = Agent.usingEndpointFactory(reactor, OverTheSocket())
        return agent.request(b"POST", b"http://localhost" + path.encode(),
                             Headers({b"content-type": [b"application/json"]}),
                             FileBodyProducer(BytesIO(json.dumps(body).encode())))
