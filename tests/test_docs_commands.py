"""docs/commands.md, as the cloud sees it: every ``mosquitto_pub`` example of the page is sent
to a real gateway (``twistd gateway``, device id ``gw-7``) and answered on the topic, with the
status and the body, that the ``# command//gw-7/res/...`` line under it shows."""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path
from typing import Any, Callable, NamedTuple

from twisted.internet import reactor
from twisted.internet.defer import TimeoutError, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gateway.payloadlimits import REQUEST_BYTES
from tests.gatewayprocess import spawn_gateway
from tests.links.test_crash import NO_FIXED_PORTS, started_or_why
from tests.mqttclient import TestClient
from tests.ports import free_port

PAGE = Path(__file__).resolve().parent.parent / "docs" / "commands.md"
#: The page's examples apply to a gateway with this device id.
DEVICE = "gw-7"
#: The keys whose values a reply shown stands for any of that type.
ANY: dict[str, type | tuple[type, ...]] = {"time": (int, float), "version": str}


class Example(NamedTuple):
    """One ``mosquitto_pub`` of the page and the reply it shows."""

    topic: str
    body: bytes
    reply_topic: str
    reply: str


def examples(text: str) -> list[Example]:
    """The command examples of ``text``: each ``mosquitto_pub`` line (``\\`` continuations
    joined) of a ``sh`` block and the ``# command//...`` reply line(s) after it (a reply goes
    on over the comment lines that follow it)."""
    found: list[Example] = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        lines = block.replace("\\\n", " ").splitlines()
        for index, line in enumerate(lines):
            if not line.startswith("mosquitto_pub"):
                continue
            words = shlex.split(line)
            topic, body = words[words.index("-t") + 1], words[words.index("-m") + 1]
            reply_lines = []
            for after in lines[index + 1:]:
                if not after.startswith("#"):
                    break
                reply_lines.append(after[1:].strip())
            reply_topic, _, reply = " ".join(reply_lines).partition(" ")
            found.append(Example(topic, body.encode(), reply_topic, reply))
    return found


def matches(shown: Any, got: Any) -> bool:
    """Whether the value ``got`` is what the page shows as ``shown``: equal, with ``...`` in a
    shown text standing for any text (``.../conf.d/90-remote.yaml``), a shown ``time`` for any
    number and a shown ``version`` for any text."""
    if isinstance(shown, dict):
        return isinstance(got, dict) and set(shown) == set(got) and all(
            isinstance(got[key], ANY.get(key, ())) or matches(value, got[key]) for key, value in shown.items())
    if isinstance(shown, list):
        return isinstance(got, list) and len(shown) == len(got) and all(map(matches, shown, got))
    if isinstance(shown, str) and "..." in shown:
        return isinstance(got, str) and re.fullmatch(".*".join(map(re.escape, shown.split("..."))), got) is not None
    return bool(shown == got and type(shown) is type(got))


def shown_keys(reply: str) -> list[str]:
    """The keys an elided reply (``{"apps": ...}``, ``{...the engine_report...}``) names."""
    return re.findall(r'"([^"]+)":', reply)


class ParsingTests(SynchronousTestCase):
    """The page's examples are read as the test below sends them."""

    def test_every_command_example_shows_its_reply(self) -> None:
        """Each example names a request topic of gw-7 and shows a reply to the same request."""
        found = examples(PAGE.read_text())
        self.assertEqual([e.topic.split("/")[-1] for e in found],
                         ["ping", "report", "apps", "app.restart", "app.logs", "config.get", "config.set",
                          "config.set", "restart"])
        for example in found:
            self.assertEqual(example.topic.split("/")[:4], ["command", "", DEVICE, "req"], example)
            request_id = example.topic.split("/")[4]
            self.assertRegex(example.reply_topic, rf"^command//{DEVICE}/res/{request_id}/\d{{3}}$")

    def test_matching(self) -> None:
        """``...`` stands for any text in a shown string, a shown time for any number."""
        self.assertTrue(matches({"e": [".../conf.d/x: y"], "time": 1.5}, {"e": ["/a/b/conf.d/x: y"], "time": 7}))
        self.assertFalse(matches({"time": 1.5}, {"time": "7"}))
        self.assertFalse(matches({"e": [".../conf.d/x: y"]}, {"e": ["/a/b/conf.d/x: z"]}))
        self.assertFalse(matches({"a": 1}, {"a": 1, "b": 2}))
        self.assertFalse(matches({"a": True}, {"a": 1}))


