"""Container apps in the real gateway process (``twistd gateway``): declared in the config,
they run; after a SIGKILL of the gateway the containers the operator wanted run again, the
ones still running are adopted, and no duplicates are left."""

from __future__ import annotations

import json
import os
import signal
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.apps.realtime import wait_until
from tests.containers.test_podman_real import world
from tests.containers.world import PodmanCli
from tests.gatewayprocess import spawn_gateway
from tests.ports import free_port


class GatewayContainersTests(TestCase):
    timeout = 180

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
        short = Path(tempfile.mkdtemp(prefix="gw-podman-"))
        podman = PodmanCli(short)
        self.addCleanup(podman.destroy)
        config = self.config(work, podman, short / "api.sock")
        gateway = spawn_gateway(self, reactor, "--nodaemon", "--pidfile=", "gateway", "--config", str(config))
        yield gateway.ready.addTimeout(60, reactor)
        yield wait_until(lambda: len(self.running(podman)) == 2, timeout=60, step=0.5)
        before = self.running(podman)
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
