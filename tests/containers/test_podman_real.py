"""Container apps on a real podman: pulled from a real registry on 127.0.0.1, supervised
through podman's event stream, updated with a health gate and rolled back.

Each test has its own podman storage (root, runroot, tmpdir) under its temp dir and its own
``podman system service`` started by the gateway; cleanup removes every container and image.
"""

from __future__ import annotations

import atexit
import base64
import json
import tempfile
import os
import signal
import socket
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from gateway.apps.process import ProgramState
from gateway.cgroupmembership import CGROUP_ROOT, read_cgroups, unified_path
from gateway.containers.description import ContainerDescription
from gateway.containers.errors import RuntimeFailure
from gateway.containers.service import ContainersService
from gateway.containers.settings import ContainersSettings
from gateway.telemetry.engine import engine_report
from tests.apps.realtime import fast_settings, make_service, wait_until
from tests.containers.world import PodmanCli, Registry

registry: Registry | None = None


def world() -> Registry:
    """The module's registry, built on first use and removed when the test run ends."""
    global registry
    if registry is None:
        registry = Registry()
        atexit.register(registry.stop)
    return registry


def description(tag: str = "1", **more: Any) -> ContainerDescription:
    """A test container: host network not needed, so none; small limits."""
    return ContainerDescription(**{"image": world().image(tag), "network_mode": "none", "stop_timeout": 1,
                                   "startsecs": 0.3, **more})


def kernel_memory_limit(pid: int) -> int | None:
    """The memory limit, in bytes, of the memory cgroup process ``pid`` runs in (cgroup v1
    ``memory.limit_in_bytes``, v2 ``memory.max``); None for none (``max``)."""
    cgroups = read_cgroups(Path(f"/proc/{pid}/cgroup"))
    for cgroup in cgroups:
        if "memory" in cgroup.controllers:
            limit = int((CGROUP_ROOT / "memory" / cgroup.path / "memory.limit_in_bytes").read_text())
            return None if limit >= 2**62 else limit
    text = (CGROUP_ROOT / (unified_path(cgroups) or "") / "memory.max").read_text().strip()
    return None if text == "max" else int(text)


class RealPodmanTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def start(self, credentials: str = "", insecure: tuple[str, ...] = (),
              **declared: ContainerDescription) -> Any:
        registry = world()
        self.state = Path(self.mktemp()).absolute()
        self.state.mkdir()
        # podman refuses a runroot over 50 characters and a unix socket path has at most 107
        # bytes, so its storage lives in a short temp dir (removed on cleanup), not under _trial_temp.
        short = Path(tempfile.mkdtemp(prefix="gw-podman-"))
        self.podman = PodmanCli(short)
        self.addCleanup(self.podman.destroy)  # runs last: after the services stopped
        self.apps = make_service(self.state, fast_settings(health_window=1.0))
        settings = ContainersSettings(enabled=True, podman_command=self.podman.command,
                                      socket=str(short / "api.sock"),
                                      insecure_registries=insecure or (registry.address,),
                                      credentials_file=credentials, containers=declared)
        self.containers = ContainersService(settings, fast_settings(health_window=1.0), self.state, reactor,
                                            self.apps.writer, taken=self.apps.control.is_program)
        self.apps.add_kind(self.containers.operations)
        yield self.apps.startService()
        self.addCleanup(self.apps.stopService)
        yield self.containers.startService()
        self.addCleanup(lambda: self.containers.stopService() if self.containers.running else None)

    def unit(self, name: str) -> Any:
        return self.containers.supervisor.units[name]

    def running(self, name: str) -> bool:
        unit = self.containers.supervisor.units.get(name)
        return unit is not None and unit.state is ProgramState.RUNNING

    @inlineCallbacks
    def test_install_from_registry_runs_limited_logged_and_reported(self) -> None:
        """An install pulls the image from the registry, runs it RUNNING with the memory limit
        applied (by the kernel too) and an oom_score_adj of 500, copies stdout and stderr into
        the app's logs, and engine_report shows it."""
        yield self.start()
        result = yield self.containers.operations.install("hello", "1", description(memory="64M"))
        self.assertTrue(result.ok, result)
        self.assertTrue(self.running("hello"))
        inspected = self.podman.inspect(self.unit("hello").container_id)
        self.assertEqual(inspected["HostConfig"]["Memory"], 64 * 2**20)
        # (and the kernel enforces it: the limit of the memory cgroup the container runs in)
        self.assertEqual(kernel_memory_limit(self.unit("hello").pid), 64 * 2**20)
        # (the OOM killer takes it before the gateway, as it takes a hosted program)
        self.assertEqual(Path(f"/proc/{self.unit('hello').pid}/oom_score_adj").read_text(), "500\n")
        # stdout and stderr come as separate frames of podman's log stream, "oops" after "hello":
        # the stdout line being in its file says nothing about the stderr one, so wait for both.
        out, err = self.state / "logs/apps/hello.log", self.state / "logs/apps/hello.err.log"
        yield wait_until(lambda: out.exists() and b"hello from v1" in out.read_bytes()
                         and err.exists() and b"oops\n" in err.read_bytes())
        lines = yield self.apps.control.tail("hello", stderr=True)
        self.assertEqual(lines, ["oops"])
        [entry] = [e for e in engine_report(self.apps.snapshot())["apps"] if "hello" in e]
        report = entry["hello"]
        self.assertEqual((report["kind"], report["status"], report["version"], report["image"]),
                         ("container", "RUNNING", "1", world().image("1")))
        self.assertTrue(report["image_digest"].startswith("sha256:"))
        [snapshot] = [a for a in self.apps.snapshot().apps if a.name == "hello"]
        self.assertEqual((snapshot.kind, snapshot.status), ("container", "RUNNING"))

    @inlineCallbacks
    def test_killed_container_is_restarted(self) -> None:
        """A container whose process is killed is started again by the gateway (restart counted)."""
        yield self.start(worker=description())
        yield wait_until(lambda: self.running("worker") and self.unit("worker").pid is not None)
        pid = self.unit("worker").pid
        os.kill(pid, signal.SIGKILL)
        yield wait_until(lambda: self.unit("worker").restarts == 1 and self.running("worker")
                         and self.unit("worker").pid not in (None, pid), timeout=20)
        self.assertEqual(self.unit("worker").exitstatus, 137)
        self.assertEqual(len(self.podman.containers()), 1)

    @inlineCallbacks
    def test_stop_and_start_through_the_apps_operations(self) -> None:
        """app.stop / app.start (the shared operations) stop the container and start it again,
        and the wish is persisted."""
        yield self.start(worker=description())
        yield wait_until(lambda: self.running("worker"))
        yield self.apps.control.stop("worker")
        self.assertIs(self.unit("worker").state, ProgramState.STOPPED)
        self.assertFalse(self.podman.inspect(self.unit("worker").container_id)["State"]["Running"])
        saved = json.loads((self.state / "containers/state.json").read_text())
        self.assertEqual(saved["apps"]["worker"]["wish"], "stopped")
        yield self.apps.control.start("worker")
        yield wait_until(lambda: self.running("worker"))
        self.assertTrue(self.podman.inspect(self.unit("worker").container_id)["State"]["Running"])
        [status] = self.apps.control.status("worker")
        self.assertEqual(status.restarts, 0)

    @inlineCallbacks
    def test_update_rolls_back_and_prunes(self) -> None:
        """A version whose container exits at once is rolled back (the old one runs again);
        healthy updates replace the container, and unused images are pruned keeping the previous."""
        yield self.start()
        first = yield self.containers.operations.install("app", "1", description("1"))
        self.assertTrue(first.ok, first)
        old_id = self.unit("app").container_id
        bad = yield self.containers.operations.install("app", "2", description("bad"))
        self.assertEqual(bad.outcome, "rolled-back", bad)
        self.assertIn("dying", bad.log)
        self.assertEqual((self.unit("app").version, self.unit("app").container_id), ("1", old_id))
        yield wait_until(lambda: self.running("app"))
        self.assertEqual([c["Id"] for c in self.podman.containers()], [old_id])
        second = yield self.containers.operations.install("app", "2", description("2"))
        self.assertTrue(second.ok, second)
        self.assertEqual(len(self.podman.containers()), 1)
        third = yield self.containers.operations.install("app", "3", description("3"))
        self.assertTrue(third.ok, third)
        tags = sorted(t for image in self.podman.images() for t in image.get("Names") or [])
        self.assertEqual(tags, [world().image("2"), world().image("3")])

    @inlineCallbacks
    def test_bad_input_fails_and_keeps_the_running_version(self) -> None:
        """An unknown tag, a registry that is down and a malformed description fail clearly; the
        running version is untouched."""
        yield self.start()
        yield self.containers.operations.install("app", "1", description("1"))
        container = self.unit("app").container_id
        missing = yield self.containers.operations.install("app", "2", description("nope"))
        self.assertEqual(missing.outcome, "failed")
        self.assertIn("manifest unknown", missing.message)
        down = yield self.containers.operations.install(
            "app", "2", ContainerDescription(image="127.0.0.1:1/bb:1", network_mode="none"))
        self.assertEqual(down.outcome, "failed")
        self.assertIn("cannot pull", down.message)
        malformed = yield self.containers.operations.install("app", "2", description("2", memory="lots"))
        self.assertEqual(malformed.outcome, "refused")
        self.assertIn("memory", malformed.message)
        refused = yield self.containers.operations.install("app", "2", description("2", cpuset_cpus="97"))
        self.assertIn(refused.outcome, ("failed", "rolled-back"))
        self.assertIn("CPUs are not available", refused.message)
        self.assertEqual((self.unit("app").version, self.unit("app").container_id), ("1", container))
        self.assertTrue(self.running("app"))

    @inlineCallbacks
    def test_oci_archive_is_verified_then_loaded(self) -> None:
        """An OCI archive artifact is loaded only when its sha256 matches the announced one; one
        that does not hold the image the description names fails, and the images it brought in
        are deleted (they were left in podman's store, listed nowhere, never pruned)."""
        import hashlib
        yield self.start()
        registry = world()
        work = Path(self.mktemp())
        work.mkdir()
        (work / "other.json").write_text(json.dumps({"image": "localhost/bb:9", "archive": "bb-2.oci.tar",
                                                     "network_mode": "none", "startsecs": 0.3}))
        digest = hashlib.sha256(registry.oci_archive.read_bytes()).hexdigest()
        other = yield self.apps.control.install_container("app", "2", [work / "other.json", registry.oci_archive],
                                                          {registry.oci_archive.name: {"sha256": digest}})
        self.assertEqual((other.outcome, other.message), ("failed", "bb-2.oci.tar holds localhost/bb:2, not "
                                                                    "localhost/bb:9"))
        self.assertEqual(self.podman.images(), [])
        (work / "app.json").write_text(json.dumps({"image": "localhost/bb:2", "archive": "bb-2.oci.tar",
                                                   "network_mode": "none", "startsecs": 0.3}))
        archive = registry.oci_archive
        files = [work / "app.json", archive]
        wrong = yield self.apps.control.install_container("app", "2", files, {archive.name: {"sha256": "0" * 64}})
        self.assertEqual(wrong.outcome, "failed")
        self.assertIn("sha256", wrong.message)
        right = yield self.apps.control.install_container("app", "2", files, {archive.name: {"sha256": digest}})
        self.assertTrue(right.ok, right)
        self.assertTrue(self.running("app"))

    @inlineCallbacks
    def test_podman_service_death_is_survived(self) -> None:
        """When the podman service the gateway runs dies, it is started again, the event stream
        is followed again, and a container killed afterwards is still restarted."""
        yield self.start(worker=description())
        yield wait_until(lambda: self.running("worker") and self.unit("worker").pid is not None)
        service = self.containers.podman.process
        old_service = service.pid
        os.kill(old_service, signal.SIGKILL)
        yield wait_until(lambda: service.pid not in (None, old_service) and service.state is ProgramState.RUNNING,
                         timeout=20)
        yield wait_until(lambda: self.containers.supervisor.subscribed, timeout=30)
        self.assertTrue(self.running("worker"))
        pid = self.unit("worker").pid
        os.kill(pid, signal.SIGKILL)
        yield wait_until(lambda: self.unit("worker").restarts == 1 and self.running("worker"), timeout=20)

    @inlineCallbacks
    def test_a_stop_the_death_of_podmans_service_cut_short_is_finished(self) -> None:
        """podman's service dies while it stops a container (which ignores SIGTERM: it waits
        for stop_timeout): podman keeps the container 'stopping' for good. Once the service is
        back, the gateway stops it again: its process ends, and a start runs it again (the stop
        itself fails, podman not having finished it). It stayed
        'stopping', its process running while it was listed STOPPED, and a start went BACKOFF
        to FATAL ('container state improper')."""
        yield self.start(worker=description(stop_timeout=3))
        yield wait_until(lambda: self.running("worker") and self.unit("worker").pid is not None)
        pid = self.unit("worker").pid
        stopping = self.apps.control.stop("worker")
        yield wait_until(lambda: self.podman.inspect(self.unit("worker").container_id)["State"]["Status"]
                         == "stopping")
        service = self.containers.podman.process
        os.kill(service.pid, signal.SIGKILL)
        failure = yield self.assertFailure(stopping, RuntimeFailure)
        self.assertIn("podman does not answer", str(failure))
        yield wait_until(lambda: self.podman.inspect(self.unit("worker").container_id)["State"]["Status"]
                         == "exited", timeout=30)
        self.assertFalse(Path(f"/proc/{pid}").exists())
        yield self.apps.control.start("worker")
        yield wait_until(lambda: self.running("worker"), timeout=20)

    @inlineCallbacks
    def test_pull_with_credentials_from_the_file(self) -> None:
        """A registry behind basic auth: the pull fails without credentials, and succeeds with
        them read from the credentials file (auth.json format)."""
        registry = world()
        address, stop = registry.with_password("gw", "s3cret")
        self.addCleanup(stop)
        auth = Path(self.mktemp())  # not written yet: the file is read at each pull
        yield self.start(credentials=str(auth), insecure=(registry.address, address))
        yield wait_until(lambda: _answers(address))
        image = ContainerDescription(image=f"{address}/bb:1", network_mode="none", startsecs=0.3, stop_timeout=1)
        refused = yield self.containers.operations.install("private", "1", image)
        self.assertEqual(refused.outcome, "failed")
        self.assertIn("unauthorized", refused.message.lower())
        auth.write_text(json.dumps({"auths": {address: {"auth": base64.b64encode(b"gw:s3cret").decode()}}}))
        result = yield self.containers.operations.install("private", "1", image)
        self.assertTrue(result.ok, result)
        self.assertTrue(self.running("private"))


def _answers(address: str) -> bool:
    host, port = address.split(":")
    with socket.socket() as probe:
        return probe.connect_ex((host, int(port))) == 0
