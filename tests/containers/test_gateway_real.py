"""Container apps in the real gateway process (``twistd gateway``): declared in the config,
they run; after a SIGKILL of the gateway the containers the operator wanted run again, the
ones still running are adopted, and no duplicates are left; an update killed in its health
window is current after the restart."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.server import Site
from twisted.web.static import File

from gateway.containers.podman import unix_http_client

from tests.apps.realtime import wait_until
from tests.containers.test_podman_real import world
from tests.containers.world import PodmanCli
from tests.gatewayprocess import spawn_gateway
from tests.ports import free_port
from tests.tmpfs import fill_up, mount_tmpfs


class GatewayContainersTests(TestCase):
    timeout = 180

    def podman_and_config(self, work: Path) -> tuple[PodmanCli, Path]:
        """A podman of the test's own (destroyed at its end; its socket under a short path) and
        :meth:`config` for it."""
        short = Path(tempfile.mkdtemp(prefix="gw-podman-"))
        podman = PodmanCli(short)
        self.addCleanup(podman.destroy)
        return podman, self.config(work, podman, short / "api.sock")

    def config(self, work: Path, podman: PodmanCli, socket: Path) -> Path:
        registry = world()
        container = {"image": registry.image("1"), "network_mode": "none", "stop_timeout": 1, "startsecs": 0.3}
        text = {
            "gateway": {"state_dir": str(work / "state")},
            "broker": {"listeners": {"default": {"endpoint": f"tcp:{free_port()}:interface=127.0.0.1"}}},
            "apps": {"backoff_initial": 0.1, "backoff_max": 0.4, "health_window": 0.5},
            "ingest": {"endpoint": f"tcp:{free_port()}:interface=127.0.0.1"}, "telemetry": {"metrics_endpoint": ""},
            "containers": {"enabled": True, "socket": str(socket), "podman_command": list(podman.command),
                           "insecure_registries": [registry.address],
                           "containers": {"alpha": container, "beta": container}},
        }
        path = work / "gateway.yaml"
        path.write_text(json.dumps(text))  # JSON is YAML
        return path

    def running(self, podman: PodmanCli) -> dict[str, dict[str, Any]]:
        return {c["Labels"]["io.gateway.app"]: c for c in podman.containers() if c["State"] == "running"}

    @inlineCallbacks
    def test_desired_state_survives_a_sigkill(self) -> None:
        """SIGKILL the gateway, kill one container meanwhile: on the next start both run again,
        the survivor is adopted (same container), and there is one container per app."""
        work = Path(self.mktemp()).absolute()
        work.mkdir()
        podman, config = self.podman_and_config(work)
        gateway = spawn_gateway(self, reactor, "--nodaemon", "--pidfile=", "gateway", "--config", str(config))
        yield gateway.ready.addTimeout(60, reactor)
        yield wait_until(lambda: len(self.running(podman)) == 2, timeout=60, step=0.5)
        before = self.running(podman)
        yield self.other_gateway_leaves_them_alone(work, podman, before)
        gateway.transport.signalProcess("KILL")
        yield gateway.ended
        alpha = podman.inspect(before["alpha"]["Id"])["State"]["Pid"]
        os.kill(alpha, signal.SIGKILL)
        yield wait_until(lambda: "alpha" not in self.running(podman), timeout=20, step=0.2)
        again = spawn_gateway(self, reactor, "--nodaemon", "--pidfile=", "gateway", "--config", str(config))
        yield again.ready.addTimeout(60, reactor)
        yield wait_until(lambda: len(self.running(podman)) == 2, timeout=60, step=0.5)
        after = self.running(podman)
        self.assertEqual({k: v["Id"] for k, v in after.items()}, {k: v["Id"] for k, v in before.items()})
        self.assertEqual(len(podman.containers()), 2)
        state = json.loads((work / "state/containers/state.json").read_text())
        self.assertEqual({k: v["wish"] for k, v in state["apps"].items()}, {"alpha": "running", "beta": "running"})

    @inlineCallbacks
    def other_gateway_leaves_them_alone(self, work: Path, podman: PodmanCli, running: dict[str, Any]) -> Any:
        """A second gateway on the machine, with a state directory and a podman socket of its
        own but the same podman storage, and a container app of its own: its start leaves the
        first one's containers running (it removed them as strays of its own: 'removing
        alpha.<hash>, not a current version'), and so does its stop."""
        other = work / "other"
        other.mkdir()
        text = json.loads((work / "gateway.yaml").read_text())
        text["gateway"]["state_dir"] = str(other / "state")
        text["broker"]["listeners"]["default"]["endpoint"] = f"tcp:{free_port()}:interface=127.0.0.1"
        text["ingest"]["endpoint"] = f"tcp:{free_port()}:interface=127.0.0.1"
        text["containers"]["socket"] = str(Path(text["containers"]["socket"]).with_name("other.sock"))
        text["containers"]["containers"] = {"gamma": text["containers"]["containers"]["alpha"]}
        (other / "gateway.yaml").write_text(json.dumps(text))
        second = spawn_gateway(self, reactor, "--nodaemon", "--pidfile=", "gateway", "--config",
                               str(other / "gateway.yaml"))
        yield second.ready.addTimeout(60, reactor)
        # (it takes its containers in hand after its start: strays are removed before gamma runs)
        yield wait_until(lambda: "gamma" in self.running(podman), timeout=60, step=0.2)
        self.assertNotIn(b"removing alpha", second.output)
        second.transport.signalProcess("TERM")
        yield second.ended
        podman.run("rm", "--force", "--time=0", self.running(podman)["gamma"]["Id"])
        self.assertEqual({k: v["Id"] for k, v in self.running(podman).items()},
                         {k: v["Id"] for k, v in running.items()})

    @inlineCallbacks
    def test_an_update_killed_in_its_health_window_is_current_after_the_restart(self) -> None:
        """SIGKILL the gateway while an update's new container is in its health window: the next
        start finds the new version current (persisted before the old one was stopped), runs
        it, removes the old container, and ends the operation FINISHED_SUCCESS."""
        registry = world()
        work = Path(self.mktemp()).absolute()
        served = work / "served"
        served.mkdir(parents=True)
        web = reactor.listenTCP(0, Site(File(str(served))), interface="127.0.0.1")
        self.addCleanup(web.stopListening)
        short = Path(tempfile.mkdtemp(prefix="gw-podman-"))
        podman = PodmanCli(short)
        self.addCleanup(podman.destroy)
        config = self.config(work, podman, short / "api.sock")
        text = json.loads(config.read_text())
        text["containers"]["containers"] = {}
        text["updates"] = {"download": {"allow_http": True}}
        text["admin"] = {"socket": str(short / "admin.sock")}
        config.write_text(json.dumps(text))
        admin = unix_http_client(reactor, str(short / "admin.sock"))

        @inlineCallbacks
        def install(version: str, tag: str, window: float) -> Any:
            name = f"app-{version}.json"
            (served / name).write_text(json.dumps({"image": registry.image(tag), "network_mode": "none",
                                                   "stop_timeout": 1, "startsecs": 0.3, "health_window": window}))
            request = {"correlationId": f"op-{version}", "softwareModules": [{
                "softwareModule": {"name": "app", "version": version},
                "artifacts": [{"filename": name,
                               "download": {"HTTP": {"url": f"http://127.0.0.1:{web.getHost().port}/{name}"}},
                               "checksums": {"SHA256": hashlib.sha256((served / name).read_bytes()).hexdigest()}}],
                "metadata": {"target": "container"}}]}
            response = yield admin.post("http://gateway/updates/install", json=request)
            self.assertEqual(response.code, 200, (yield response.text()))

        @inlineCallbacks
        def status(correlation_id: str) -> Any:
            response = yield admin.get("http://gateway/operations")
            listed = yield response.json()
            return next((o["status"] for o in listed["operations"] if o["correlation_id"] == correlation_id), None)

        @inlineCallbacks
        def ended(correlation_id: str) -> Any:
            for _ in range(240):  # 60 s
                found = yield status(correlation_id)
                if found in ("FINISHED_SUCCESS", "FINISHED_ERROR"):
                    return found
                yield deferLater(reactor, 0.25, lambda: None)
            raise AssertionError(f"{correlation_id} did not end within 60 s")

        gateway = spawn_gateway(self, reactor, "--nodaemon", "--pidfile=", "gateway", "--config", str(config))
        yield gateway.ready.addTimeout(60, reactor)
        yield install("1", "1", 0.3)
        self.assertEqual((yield ended("op-1")), "FINISHED_SUCCESS")
        [old] = podman.containers()
        yield install("2", "2", 600)
        new = lambda: [c for c in podman.containers()  # noqa: E731
                       if c["Labels"].get("io.gateway.version") == "2" and c["State"] == "running"]
        yield wait_until(lambda: bool(new()), timeout=60, step=0.3)
        gateway.transport.signalProcess("KILL")
        yield gateway.ended
        again = spawn_gateway(self, reactor, "--nodaemon", "--pidfile=", "gateway", "--config", str(config))
        yield again.ready.addTimeout(60, reactor)
        self.assertEqual((yield ended("op-2")), "FINISHED_SUCCESS")
        yield wait_until(lambda: [c["Id"] for c in podman.containers()] == [new()[0]["Id"]] if new() else False,
                         timeout=30, step=0.5)
        self.assertNotIn(old["Id"], [c["Id"] for c in podman.containers()])
        state = json.loads((work / "state/containers/state.json").read_text())
        self.assertEqual((state["apps"]["app"]["version"], state["apps"]["app"]["previous"]["version"]), ("2", "1"))

    @inlineCallbacks
    def test_a_gateway_started_on_a_full_disk_takes_its_containers_in_hand(self) -> None:
        """The state directory's filesystem is full when the gateway starts (a device whose disk
        filled up before a power cut): the gateway starts, says it cannot write the containers'
        state.json, adopts the container still running and leaves the file as it was. The
        containers service failed its start on that write, and the whole gateway with it
        ('gateway failed to start: [Errno 28] No space left on device', exit 1)."""
        work = Path(self.mktemp()).absolute()
        work.mkdir()
        podman, config = self.podman_and_config(work)
        text = json.loads(config.read_text())
        del text["containers"]["containers"]["beta"]
        config.write_text(json.dumps(text))
        mount_tmpfs(self, work / "state", "16m")
        gateway = spawn_gateway(self, reactor, "--nodaemon", "--pidfile=", "gateway", "--config", str(config))
        yield gateway.ready.addTimeout(60, reactor)
        yield wait_until(lambda: "alpha" in self.running(podman), timeout=60, step=0.5)
        before = self.running(podman)["alpha"]["Id"]
        gateway.transport.signalProcess("TERM")
        yield gateway.ended
        state = work / "state/containers/state.json"
        kept = state.read_bytes()
        # (the start removes a run record it cannot rewrite, which would free a page for state.json)
        (work / "state/run.json").unlink()
        fill_up(work / "state" / "filler")
        again = spawn_gateway(self, reactor, "--nodaemon", "--pidfile=", "gateway", "--config", str(config))
        yield again.ready.addTimeout(60, reactor)
        self.assertIn(f"containers: cannot write {state} (No space left on device): the containers follow it"
                      " and the config as they are; it is written with the next change", again.output.decode())
        self.assertEqual(self.running(podman)["alpha"]["Id"], before)
        self.assertEqual(state.read_bytes(), kept)

