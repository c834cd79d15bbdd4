"""SIGKILL the real gateway (``twistd gateway``) mid-upload; started again on the same state
directory, it resumes the upload from its record (docs/uploads.md: after a restart, unfinished
uploads resume)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from paho.mqtt.client import MQTTMessage
from twisted.internet import reactor
from twisted.internet.defer import TimeoutError, inlineCallbacks

from tests.gatewayprocess import spawn_gateway
from tests.mqttclient import TestClient
from tests.ports import free_port
from tests.tmpfs import fill_up, mount_tmpfs
from tests.uploads.flow import make_file
from tests.uploads.realservers import UploadCuttingProxy
from tests.uploads.test_azure import AzuriteTestCase

TOPIC = "edge/gateway/uploads"


class UploadRestartTests(AzuriteTestCase):
    """A whole gateway process is killed with SIGKILL mid-upload and started again."""

    def write_config(self, work: Path) -> tuple[Path, int]:
        """A gateway configuration under ``work``: uploads of ``<work>/files/*.bin`` (Azure
        blocks of 256 KiB above 1 MiB, one at a time); returns its path and the broker's port."""
        broker = free_port()
        config = work / "gateway.yaml"
        config.write_text(
            f"gateway:\n  state_dir: {work / 'state'}\n"
            "telemetry:\n  metrics_endpoint: ''\ningest:\n  enabled: false\n"
            f"broker:\n  listeners:\n    default:\n      endpoint: 'tcp:{broker}:interface=127.0.0.1'\n"
            "  plugins:\n    amqtt.plugins.authentication.AnonymousAuthPlugin: {allow_anonymous: true}\n"
            f"uploads:\n  files: ['{work / 'files'}/*.bin']\n  allow_http: true\n"
            "  azure_block_threshold: 1048576\n  azure_block_size: 262144\n  azure_parallel_blocks: 1\n")
        return config, broker

    @inlineCallbacks
    def start_gateway(self, config: Path, broker: int) -> Any:
        """Run ``twistd gateway``; fire with it and a client subscribed to the uploads' topics."""
        gateway = spawn_gateway(self, reactor, "--nodaemon", "--pidfile=", "gateway", "--config", str(config))
        self.addCleanup(lambda: (config.parent / f"gateway-{id(gateway)}.log").write_bytes(gateway.output))
        yield gateway.ready.addTimeout(30, reactor)
        client = TestClient(reactor)
        self.addCleanup(client.stop)
        yield client.connect(broker)
        for topic in ("lastUpload", "request", "+/response"):
            yield client.subscribe(f"{TOPIC}/{topic}", 1)
        return gateway, client

    @inlineCallbacks
    def wait_for(self, client: TestClient, what: str, matches: Callable[[MQTTMessage, Any], bool]) -> Any:
        """Fire with the payload of the first message received that ``matches`` (30 s at most)."""
        try:
            message = yield client.next_matching(lambda m: matches(m, json.loads(m.payload)), 30)
        except TimeoutError:
            self.fail(f"no {what} in 30 s")
        return json.loads(message.payload)

    def request_of(self, cid: str) -> Callable[[MQTTMessage, Any], bool]:
        """Matches the outbox request of the file ``cid``."""
        return lambda m, v: m.topic == f"{TOPIC}/request" and v["value"]["correlationId"] == cid

    @inlineCallbacks
    def start(self, client: TestClient, cid: str, options: dict[str, str]) -> Any:
        """Answer the request of ``cid`` with a ``start``; fire once it is answered 204."""
        yield client.publish(f"{TOPIC}/start", json.dumps({"correlationId": cid, "options": options}).encode(), 1)
        answer = yield self.wait_for(client, "answer to the start", lambda m, v: m.topic == f"{TOPIC}/start/response")
        self.assertEqual(answer, {"status": 204})

    @inlineCallbacks
    def stalled_upload(self, work: Path, cut_after: int) -> Any:
        """Start a gateway configured by :meth:`write_config`, trigger the upload ``logs`` and
        start its first file (``big.bin``) through a proxy that stalls it for good after
        ``cut_after`` bytes; fire once it stalls, with the proxy, the configuration's path, the
        broker's port, the gateway and its client."""
        proxy = UploadCuttingProxy(reactor, self.server.port, cut_after=cut_after, hold=True)
        port = proxy.listen()
        self.addCleanup(proxy.close)  # (else Azurite's stop waits for the held upstream side)
        config, broker = self.write_config(work)
        gateway, client = yield self.start_gateway(config, broker)
        yield client.publish(f"{TOPIC}/trigger", b'{"correlationId": "logs"}', 1)
        yield self.wait_for(client, "request of big.bin", self.request_of("logs#1"))
        yield self.start(client, "logs#1", self.options(endpoint=f"http://127.0.0.1:{port}/devstoreaccount1/"))
        yield proxy.held.addTimeout(30, reactor)
        return proxy, config, broker, gateway, client

    @inlineCallbacks
    def test_sigkill_mid_block_upload_resumes_from_the_staged_blocks(self) -> Any:
        """The gateway killed while a 4 MiB file goes to Azure in 256 KiB blocks: started again,
        it says the upload resumed and sends the file's blocks not staged yet (with the persisted
        start options); its file not started yet is started then: both end in storage."""
        work = Path(self.mktemp()).resolve()
        size = 4 * 2**20
        sha = make_file(work / "files" / "big.bin", size)
        small = make_file(work / "files" / "small.bin", 1000, seed=2)
        # stalls the first upload for good after 1.5 MiB: the gateway is killed meanwhile
        proxy, config, broker, gateway, client = yield self.stalled_upload(work, 3 * 2**19)
        gateway.transport.signalProcess("KILL")
        yield gateway.ended
        client.stop(drop=True)
        before = proxy.total

        gateway, client = yield self.start_gateway(config, broker)
        # (retained; the request sent again for small.bin went before this client was there)
        resumed = yield self.wait_for(client, "status resumed", lambda m, v: m.topic == f"{TOPIC}/lastUpload"
                                      and v["message"] == "resumed after restart")
        self.assertEqual([f["state"] for f in resumed["files"]], ["UPLOADING", "PENDING"])
        yield self.start(client, "logs#2", self.options())
        final = yield self.wait_for(client, "the upload's end", lambda m, v: m.topic == f"{TOPIC}/lastUpload"
                                    and v["state"] in ("SUCCESS", "FAILED", "CANCELED"))
        self.assertEqual(final["state"], "SUCCESS", final)
        self.assertEqual((self.stored_sha256("big.bin"), self.stored_sha256("small.bin")), (sha, small))
        # the blocks staged before the kill (over 1 MiB of them) were not sent again
        self.assertLess(proxy.total - before, size - 2**20)

    @inlineCallbacks
    def test_an_upload_canceled_on_a_full_disk_is_not_resumed(self) -> Any:
        """The uploads' filesystem (a 1 MiB tmpfs) full when a running upload is canceled: the
        CANCELED status says its record cannot be written, the record left from before
        (UPLOADING) is removed, so the gateway killed and started again does not resume it
        (docs/uploads.md, Statuses). It resumed it: the canceled file was sent again."""
        work = Path(self.mktemp()).resolve()
        uploads = work / "state" / "uploads"
        mount_tmpfs(self, uploads, "1m")
        make_file(work / "files" / "big.bin", 4 * 2**20)
        proxy, config, broker, gateway, client = yield self.stalled_upload(work, 2**19)
        fill_up(uploads / "filler")
        yield client.publish(f"{TOPIC}/cancel", b'{"correlationId": "logs"}', 1)
        final = yield self.wait_for(client, "CANCELED", lambda m, v: m.topic == f"{TOPIC}/lastUpload"
                                    and v["state"] == "CANCELED")
        self.assertEqual(final["message"], "canceled; the upload's record cannot be written: No space left on device")
        answer = yield self.wait_for(client, "answer to the cancel", lambda m, v: m.topic == f"{TOPIC}/cancel/response")
        self.assertEqual(answer, {"status": 204})
        self.assertEqual(list((uploads / "operations").iterdir()), [])
        gateway.transport.signalProcess("KILL")
        yield gateway.ended
        client.stop(drop=True)
        gateway, client = yield self.start_gateway(config, broker)
        self.assertNotIn(b"resuming upload", gateway.output)
        self.assertEqual(len(proxy.sent), 1)
        self.flushLoggedErrors()
