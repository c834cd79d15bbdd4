"""README.md's quick tour and docs/install.md's commands are what the gateway takes: every
``gatewayctl`` line parses as shown, the tour's addresses are those of the embedded default
config (``make run``), and the README's ``admin.tcp`` example loads as a drop-in. A tester
copies these lines one by one; one that the gateway refuses breaks the contract."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from gateway import config
from gateway.admin import paths
from gateway.admin.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
INSTALL = ROOT / "docs" / "install.md"


def sh_lines(doc: Path) -> list[str]:
    """The command lines of a page's ``sh`` blocks, without comments and continuations."""
    text = doc.read_text(encoding="utf-8")
    lines: list[str] = []
    for block in re.findall(r"^```sh\n(.*?)^```", text, re.S | re.M):
        for line in block.splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                lines.extend(part.strip() for part in line.split(";") if part.strip())
    return lines


def gatewayctl_lines() -> list[list[str]]:
    """The arguments of every ``gatewayctl`` command of README.md and docs/install.md."""
    found = []
    for doc in (README, INSTALL):
        for line in sh_lines(doc):
            if not re.match(r"(sudo )?\S*gatewayctl ", line):
                continue
            words = shlex.split(line)
            if words and words[0] == "sudo":
                words = words[1:]
            if words and words[0].endswith("gatewayctl"):
                found.append(words[1:])
    return found


class ReadmeTourTests(SynchronousTestCase):
    """The quick tour runs against ``make run``'s gateway as written."""

    def assertShown(self, command: str, text: str) -> None:
        """README.md shows ``command`` (the failure names it, not the whole page)."""
        self.assertTrue(command in text, f"README.md does not show {command!r}")

    def test_every_gatewayctl_line_parses(self) -> None:
        """Each ``gatewayctl`` line of the README and install.md is a command gatewayctl takes
        (a renamed subcommand or option would make the page's line exit 2)."""
        lines = gatewayctl_lines()
        self.assertGreaterEqual(len(lines), 8, lines)
        parser = build_parser()
        for args in lines:
            try:
                parser.parse_args(args)
            except SystemExit as exit:
                self.fail(f"gatewayctl {' '.join(args)}: exits {exit.code}")

    def test_tour_addresses_are_the_default_configs(self) -> None:
        """The broker, ingest, metrics and admin socket the tour talks to are where the
        embedded default config (``conf/gateway.yaml``, what ``make run`` runs) puts them."""
        text = README.read_text(encoding="utf-8")
        settings = config.load(ROOT / "conf" / "gateway.yaml")
        self.assertEqual([listener.endpoint for listener in settings.broker.listeners],
                         ["tcp:1883:interface=127.0.0.1"])
        self.assertShown("mosquitto_pub -h 127.0.0.1 -t telemetry/room1/temp", text)
        self.assertEqual(settings.ingest.endpoint, "tcp:8090:interface=127.0.0.1")
        self.assertShown("http://127.0.0.1:8090/onep:v1/stack/alias", text)
        self.assertEqual(settings.telemetry.metrics_endpoint, "tcp:9883:interface=127.0.0.1")
        self.assertShown("curl -s http://127.0.0.1:9883/metrics", text)
        self.assertEqual((settings.gateway.state_dir, settings.admin.socket), ("./var", ""))
        self.assertEqual(paths.CHECKOUT_SOCKET, "/".join(("var", *paths.DEFAULT_SOCKET_UNDER_STATE)))
        self.assertShown(f"--unix-socket {paths.CHECKOUT_SOCKET} ", text)

    def test_admin_tcp_example_loads(self) -> None:
        """The README's ``admin.tcp`` setting for the status page is one the check takes."""
        match = re.search(r'Set `admin\.tcp: "([^"]+)"`', README.read_text(encoding="utf-8"))
        assert match is not None, "README.md shows no admin.tcp setting"
        directory = Path(self.mktemp())
        (directory / "conf.d").mkdir(parents=True)
        (directory / "gateway.yaml").write_text(f"gateway:\n  state_dir: {directory / 'state'}\n")
        (directory / "conf.d" / "50-site.yaml").write_text(f'admin:\n  tcp: "{match.group(1)}"\n')
        self.assertEqual(config.load(directory / "gateway.yaml").admin.tcp, match.group(1))
