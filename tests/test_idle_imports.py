"""The idle footprint: what building the default gateway imports, and what it leaves for later.

Every module an idle gateway loads stays resident (docs/benchmarks.md, idle footprint):
services that are off, HTTP clients nobody uses yet and the admin API's and ingest's
twisted.web.server are imported where they are first needed, not by ``gateway.tree``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import TestCase

ROOT = Path(__file__).resolve().parent.parent

#: Builds the tree from the embedded default config (state in argv[1]) on the asyncio reactor
#: without running it, and prints every module loaded.
BUILD = """
import json, sys
from pathlib import Path
from gateway import config as gateway_config, logbridge
from gateway.tap import install_reactor
reactor, loop = install_reactor()
from gateway.tree import build_service
text = (Path(sys.argv[2]) / "conf" / "gateway.yaml").read_text()
path = Path(sys.argv[1]) / "gateway.yaml"
path.write_text(text.replace("state_dir: ./var", f"state_dir: {Path(sys.argv[1]) / 'state'}"))
config = gateway_config.load(path)
build_service(config, reactor, loop=loop)
logbridge.install(config.gateway.log_level)  # (as tap.py does once the tree is built)
print(json.dumps(sorted(sys.modules)))
"""

#: Not imported by a default gateway that nobody has called yet.
LAZY = (
    "twisted.web.server", "gateway.admin.api", "gateway.admin.router",  # the first request
    "twisted.web.client", "treq",  # HTTP links, containers, downloads, uploads
    "twisted.internet.testing", "twisted.trial.unittest",  # never outside tests
    "gateway.containers.service", "gateway.fleet.wiring",  # off by default
    "gateway.links.httplink", "gateway.links.mqtt",  # no link configured
    "twisted.application.internet", "xml.etree.ElementTree",  # retries, S3/Azure answers
    "gateway.twin.syncservice",  # no shadow link
    "tarfile", "gateway.apps.installer", "gateway.updates.job", "gateway.updates.swu.install",  # installs, bundles
    "gateway.updates.rollback", "gateway.updates.detached_run",  # the self-update unit's side
    "gateway.admin.statuspage", "gateway.admin.tables",  # the status page's first request
    "gateway.links.endpoint", "gateway.tlsverify",  # no link; the first HTTPS connection
    "txaio", "autobahn",  # no WebSocket listener or link
)


class IdleImportsTests(TestCase):
    """Building the default service tree in a fresh interpreter."""

    timeout = 60

    def modules(self) -> set[str]:
        work = Path(self.mktemp()).resolve()
        work.mkdir(parents=True)
        out = subprocess.run([sys.executable, "-c", BUILD, str(work), str(ROOT)], check=True,
                             capture_output=True, text=True, timeout=50, cwd=ROOT)
        return set(json.loads(out.stdout.strip().splitlines()[-1]))

    def test_default_tree_leaves_lazy_modules_unloaded(self) -> None:
        """The default tree (admin API, ingest, twin, uploads, updates on; containers, fleet,
        links off) loads none of the modules only a request or another service needs."""
        modules = self.modules()
        self.assertIn("gateway.admin.service", modules)  # the tree was really built
        self.assertIn("gateway.ingest.service", modules)
        self.assertEqual(sorted(name for name in LAZY if name in modules), [])
