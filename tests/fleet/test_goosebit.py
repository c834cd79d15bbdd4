"""A real gateway process against a real gooseBit (DDI server, SQLite) on 127.0.0.1: register,
configData, a bundle assigned, downloaded (resumed with Range after a SIGKILL), installed and
reported finished; a failing bundle ends as an error with its reason on the server."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, TestCase

from gateway.atomic import read_json
from tests.fleet.goosebit import GooseBit, goosebit_available
from tests.gatewayprocess import spawn_gateway
from tests.ports import free_port
from tests.updates.realservers import nginx_available
from tests.updates.swubundle import bundle

DEVICE = "gw-fleet-1"
TOKEN = "tok-8f2c1e"
SIZE = 10 * 2**20


class GooseBitTests(TestCase):
    """The gateway as a gooseBit device, end to end."""

    timeout = 180

    def setUp(self) -> None:
        if not goosebit_available():
            raise SkipTest("gooseBit's virtualenv is missing (make tools)")
        if not nginx_available():
            raise SkipTest("nginx is not installed (make test-deps)")
        self.work = Path(self.mktemp()).resolve()
        self.state = self.work / "state"
        self.marker = self.work / "installed.txt"
        self.server = GooseBit(self.work / "goosebit", rate="2m")
        self.addCleanup(self.server.stop)
        self.server.add_device(DEVICE, TOKEN)
        (self.work / "token").write_text(TOKEN + "\n")
        self.config = self.work / "gateway.yaml"
        self.config.write_text(
            f"gateway:\n  state_dir: {self.state}\n  device_id: {DEVICE}\n"
            f"broker:\n  listeners:\n    default:\n      endpoint: 'tcp:{free_port()}:interface=127.0.0.1'\n"
            "updates:\n  download:\n    allow_http: true\n    checkpoint_bytes: 1048576\n    write_batch: 262144\n"
            f"fleet:\n  enabled: true\n  base_url: {self.server.url}\n  allow_http: true\n  tenant: DEFAULT\n"
            f"  token_file: {self.work / 'token'}\n  poll_interval: 1\n  min_poll_interval: 1\n"
            # no fixed ports: /metrics and the ingest off
            "telemetry:\n  metrics_endpoint: ''\ningest:\n  enabled: false\n")

    @inlineCallbacks
    def start_gateway(self) -> Any:
        gateway = spawn_gateway(self, reactor, "--nodaemon", "--pidfile=", "gateway", "--config", str(self.config))
        log = self.work / f"gateway-{len(list(self.work.glob('gateway-*.log')))}.log"
        self.addCleanup(lambda: log.write_bytes(gateway.output))
        yield gateway.ready.addTimeout(30, reactor)
        return gateway

    @inlineCallbacks
    def wait(self, what: str, condition: Callable[[], bool], seconds: float = 60) -> Any:
        """Fire once ``condition()`` holds (checked every 100 ms, for at most ``seconds``)."""
        deadline = reactor.seconds() + seconds
        while not condition():
            if reactor.seconds() > deadline:
                self.fail(f"timed out waiting for {what}; device: {self.server.device(DEVICE)}")
            yield deferLater(reactor, 0.1, lambda: None)

    def state_is(self, *states: str) -> Callable[[], bool]:
        return lambda: self.server.device(DEVICE).get("last_state") in states

    def requests_to(self, suffix: str) -> list[int]:
        """The statuses of the gateway's requests whose URI ends with ``suffix``, in order."""
        return [status for status, _, _, uri in self.server.requests() if uri.endswith(suffix)]

    def polls(self) -> int:
        """How many polls of the gateway gooseBit answered."""
        return len(self.requests_to(f"/controller/v1/{DEVICE}"))

    @inlineCallbacks
    def start_registered(self, software: int) -> Any:
        """Register the device (as :meth:`GooseBit.register` says: its gateway's own registration
        from Unknown, and gooseBit's 10 s sleep after it, are the first test's), assign it
        ``software`` and start the gateway; fire once the gateway's own ``configData`` (sent at
        its first poll) has been taken."""
        self.server.register(DEVICE, TOKEN)
        self.server.assign(DEVICE, software)
        gateway = yield self.start_gateway()
        yield self.wait("the gateway's configData", lambda: 200 in self.requests_to("/configData"))
        return gateway

    def durable(self) -> int:
        metas = list((self.state / "updates" / "artifacts").glob("*/m0/*.part.json"))
        meta = read_json(metas[0]) if metas else None
        return int(meta["durable"]) if isinstance(meta, dict) else 0

    def payload(self) -> bytes:
        """A big script that stops at once (what follows ``exit`` is never read as commands)."""
        return b"exit 0\n# " + os.urandom(SIZE // 2).hex().encode()[:SIZE] + b"\n"

    @inlineCallbacks
    def test_bundle_rolled_out_resumed_after_sigkill_and_finished(self) -> None:
        """Registered by its configData, the gateway gets the assigned bundle, is killed midway
        through the download, resumes it with a Range request, installs once and ends Finished
        with gooseBit recording the new sw_version."""
        gateway = yield self.start_gateway()
        yield self.wait("configData (Registered)", self.state_is("Registered"))
        data = bundle("2.0.0", [("payload.sh", "shellscript", self.payload())],
                      [("install.sh", f"echo installed >> {self.marker}\n".encode())])
        self.server.assign(DEVICE, self.server.upload("gw-2.0.0.swu", data))
        # gooseBit told the unregistered device to poll again in 10 s (5-15 s with the jitter
        # after a start); a gateway started again polls within min_poll_interval (1 s) instead.
        # (Later assignments to a running gateway: the last test.)
        gateway.transport.signalProcess("TERM")
        yield gateway.ended
        gateway = yield self.start_gateway()
        yield self.wait("a resume point past 3 MiB", lambda: self.durable() >= 3 * 2**20)
        durable = self.durable()
        self.assertLess(durable, len(data), "the download finished before the kill")
        gateway.transport.signalProcess("KILL")
        yield gateway.ended

        gateway = yield self.start_gateway()
        yield self.wait("Finished", self.state_is("Finished", "Error"), 120)
        device = self.server.device(DEVICE)
        self.assertEqual((device["last_state"], device["sw_version"]), ("Finished", "2.0.0"),
                         self.server.device_log(DEVICE))
        self.assertEqual(self.marker.read_text(), "installed\n")
        offset = int(re.search(rb"resuming http://\S+/download at (\d+) bytes", gateway.output).group(1))  # type: ignore[union-attr]
        self.assertGreaterEqual(offset, durable)
        # finished: no second download or install at the next polls
        polls = self.polls()
        yield self.wait("two more polls", lambda: self.polls() >= polls + 2, 30)
        downloads = self.server.downloads()
        self.assertEqual([(code, asked) for code, asked, _ in downloads], [(200, ""), (206, f"bytes={offset}-")])
        self.assertEqual(downloads[1][2], len(data) - offset)
        self.assertEqual(self.marker.read_text(), "installed\n")

    @inlineCallbacks
    def test_failing_bundle_ends_in_error_with_the_reason_on_the_server(self) -> None:
        """A bundle whose script fails ends as closed/failure: gooseBit shows Error and the reason."""
        data = bundle("3.0.0", [("check.sh", "shellscript", b"echo 'disk full: /data has 0 bytes' >&2; exit 3\n")])
        yield self.start_registered(self.server.upload("gw-3.0.0.swu", data))
        yield self.wait("Error", self.state_is("Finished", "Error"), 60)
        self.assertEqual(self.server.device(DEVICE)["last_state"], "Error")
        log = self.server.device_log(DEVICE)
        self.assertIn("check.sh exited with 3", log)
        self.assertIn("disk full", log)

    @inlineCallbacks
    def test_unknown_handler_is_refused_with_the_reason_on_the_server(self) -> None:
        """A bundle with a raw rootfs image (a handler the gateway lacks) is refused: Error on the
        server, the handler named in the log."""
        data = bundle("4.0.0", [("rootfs.ext4", "raw", b"\0" * 4096)])
        yield self.start_registered(self.server.upload("gw-4.0.0.swu", data))
        yield self.wait("Error", self.state_is("Finished", "Error"), 60)
        self.assertIn("no handler in this gateway for raw", self.server.device_log(DEVICE))

    @inlineCallbacks
    def test_an_earlier_bundle_assigned_again_is_installed_again(self) -> None:
        """A rollback: 1.0.0 then 2.0.0 are installed, then 1.0.0 is assigned again. gooseBit offers
        it under its old action id (its software id); the gateway installs it again and gooseBit
        records 1.0.0 (it was told 'finished success' from before, nothing was installed, and
        gooseBit showed 1.0.0 running where 2.0.0 was)."""
        def sw_version_is(version: str) -> Callable[[], bool]:
            return lambda: (self.server.device(DEVICE).get("last_state"),
                            self.server.device(DEVICE).get("sw_version")) == ("Finished", version)

        software = {version: self.server.upload(f"gw-{version}.swu", bundle(
                        version, [("step.sh", "shellscript", f"echo {version} >> {self.marker}\n".encode())]))
                    for version in ("1.0.0", "2.0.0")}
        yield self.start_registered(software["1.0.0"])
        yield self.wait("1.0.0 Finished", sw_version_is("1.0.0"), 60)
        for version in ("2.0.0", "1.0.0"):
            self.server.assign(DEVICE, software[version])
            yield self.wait(f"{version} Finished", sw_version_is(version), 60)
        self.assertEqual(self.marker.read_text(), "1.0.0\n2.0.0\n1.0.0\n")
