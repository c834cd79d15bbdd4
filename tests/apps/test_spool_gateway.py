"""A real gateway (``twistd gateway``) installs a package dropped into its spool as soon as it
arrives (inotify), not at the next ``apps.spool_interval``."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.python.runtime import platform
from twisted.trial.unittest import TestCase

from tests.apps.packages import gwe_package
from tests.apps.realtime import wait_until
from tests.gatewayprocess import spawn_gateway
from tests.ports import free_port


class SpoolGatewayTests(TestCase):
    """A gateway whose spool interval is five minutes."""

    if not platform.supportsINotify():
        skip = "inotify is Linux's"

    timeout = 90

    @inlineCallbacks
    def test_a_dropped_package_is_installed_without_waiting_for_the_interval(self) -> Any:
        """A package renamed into incoming/ is installed within seconds, with spool_interval
        300: the spool is watched, not only looked at every interval."""
        work = Path(self.mktemp()).resolve()
        work.mkdir(parents=True)
        port = free_port()
        config = work / "gateway.yaml"
        config.write_text(
            f"gateway:\n  state_dir: {work / 'state'}\n"
            f"broker:\n  listeners:\n    default:\n      endpoint: 'tcp:{port}:interface=127.0.0.1'\n"
            "  plugins:\n    amqtt.plugins.authentication.AnonymousAuthPlugin: {allow_anonymous: true}\n"
            "apps:\n  spool_interval: 300\n  health_window: 0.5\n"
            "telemetry:\n  metrics_endpoint: ''\ningest:\n  enabled: false\n")
        gateway = spawn_gateway(self, reactor, "--nodaemon", "--pidfile=", "gateway", "--config", str(config))
        self.addCleanup(lambda: (work / "gateway.log").write_bytes(gateway.output))
        yield gateway.ready.addTimeout(30, reactor)
        # (the spool is made and watched just after the start line, in the gateway's next steps:
        # on a loaded machine this test may read the line before they ran)
        yield wait_until((work / "state" / "incoming").is_dir, 20, what="the spool made")
        package = gwe_package(work, "drop", "1.0", "import time\ntime.sleep(3600)\n")
        done = work / "state" / "incoming" / "done" / package.name
        dropped = time.monotonic()
        os.rename(package, work / "state" / "incoming" / package.name)
        yield wait_until(done.exists, 20, what="the package installed and filed in done/")
        self.assertLess(time.monotonic() - dropped, 20)
        self.assertTrue((work / "state" / "incoming" / "done" / f"{package.name}.log").read_text()
                        .startswith("installed"))
        gateway.transport.signalProcess("TERM")
        yield gateway.ended.addTimeout(30, reactor)