class CommandExamplesTests(TestCase):
    """The examples against a real gateway, sent on its local broker, where its link would
    republish them from the cloud."""

    timeout = 60

    def config(self, work: Path, port: int) -> Path:
        """A gateway as the page's examples assume: device id gw-7, a link ``hono`` (to a port
        nothing listens on), a program ``sensor`` that logged two lines; its broker takes
        messages of 2 MiB, more than a request may have."""
        path = work / "gateway.yaml"
        path.write_text(
            f"gateway:\n  state_dir: {work / 'state'}\n  device_id: {DEVICE}\n  tenant_id: acme\n"
            f"broker:\n  listeners:\n    default:\n      endpoint: 'tcp:{port}:interface=127.0.0.1'\n"
            "  plugins:\n    amqtt.plugins.authentication.AnonymousAuthPlugin: {allow_anonymous: true}\n"
            "  max_packet_size: 2097152\n"
            "links:\n  links:\n    hono:\n"
            f"      endpoint: 'tcp:host=127.0.0.1:port={free_port()}'\n"
            "apps:\n  programs:\n    sensor:\n"
            "      command: /bin/sh -c \"echo sampling; echo 'sent 12 values'; exec sleep 1000\"\n"
            + NO_FIXED_PORTS)
        return path

    @inlineCallbacks
    def client(self, port: int) -> Any:
        """A client of the gateway's broker that receives every reply to gw-7 (it tries again
        while the broker's services restart, for 10 s). It stands for the cloud, to which a
        reply is journaled: its session is persistent, so that a reply in flight when a
        configuration change restarts the broker is kept with it and sent again once it is
        back (a clean session's copy of a reply ends with its connection)."""
        deadline = reactor.seconds() + 10
        while True:
            try:  # (paho waits a second before it tries again a port that refused it)
                probe = yield TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(Factory.forProtocol(Protocol))
            except ConnectError:
                self.assertLess(reactor.seconds(), deadline, "the gateway's broker did not come back")
                yield deferLater(reactor, 0.05, lambda: None)
                continue
            probe.transport.loseConnection()
            client = TestClient(reactor, client_id="docs-cloud", clean_session=False)
            self.addCleanup(client.stop)
            code = yield client.connect(port)
            if code == 0:
                break
            client.stop(drop=True)
            self.assertLess(reactor.seconds(), deadline, "the gateway's broker did not come back: " + self.output())
            yield deferLater(reactor, 0.1, lambda: None)
        yield client.subscribe(f"command//{DEVICE}/res/#", 1)
        return client

    @inlineCallbacks
    def logged(self, log: Path, lines: list[str], output: Callable[[], bytes]) -> Any:
        """Wait (10 s at most) until the program's ``log`` ends with ``lines`` and its last
        spawn (the last pid the gateway's ``output`` names) has written all it writes: its
        shell has run ``exec sleep``. A log that ends with the lines of the run before a
        restart would otherwise do, and the new run's first line come just after it."""
        deadline = reactor.seconds() + 10
        end = "".join(line + "\n" for line in lines).encode()
        while True:
            # (first a turn of the reactor: the spawn's line, written before the answer that
            # brought us here, may still be in the pipe)
            yield deferLater(reactor, 0.05, lambda: None)
            pids = re.findall(rb"apps: sensor spawned, pid (\d+)", output())
            try:
                done = bool(pids) and Path(f"/proc/{int(pids[-1])}/cmdline").read_bytes().startswith(b"sleep\0")
            except OSError:  # (gone: stopped)
                done = True
            if done and log.is_file() and log.read_bytes().endswith(end):
                return
            self.assertLess(reactor.seconds(), deadline, f"{log} does not end with {lines}: " + self.output())

    @inlineCallbacks
    def test_each_example_gets_the_reply_shown(self) -> Any:
        """Each example is answered with the status and body the page shows (a body the page
        elides, ``{"apps": ...}``, with the keys it names). The ``config.set`` answered ``202``
        goes after the others (a change waiting for its confirmation makes the next one ``409``)
        and the ``restart`` last, under systemd (INVOCATION_ID), as the page shows it; SIGTERM
        in the second after its reply stops the gateway, which says it does not restart (the
        line was missing: its stopped reactor never ran the restart's call)."""
        work = Path(self.mktemp()).resolve()
        work.mkdir()
        port = free_port()
        self.output = lambda: proc.output.decode(errors="replace")[-4000:]
        proc = spawn_gateway(self, reactor, "--nodaemon", "--pidfile=", "gateway", "--config",
                             str(self.config(work, port)), env={**os.environ, "INVOCATION_ID": "test"})
        yield proc.ready.addTimeout(30, reactor).addErrback(started_or_why, proc)
        client = yield self.client(port)
        # (a command over the 1 MiB a request may have, which this broker takes, is answered
        # 413 by its size, docs/topics.md)
        yield client.publish(f"command//{DEVICE}/req/big/ping", b" " * (REQUEST_BYTES + 1), qos=1)
        reply = yield client.next_matching(lambda m: m.topic.split("/")[4] == "big", timeout=10)
        self.assertEqual((reply.topic, json.loads(reply.payload)["error"]), (
            f"command//{DEVICE}/res/big/413",
            f"the message is {REQUEST_BYTES + 1} bytes, more than the {REQUEST_BYTES} bytes a request may have"))
        found = sorted(examples(PAGE.read_text()), key=lambda e: (e.reply_topic.endswith("/202"),
                                                                   e.topic.endswith("/restart")))
        self.assertEqual([e.topic.split("/")[-1] for e in found[-2:]], ["config.set", "restart"])
        for example in found:
            if example.topic.endswith("/restart"):
                # The configuration change before it restarted the services, the broker with
                # them: once the old broker has let the client go, a new one connects.
                yield client.disconnected().addTimeout(10, reactor)
                client.stop(drop=True)  # (its reconnects would take the session over from the next one)
                client = yield self.client(port)
                # (the broker listens before the services after it have started again: a
                # command sent in between has no subscriber yet; the change's last line says
                # they all have)
                deadline = reactor.seconds() + 10
                while not re.search(rb"config change by \S+ applied: ", proc.output):
                    self.assertLess(reactor.seconds(), deadline, "the change was not applied: " + self.output())
                    yield deferLater(reactor, 0.05, lambda: None)
            if example.topic.endswith("/app.logs"):
                # The example asks once the program has logged the lines it shows (app.restart
                # answers once it has started the program again, whose shell a loaded machine
                # may not have run yet: the first run may have been stopped before it, too).
                yield self.logged(work / "state" / "logs" / "apps" / "sensor.log",
                                  json.loads(example.reply)["lines"], lambda: proc.output)
            where = f"{example.topic} {example.body.decode()}"
            yield client.publish(example.topic, example.body, qos=1)
            try:
                reply = yield client.next_matching(
                    lambda m: m.topic.split("/")[4] == example.topic.split("/")[4], timeout=10)
            except TimeoutError:
                self.fail(f"{where}: no reply in 10 s; the gateway said {self.output()}")
            self.assertEqual(reply.topic, example.reply_topic, where)
            got = json.loads(reply.payload)
            try:
                shown = json.loads(example.reply)
            except ValueError:  # elided: the keys it names
                self.assertIsInstance(got, dict, where)
                self.assertLessEqual(set(shown_keys(example.reply)), set(got), where)
            else:
                self.assertTrue(matches(shown, got), f"{where}: the page shows {shown}, the gateway said {got}")
        # Told to stop in the second before the restart: it stops, is not restarted, and says so.
        proc.transport.signalProcess("TERM")
        yield proc.ended.addTimeout(10, reactor)
        self.assertIn(b"not restarting on the remote command: the gateway is stopping already", proc.output)
        self.assertNotIn(b"restarting the gateway on a remote command", proc.output)
