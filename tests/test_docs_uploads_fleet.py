"""The examples of docs/uploads.md and docs/fleet.md are what the gateway takes and sends: the
pages' JSON and YAML blocks parse, the ``start`` example is a start the gateway can carry out,
the ``request`` and ``lastUpload`` examples have the shape of what it publishes, and the
fleet's example configuration loads."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from gateway import config
from gateway.uploads.azure import AzureBlob
from gateway.uploads.choice import make_provider
from gateway.uploads.settings import UploadsSettings
from tests.uploads.fakes import body, fake_service

DOCS = Path(__file__).resolve().parent.parent / "docs"


def blocks(page: str, language: str) -> list[str]:
    """The fenced ``language`` blocks of ``docs/<page>``, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```", (DOCS / page).read_text(), re.M | re.S)


def shape(value: Any) -> Any:
    """``value`` with its leaves replaced by their JSON type: what two examples share when
    their values differ (a list by the shape of its first item)."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return type(value).__name__


class UploadsExampleTests(SynchronousTestCase):
    """docs/uploads.md's three JSON examples: a request, a start, a lastUpload status."""

    def setUp(self) -> None:
        self.request, self.start, self.status = (json.loads(text) for text in blocks("uploads.md", "json"))

    def test_the_start_example_is_a_usable_azure_start(self) -> None:
        """The cloud's ``start`` of the example names a provider the gateway builds."""
        settings = UploadsSettings()
        provider = make_provider(self.start["options"], object(), settings.checksum, settings.allow_http,
                                 settings.azure_block_threshold, settings.azure_block_size)
        self.assertIsInstance(provider, AzureBlob)

    def test_the_request_and_status_examples_are_what_the_gateway_publishes(self) -> None:
        """A trigger with ``checksum`` on and the example's ``start`` answered: the outbox
        request and the SUCCESS status have the examples' keys and types; the start's
        ``info.ticket`` is the status's ``info``."""
        files = Path(self.mktemp())
        files.mkdir()
        (files / "sensor.log").write_bytes(b"x" * 1000)
        service, watcher, _, sends = fake_service(Path(self.mktemp()), UploadsSettings(
            files=(str(files / "*.log"),), checksum=True))
        self.successResultOf(service.startService())
        self.addCleanup(lambda: service.running and service.stopService())
        self.assertEqual(self.successResultOf(service.handle("trigger", body({"correlationId": "diag-7"}))), (204, {}))
        [request] = [value for topic, value, _ in watcher.messages if topic == "edge/gateway/uploads/request"]
        self.assertEqual(shape(request), shape(self.request))
        self.assertEqual(sorted(request["value"]["options"]), sorted(self.request["value"]["options"]))
        self.assertEqual(self.successResultOf(service.handle("start", body(self.start))), (204, {}))
        sends[-1][2].callback(None)
        status = watcher.statuses()[-1]
        self.assertEqual(shape(status), shape(self.status))
        self.assertEqual((status["state"], status["info"]), ("SUCCESS", self.status["info"]))


class FleetExampleTests(SynchronousTestCase):
    """docs/fleet.md's configuration example."""

    def test_the_joining_example_loads(self) -> None:
        """The ``fleet:`` block of "Joining a fleet" loads as it is (its token file made)."""
        [example] = [text for text in blocks("fleet.md", "yaml") if text.startswith("fleet:")]
        token = Path(self.mktemp())
        token.write_text("a-token\n")
        path = Path(self.mktemp())
        path.write_text(example.replace("/etc/gateway/hawkbit.token", str(token)))
        fleet = config.load(path).fleet
        self.assertEqual((fleet.enabled, fleet.base_url, fleet.tenant, fleet.controller_id, fleet.auth),
                         (True, "https://hawkbit.example.com", "DEFAULT", "{device}", "TargetToken"))
