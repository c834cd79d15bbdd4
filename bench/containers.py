"""Containers: install-to-RUNNING time, the gateway's RSS with 10 containers, idle CPU.

Runs the gateway's AppsService + ContainersService in this process on the asyncio reactor,
with a real podman (its own storage under a temp dir, started by the service) and a real
docker-registry on 127.0.0.1 holding a busybox image (tests/containers/world.py builds both).

  * install time: from ``install()`` to the result (pulled, created, started, RUNNING through
    the health window set to 0): the first install pulls the image, the others find it local;
  * RSS: this process's VmRSS before the service starts and with 10 containers supervised,
    and the RSS of the ``podman system service`` it started;
  * idle CPU: this process's user+system time over ``--idle`` seconds with the 10 containers
    running and nothing happening (no polling: only the event stream is open).

Prints a table and writes bench/results/containers.json.

    .venv/bin/python bench/containers.py [--idle 60]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

RESULTS = Path(__file__).parent / "results" / "containers.json"


def rss_kib(pid: str = "self") -> int:
    """A process's resident set size in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--idle", type=float, default=60.0, help="seconds of idle CPU measurement")
    parser.add_argument("--count", type=int, default=10, help="containers to supervise")
    args = parser.parse_args()

    from twisted.internet import asyncioreactor

    asyncioreactor.install()
    from twisted.internet import reactor
    from twisted.internet.defer import ensureDeferred
    from twisted.internet.task import deferLater

    from gateway.apps.service import AppsService
    from gateway.apps.settings import AppsSettings
    from gateway.containers.description import ContainerDescription
    from gateway.containers.service import ContainersService
    from gateway.containers.settings import ContainersSettings
    from tests.containers.world import PodmanCli, Registry

    registry = Registry()
    short = Path(tempfile.mkdtemp(prefix="gw-podman-"))
    podman = PodmanCli(short)
    state = Path(tempfile.mkdtemp(prefix="gw-bench-"))
    result: dict[str, object] = {}

    async def run() -> None:
        rss_before = rss_kib()
        apps_settings = AppsSettings(health_window=0.0)
        apps = AppsService(apps_settings, state, reactor, "tcp:127.0.0.1:1883")
        settings = ContainersSettings(enabled=True, socket=str(short / "api.sock"), podman_command=podman.command,
                                      insecure_registries=(registry.address,))
        containers = ContainersService(settings, apps_settings, state, reactor, apps.writer,
                                       taken=apps.control.is_program)
        apps.add_kind(containers.operations)
        await apps.startService()
        await containers.startService()
        try:
            times = []
            for i in range(args.count):
                description = ContainerDescription(image=registry.image("1"), network_mode="none",
                                                   startsecs=0.0, stop_timeout=1)
                began = time.monotonic()
                outcome = await containers.operations.install(f"bench{i}", "1", description)
                times.append(time.monotonic() - began)
                assert outcome.ok, outcome
            await deferLater(reactor, 2.0, lambda: None)
            rss_with = rss_kib()
            podman_pid = containers.podman.process.pid if containers.podman is not None else None
            rss_podman = rss_kib(str(podman_pid)) if podman_pid else 0
            cpu0, wall0 = time.process_time(), time.monotonic()
            events0 = containers.supervisor.events_seen
            await deferLater(reactor, args.idle, lambda: None)
            cpu = time.process_time() - cpu0
            wall = time.monotonic() - wall0
            running = sum(1 for s in containers.operations.statuses() if s.state.value == "RUNNING")
            result.update(
                date=datetime.now().isoformat(timespec="seconds"), containers=args.count, running=running,
                install_first_s=round(times[0], 3),
                install_cached_median_s=round(sorted(times[1:])[len(times[1:]) // 2], 3) if len(times) > 1 else None,
                install_cached_max_s=round(max(times[1:]), 3) if len(times) > 1 else None,
                rss_before_mib=round(rss_before / 1024, 1), rss_with_mib=round(rss_with / 1024, 1),
                podman_service_rss_mib=round(rss_podman / 1024, 1),
                idle_seconds=round(wall, 1), idle_cpu_percent=round(100 * cpu / wall, 3),
                idle_events=containers.supervisor.events_seen - events0)
        finally:
            for i in range(args.count):
                try:
                    await containers.operations.stop(f"bench{i}")
                except Exception:
                    pass
            await containers.stopService()
            await apps.stopService()

    def done(_: object) -> None:
        reactor.stop()

    reactor.callWhenRunning(lambda: ensureDeferred(run()).addBoth(
        lambda r: (print(r) if r is not None else None, done(r))))
    try:
        reactor.run()
    finally:
        podman.destroy()
        registry.stop()
        import shutil
        shutil.rmtree(state, ignore_errors=True)
    if not result:
        sys.exit("benchmark failed")
    rows = [("install -> RUNNING, first (pulls the image)", f"{result['install_first_s']} s"),
            ("install -> RUNNING, image local (median / max)",
             f"{result['install_cached_median_s']} s / {result['install_cached_max_s']} s"),
            ("gateway RSS before / with containers", f"{result['rss_before_mib']} / {result['rss_with_mib']} MiB"),
            ("podman system service RSS (started by the gateway)", f"{result['podman_service_rss_mib']} MiB"),
            (f"gateway CPU idle over {result['idle_seconds']} s with {result['running']} running",
             f"{result['idle_cpu_percent']} %  ({result['idle_events']} events)")]
    for what, value in rows:
        print(f"{what:<58} {value}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
