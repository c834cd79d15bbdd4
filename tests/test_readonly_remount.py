"""The state directory's filesystem turning read-only under a running gateway, from outside
(docs/journal.md, "A read-only filesystem").

A real ``twistd gateway`` runs in a mount namespace of its own (``unshare -m``) on an ext4
image mounted ``errors=remount-ro``; the test makes the kernel remount it read-only as after
an I/O error (``/sys/fs/ext4/<device>/trigger_fs_error``), the way a failing SD card does.
Needs root, ``unshare``, loop devices and ext4: skipped, saying which, where they are missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from io import BytesIO
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.client import Agent, FileBodyProducer, readBody
from twisted.web.http_headers import Headers

from tests.gatewayprocess import spawn_gateway
from tests.links.test_crash import NO_FIXED_PORTS, started_or_why
from tests.mqttclient import TestClient
from tests.ports import free_port

#: Mounts the image (``$IMAGE``) on the state directory (``$STATE``) in the namespace, writes
#: its loop device's name in ``$DEVICE``, and runs the command given after it.
MOUNT_AND_RUN = ('mount -o loop,errors=remount-ro "$IMAGE" "$STATE" && basename "$(findmnt -no SOURCE "$STATE")"'
                 ' > "$DEVICE" && exec "$@"')
NAMESPACE = ("unshare", "-m", "--propagation", "private")


def ext4_image(path: Path) -> None:
    """Make a 32 MiB ext4 image at ``path``; skip the test where the tools or the kernel
    cannot mount one in a mount namespace."""
    if os.geteuid() != 0:
        raise SkipTest("mounting a filesystem in a mount namespace needs root")
    for tool in ("unshare", "mkfs.ext4", "findmnt"):
        if shutil.which(tool) is None:
            raise SkipTest(f"{tool} is not installed")
    with open(path, "wb") as image:
        image.truncate(32 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(path)], check=True, capture_output=True, timeout=30)
    probe = path.parent / "probe"
    probe.mkdir()
    tried = subprocess.run([*NAMESPACE, "mount", "-o", "loop,errors=remount-ro", str(path), str(probe)],
                           capture_output=True, text=True, timeout=30)
    if tried.returncode != 0:
        raise SkipTest(f"cannot mount an ext4 image in a mount namespace here: {tried.stderr.strip()}")


class ReadOnlyRemountTests(TestCase):
    """The kernel remounts the state directory read-only under a running gateway."""

    timeout = 60

    @inlineCallbacks
    def test_nothing_is_acknowledged_and_everything_says_why(self) -> None:
        """After the remount: a QoS 1 message on a routed topic gets no PUBACK (its connection
        is closed), QoS 0 between local clients goes on, the admin API answers and names the
        journal ``read-only``, a configuration change is refused (409) and the gateway runs on,
        each stream's failed write is one log line (not one per retry), and SIGTERM still stops
        the gateway cleanly."""
        work = Path(self.mktemp()).resolve()
        work.mkdir()
        image, state = work / "state.img", work / "state"
        ext4_image(image)
        state.mkdir()
        run = Path(tempfile.mkdtemp(prefix="gwro-"))  # short: a unix socket path is at most 107 bytes
        self.addCleanup(shutil.rmtree, run, True)
        port = free_port()
        config = work / "gateway.yaml"
        config.write_text(
            f"gateway:\n  state_dir: {state}\n"
            f"broker:\n  listeners:\n    default:\n      endpoint: 'tcp:{port}:interface=127.0.0.1'\n"
            "  plugins:\n    amqtt.plugins.authentication.AnonymousAuthPlugin: {allow_anonymous: true}\n"
            "journal:\n  defaults:\n    min_free_bytes: 0\n"
            f"links:\n  links:\n    cloud:\n      endpoint: 'tcp:host=127.0.0.1:port={free_port()}'\n"
            "      routes:\n        - {filter: 'telemetry/#', topic: 'up/{#}', qos: 1}\n"
            f"admin:\n  socket: {run / 'admin.sock'}\n" + NO_FIXED_PORTS)
        env = dict(os.environ, IMAGE=str(image), STATE=str(state), DEVICE=str(work / "device"))
        proc = spawn_gateway(self, reactor, "--nodaemon", "--pidfile=", "gateway", "--config", str(config),
                             env=env, prefix=(*NAMESPACE, "sh", "-c", MOUNT_AND_RUN, "sh"))
        yield proc.ready.addTimeout(30, reactor).addErrback(started_or_why, proc)
        trigger = Path("/sys/fs/ext4") / (work / "device").read_text().strip() / "trigger_fs_error"
        if not trigger.exists():
            raise SkipTest(f"this kernel has no {trigger} to make ext4 fail")

        publisher, subscriber, local = self.client(), self.client(), self.client()
        for client in (publisher, subscriber, local):
            yield client.connect(port)
        yield subscriber.subscribe("local/#", 0)
        yield publisher.publish("telemetry/a", b"before", 1)  # acknowledged: on disk

        trigger.write_text("test")
        closed = publisher.disconnected()
        acknowledged = publisher.publish("telemetry/a", b"after", 1)
        acknowledged.addErrback(lambda _: None)
        yield closed.addTimeout(5, reactor)
        publisher.stop(drop=True)
        self.assertFalse(acknowledged.called and acknowledged.result == 0, "a PUBACK for what is not on disk")
        acknowledged.cancel()
        yield local.publish("local/x", b"local", 0)
        message = yield subscriber.next_message(5)
        self.assertEqual(message.payload, b"local")

        code, status = yield self.request(str(run / "admin.sock"), "GET", "/status")
        self.assertEqual(code, 200)
        errors = {service["name"]: service["error"] for service in status["services"]}
        self.assertTrue(errors["journal"].startswith("read-only: link-cloud refuses appends: [Errno 30]"),
                        errors["journal"])
        # A configuration change is refused: it restarted the services, which could not start
        # on the read-only disk, nor could the previous configuration's, and the gateway stopped.
        code, refused = yield self.request(str(run / "admin.sock"), "POST", "/config/apply",
                                           {"changes": {"gateway.log_level": "debug"}})
        self.assertEqual((code, refused["error"]), (409, f"{state} is on a read-only filesystem: nothing changed;"
                                                         " make it writable (remount it read-write) and send the"
                                                         " change again"))
        for _ in range(8):  # routed QoS 0 messages: the stream tries the disk again after 0.5 s
            local.publish("telemetry/b", b"qos0", 0)
            yield deferLater(reactor, 0.1, lambda: None)
        output = proc.output.decode(errors="replace")
        self.assertEqual(output.count("journal link-cloud: write failed"), 1, output[-3000:])

        proc.transport.signalProcess("TERM")
        yield proc.ended.addTimeout(15, reactor)
        output = proc.output.decode(errors="replace")
        self.assertIn("gateway shutdown completed", output)
        self.assertNotIn("Traceback", output)

    def client(self) -> TestClient:
        """A paho client, stopped at the end of the test."""
        client = TestClient(reactor)
        self.addCleanup(client.stop)
        return client

    @inlineCallbacks
    def request(self, socket: str, method: str, path: str, body: object = None) -> Any:
        """``method path`` (with ``body`` as JSON) to the admin API on the unix ``socket``:
        ``(status, its JSON answer)``."""

        class OverTheSocket:
            def endpointForURI(self, uri: Any) -> UNIXClientEndpoint:
                return UNIXClientEndpoint(reactor, socket)

        producer = None if body is None else FileBodyProducer(BytesIO(json.dumps(body).encode()))
        response = yield Agent.usingEndpointFactory(reactor, OverTheSocket()).request(
            method.encode(), b"http://localhost" + path.encode(),
            Headers({b"content-type": [b"application/json"]}), producer)
        answer = yield readBody(response)
        return response.code, json.loads(answer)
