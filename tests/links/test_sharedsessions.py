"""Two MQTT links on one broker with one client id are told at load, not refused (docs/links.md)."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from gateway import config as gateway_config
from gateway.admin.cli import check_config
from gateway.links.service import LinksService
from gateway.links.settings import LinkSettings, LinksSettings
from gateway.links.sharedsessions import broker_address, shared_sessions
from gateway.tap import Options
from tests.links.memory import MemoryJournal
from tests.links.test_service import RecordingBus
from tests.logevents import capture_log_events

#: The warning for two links left on the default endpoint and client id, on device ``gateway``.
DEFAULT_PAIR = (
    "links cloud and backup connect to the same broker 127.0.0.1:1883 with the same client id 'gateway': a broker "
    "keeps one connection per client id, so each link's connection closes the one connected before it, at every "
    "reconnect, for ever, and each link then warns that its session is taken over; give each link its own "
    "client_id (links.md), or its own endpoint where it is meant for another cloud")

TWO_LINKS_YAML = """\
links:
  links:
    cloud: {}
    backup: {endpoint: "tcp:127.0.0.1:1883"}
"""


class SharedSessionTests(SynchronousTestCase):
    """Two links with the same endpoint and client id (both default to ``{device}``) were
    accepted without a word; the cloud then closed one whenever the other connected, and the
    takeover warning blamed two gateways."""

    def test_links_on_one_broker_with_one_client_id_are_one_group(self) -> None:
        """Links whose endpoints name one broker (spelt differently: keywords or positions, a
        host's case and final dot, tls:'s default port) and whose client ids come out alike are
        one group; a client id or a broker of its own, or an empty client id, is none."""
        links = {
            "a": LinkSettings(endpoint="tls:host=Cloud.Example.com.", client_id="{tenant}-{device}"),
            "b": LinkSettings(endpoint="tls:host=cloud.example.com:port=8883", client_id="t-box"),
            "c": LinkSettings(endpoint="tls:host=cloud.example.com:port=8883", client_id="other"),
            "d": LinkSettings(endpoint="tls:host=cloud.example.com:port=443", client_id="t-box"),
            "e": LinkSettings(endpoint="tcp:host=127.0.0.1:port=1883", client_id="", clean_session=True),
            "f": LinkSettings(endpoint="tcp:127.0.0.1:1883", client_id="", clean_session=True),
        }
        [shared] = shared_sessions(links, "t", "box")
        self.assertEqual((shared.links, shared.broker, shared.client_id), (("a", "b"), "cloud.example.com:8883", "t-box"))
        self.assertEqual(broker_address("tcp:host=\\:\\:1:port=1883"), "[::1]:1883")
        self.assertEqual(broker_address("unix:path=/run/cloud.sock"), "unix:path=/run/cloud.sock")

    def test_the_links_warn_once_at_start_and_name_each_other_when_taken_over(self) -> None:
        """The start logs one warning naming both links, the broker, the id and what happens;
        each link's takeover warning names the other link, not two gateways."""
        events = capture_log_events(self)
        links = {"cloud": LinkSettings(loss_topic=None), "backup": LinkSettings(loss_topic=None)}
        service = LinksService(LinksSettings(links=links), MemoryReactorClock(), RecordingBus(), MemoryJournal(),
                               identity=("default", "box-17"))
        service.startService()
        self.addCleanup(service.stopService)
        warnings = [formatEvent(e) for e in events if e.get("log_level") == LogLevel.warn]
        self.assertEqual(warnings, [DEFAULT_PAIR.replace("'gateway'", "'box-17'")])
        self.assertEqual(service.links["cloud"].takeovers.shares_with, ("backup",))
        self.assertEqual(service.links["backup"].takeovers.shares_with, ("cloud",))

    def test_check_config_prints_the_warning_and_passes(self) -> None:
        """``twistd gateway --check-config`` and ``gatewayctl check-config`` print the warning
        and exit 0: the configuration is valid (a second route to one cloud may be meant)."""
        path = Path(self.mktemp())
        path.write_text(TWO_LINKS_YAML)
        self.assertEqual(gateway_config.load(path).warnings(), [DEFAULT_PAIR])
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        with self.assertRaises(SystemExit) as exited:
            Options().parseOptions(["--config", str(path), "--check-config"])
        self.assertEqual(exited.exception.code, 0)
        self.assertEqual(err.getvalue(), f"gateway: warning: {DEFAULT_PAIR}\n")
        self.assertEqual(check_config(str(path)), 0)
        self.assertEqual(err.getvalue().splitlines()[1:], [f"warning: {DEFAULT_PAIR}"])
        self.assertIn("configuration OK", out.getvalue())

    def test_check_config_json_carries_the_warning(self) -> None:
        """``gatewayctl check-config --json`` gives the warnings as ``POST /config/check`` does,
        ``"warnings": [...]`` beside ``valid`` and ``errors``; it printed neither them nor the
        lines, so a script reading its JSON never learnt of them."""
        path = Path(self.mktemp())
        path.write_text(TWO_LINKS_YAML)
        out, err = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", out)
        self.patch(sys, "stderr", err)
        self.assertEqual(check_config(str(path), as_json=True), 0)
        self.assertEqual((json.loads(out.getvalue()), err.getvalue()),
                         ({"valid": True, "errors": [], "warnings": [DEFAULT_PAIR], "path": str(path)}, ""))
