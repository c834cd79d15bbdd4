"""A real container world for integration tests: podman with its own storage under the test's
temp dir, a docker-registry on 127.0.0.1, and tiny busybox images pushed to it.

podman runs with ``CONTAINERS_CONF`` pointing at a file that picks ``runc`` (``crun`` fails on
hybrid cgroups here) and ulimits the machine allows. Everything a test makes is removed by
:meth:`PodmanWorld.cleanup`, which tests register first so it runs even after a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

from twisted.trial.unittest import SkipTest

from tests.ports import free_port, listened_by

CONTAINERS_CONF = """\
[engine]
runtime = "runc"
events_logger = "file"
cgroup_manager = "cgroupfs"
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1000:1000"]
"""

#: tag -> the image's command: a long runner that prints, and one that exits at once.
IMAGES = {
    "1": ["/bin/sh", "-c", "echo hello from v1; echo oops >&2; exec sleep 100000"],
    "2": ["/bin/sh", "-c", "echo hello from v2; exec sleep 100000"],
    "3": ["/bin/sh", "-c", "echo hello from v3; exec sleep 100000"],
    "bad": ["/bin/sh", "-c", "echo dying; exit 3"],
}


#: Seconds a docker-registry may take to listen on its port.
REGISTRY_START_TIMEOUT = 20.0


def _run(argv: list[str], timeout: float = 60, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=timeout, **kwargs)


def _serve_registry(config: Path, port: int) -> tuple[subprocess.Popen[bytes], Any]:
    """Start ``docker-registry serve config`` (its output in ``registry.log`` beside the config)
    and wait until *it* listens on ``port`` (a connection that succeeds may reach another run's
    server on a port :func:`free_port` handed out to both, while this one fails to bind it).

    :return: the process and its open log file.
    :raises RuntimeError: with the end of its log, when it exits first or does not listen
        within :data:`REGISTRY_START_TIMEOUT` seconds (it is stopped then).
    """
    log_path = config.parent / "registry.log"
    log = log_path.open("wb")
    process = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + REGISTRY_START_TIMEOUT
    while not listened_by(process.pid, port):
        if process.poll() is not None or time.monotonic() > deadline:
            _stop_process(process)
            log.close()
            raise RuntimeError(f"docker-registry did not listen on 127.0.0.1:{port}: "
                               f"{log_path.read_text(errors='replace')[-2000:]}")
        time.sleep(0.05)
    return process, log


def _stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM ``process`` and wait for it (SIGKILL after 10 s)."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Registry:
    """The CNCF distribution registry (Debian's ``docker-registry``) with busybox images.

    Built once per test module (tests pull from it into their own podman storage).
    """

    def __init__(self) -> None:
        for tool in ("podman", "docker-registry", "runc"):
            if shutil.which(tool) is None:
                raise SkipTest(f"{tool} is not installed (make test-deps)")
        busybox = shutil.which("busybox") or "/bin/busybox"
        if not Path(busybox).exists():
            raise SkipTest("busybox-static is not installed (make test-deps)")
        self.dir = Path(tempfile.mkdtemp(prefix="gw-registry-"))
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        (self.dir / "containers.conf").write_text(CONTAINERS_CONF)
        os.environ["CONTAINERS_CONF"] = str(self.dir / "containers.conf")
        (self.dir / "config.yml").write_text(
            f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {self.dir / 'data'}\n"
            f"  delete:\n    enabled: true\nhttp:\n  addr: {self.address}\n")
        try:
            self.process, self._log = _serve_registry(self.dir / "config.yml", self.port)
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise
        try:
            self._build(busybox)
        except BaseException:
            self.stop()
            raise

    def _build(self, busybox: str) -> None:
        rootfs = self.dir / "rootfs"
        (rootfs / "bin").mkdir(parents=True)
        shutil.copy(busybox, rootfs / "bin" / "busybox")
        for applet in ("sh", "echo", "sleep", "cat", "ls"):
            (rootfs / "bin" / applet).symlink_to("busybox")
        (rootfs / "tmp").mkdir()
        _run(["tar", "-C", str(rootfs), "-cf", str(self.dir / "rootfs.tar"), "."])
        podman = PodmanCli(self.dir / "build")
        try:
            for tag, command in IMAGES.items():
                podman.run("import", "--change", f"CMD {json.dumps(command)}", str(self.dir / "rootfs.tar"),
                           f"localhost/bb:{tag}")
                podman.run("push", "--tls-verify=false", f"localhost/bb:{tag}", f"docker://{self.address}/bb:{tag}")
            podman.run("save", "--format", "oci-archive", "-o", str(self.dir / "bb-2.oci.tar"), "localhost/bb:2")
        finally:
            podman.destroy()
        self.oci_archive = self.dir / "bb-2.oci.tar"

    def with_password(self, user: str, password: str) -> tuple[str, Callable[[], None]]:
        """A second registry serving the same images, behind basic auth; its address and a stopper.

        :raises SkipTest: when Python cannot make a bcrypt hash (the registry needs one).
        """
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                import crypt
                hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))
            except (ImportError, AttributeError, OSError):
                raise SkipTest("no bcrypt for the registry's htpasswd") from None
        if not hashed or not hashed.startswith("$2"):
            raise SkipTest("no bcrypt for the registry's htpasswd")
        port = free_port()
        work = Path(tempfile.mkdtemp(prefix="gw-registry-auth-"))
        (work / "htpasswd").write_text(f"{user}:{hashed}\n")
        (work / "config.yml").write_text(
            f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {self.dir / 'data'}\n"
            f"http:\n  addr: 127.0.0.1:{port}\nauth:\n  htpasswd:\n    realm: gateway-tests\n"
            f"    path: {work / 'htpasswd'}\n")
        try:
            process, log = _serve_registry(work / "config.yml", port)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise

        def stop() -> None:
            _stop_process(process)
            log.close()
            shutil.rmtree(work, ignore_errors=True)

        return f"127.0.0.1:{port}", stop

    def image(self, tag: str) -> str:
        """The reference of one of the test images."""
        return f"{self.address}/bb:{tag}"

    def stop(self) -> None:
        """Stop the registry and delete everything."""
        _stop_process(self.process)
        self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class PodmanCli:
    """podman with its own storage under ``base`` (for setting up and checking, never by the gateway).

    :param base: where its root, runroot and tmpdir live.
    """

    def __init__(self, base: Path) -> None:
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        self.flags = ("--root", str(base / "root"), "--runroot", str(base / "run"), "--tmpdir",
                      str(base / "tmp"), "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs",
                      "--events-backend", "file")

    @property
    def command(self) -> tuple[str, ...]:
        """podman with the global flags, as ``containers.podman_command`` takes it."""
        return ("podman", *self.flags)

    def run(self, *args: str, timeout: float = 60) -> str:
        """Run one podman command; its stdout."""
        return _run([*self.command, *args], timeout=timeout).stdout

    def containers(self) -> list[dict[str, Any]]:
        """Every container, as ``podman ps -a`` lists it."""
        return json.loads(self.run("ps", "-a", "--format", "json") or "[]")

    def images(self) -> list[dict[str, Any]]:
        """Every image."""
        return json.loads(self.run("images", "--format", "json") or "[]")

    def inspect(self, name: str) -> dict[str, Any]:
        """``podman inspect`` of one container."""
        return json.loads(self.run("container", "inspect", name))[0]

    def destroy(self) -> None:
        """Remove every container and image and the storage (best effort, bounded).

        A removed container's ``conmon`` runs ``podman container cleanup`` on this storage
        after the fact, so the storage is deleted only once no process names it any more.
        """
        # (a container left 'stopping' by a stop cut short is stopped first: podman 4.3's forced
        # removal of one forgets it and leaves its process running)
        for args in (("stop", "-a", "-t", "0"), ("rm", "-af", "-t", "0"), ("rmi", "-af")):
            try:
                _run([*self.command, *args], timeout=60)
            except (subprocess.SubprocessError, OSError):
                pass
        deadline = time.monotonic() + 15
        while self._users() and time.monotonic() < deadline:
            time.sleep(0.1)
        shutil.rmtree(self.base, ignore_errors=True)

    def _users(self) -> list[int]:
        """Processes whose command line names this storage (conmon, podman cleanup, the service)."""
        found = []
        marker = str(self.base).encode()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if marker in (entry / "cmdline").read_bytes():
                        found.append(int(entry.name))
                except OSError:
                    continue
        return found
