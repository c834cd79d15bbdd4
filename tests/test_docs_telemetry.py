"""docs/telemetry.md's metrics table is the ``/metrics`` contract: every metric it lists is on
the page the collector renders, with the type and the label names the table gives, and every
``gateway_*`` family on the page is in the table. Dashboards and alerts are written from the
table, so a metric renamed, retyped or relabelled in the code alone breaks them silently."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from types import SimpleNamespace
from typing import get_args

from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase

from gateway.broker.snapshot import CappedClientSnapshot, ClientQueueSnapshot
from gateway.degraded import Degraded
from gateway.journal.losses import LossReason
from gateway.links.snapshot import LinksSnapshot
from gateway.telemetry.metrics import make_registry, render_metrics
from tests.fleet.samples import FAILING_FLEET
from tests.telemetry.fakes import FakeReadSide

TELEMETRY = Path(__file__).resolve().parent.parent / "docs" / "telemetry.md"

#: Label names prometheus-client adds to a family's samples on its own.
IMPLIED_LABELS = frozenset({"le", "quantile"})


def documented() -> dict[str, tuple[str, frozenset[str]]]:
    """Each metric of the page's table: its type (the type cell's first word) and label names."""
    rows: dict[str, tuple[str, frozenset[str]]] = {}
    for line in TELEMETRY.read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.split("|")[1:-1]]
        if len(cells) >= 4 and re.fullmatch(r"`gateway_[a-z0-9_]+`", cells[0]):
            rows[cells[0].strip("`")] = (cells[1].split()[0], frozenset(re.findall(r"`([a-z_]+)`", cells[2])))
    return rows


def rendered() -> dict[str, tuple[str, frozenset[str]]]:
    """Each ``gateway_*`` metric on a page where every family has samples (a client whose queue
    dropped messages and one refused subscriptions, a checkpoint saved, a journal stream refusing appends, a link
    whose cursor is not saved and one taken over, the twin's shadow sync and a write of its things, the fleet, published
    reports):
    its type and label names, under the name a scrape shows (a counter's with ``_total``)."""
    readside = FakeReadSide()
    broker, journal, links = readside.broker(), readside.journal(), readside.links()
    failing = Degraded("min-free-disk", "1 bytes free on the disk, min_free_bytes is 2", 1796211823.0, 4)
    readside.broker = lambda: dataclasses.replace(  # type: ignore[method-assign]
        broker, dropping_clients=(ClientQueueSnapshot("slow", False, 1000, 4096, 3, 4),),
        capped_clients=(CappedClientSnapshot("greedy", True, 100, 5),), checkpoint_save_s=0.5,
        checkpoint_bytes=4096)
    readside.journal = lambda: dataclasses.replace(  # type: ignore[method-assign]
        journal, streams=tuple(dataclasses.replace(stream, refusing=failing, refused_appends=4)
                               for stream in journal.streams), refusing=failing)
    readside.links = lambda: LinksSnapshot(tuple(  # type: ignore[method-assign]
        dataclasses.replace(link, cursor_failing=failing, taken_over=failing) for link in links.links), failing)
    assert readside.twin_snapshot is not None
    readside.twin_snapshot = dataclasses.replace(readside.twin_snapshot, save_s=0.25, save_bytes=2048)
    readside.fleet_snapshot = FAILING_FLEET
    telemetry = SimpleNamespace(published={"device_info": 1}, incomplete={"device_info": 0})
    body, _ = render_metrics("", make_registry(readside, telemetry))  # type: ignore[arg-type]
    families: dict[str, tuple[str, frozenset[str]]] = {}
    for family in text_string_to_metric_families(body.decode()):
        if family.name.startswith("gateway_"):
            name = family.name + ("_total" if family.type == "counter" else "")
            labels = frozenset(key for sample in family.samples for key in sample.labels) - IMPLIED_LABELS
            families[name] = (family.type, labels)
    return families


class MetricsTableTests(SynchronousTestCase):
    """The table and the page name the same metrics, types and labels."""

    def test_every_documented_metric_is_on_the_page_as_documented(self) -> None:
        """Each metric the table lists is rendered with the table's type and label names."""
        page = rendered()
        wrong = {name: (row, page.get(name)) for name, row in documented().items() if page.get(name) != row}
        self.assertEqual(wrong, {}, "telemetry.md (type, labels) against the page's")

    def test_every_metric_on_the_page_is_documented(self) -> None:
        """Each ``gateway_*`` metric on the page is a row of the table."""
        self.assertEqual(sorted(set(rendered()) - set(documented())), [])

    def test_the_table_is_read(self) -> None:
        """The parsing finds the table (a reformatted page fails here, not silently)."""
        rows = documented()
        self.assertEqual(rows["gateway_service_degraded"], ("gauge", frozenset({"service"})))
        self.assertEqual(rows["gateway_journal_fsync_seconds"], ("histogram", frozenset({"stream"})))
        self.assertEqual(rows["gateway_start_time_seconds"], ("gauge", frozenset()))


class LabelValuesTests(SynchronousTestCase):
    """The table names every value a label takes where it lists them."""

    def test_every_loss_reason_is_named(self) -> None:
        """``gateway_journal_lost_records_total``'s row names each reason a loss is counted under
        (``dropped`` too: a stream the operator dropped with ``force`` keeps its loss on the page)."""
        row = next(line for line in TELEMETRY.read_text(encoding="utf-8").splitlines()
                   if line.startswith("| `gateway_journal_lost_records_total` |"))
        self.assertEqual(sorted(set(get_args(LossReason)) - set(re.findall(r"`([a-z-]+)`", row))), [])


class ServiceAccessTests(SynchronousTestCase):
    """The docs reach a running gateway's services where the tree keeps them."""

    def test_every_root_parts_name_is_a_part(self) -> None:
        """Each ``root.parts.<name>`` the docs give (telemetry.md's ``TelemetryService``,
        readside.md's ``ReadSide``) is a field of :class:`gateway.tree.Parts`, and no page
        reaches a service as ``root.<name>`` (the tree has no such attributes: ``root.telemetry``
        was an AttributeError)."""
        from gateway.tree import Parts

        fields = {field.name for field in dataclasses.fields(Parts)}
        named: set[str] = set()
        direct: set[str] = set()
        for page in sorted(TELEMETRY.parent.glob("*.md")):
            text = page.read_text(encoding="utf-8")
            named.update(re.findall(r"`root\.parts\.([a-z_]+)", text))
            direct.update(f"{page.name}: root.{name}" for name in re.findall(r"`root\.([a-z_]+)`", text))
        self.assertIn("telemetry", named)
        self.assertEqual(sorted(named - fields), [])
        self.assertEqual(sorted(direct), [])


#: ``gateway_*`` words of the docs that are not metrics: the fleet's attribute of the gateway's version.
NOT_METRICS = frozenset({"gateway_version"})


class OtherPagesTests(SynchronousTestCase):
    """The metric names every page gives are the table's: a page that names a metric the gateway
    does not have (renamed, or never made) sends a dashboard or an alert after nothing."""

    def test_every_metric_named_anywhere_is_in_the_table(self) -> None:
        """Each ``gateway_*`` name of README.md and docs/*.md is a metric of the table, one of a
        histogram's or summary's series (``_bucket``, ``_count``, ``_sum``), or the start of
        the table's names (``gateway_fleet_*``, ``grep '^gateway_broker'``); not a file's name
        (``gateway_0.1.0_amd64.deb``, ``gateway_commands.py``, ``gateway_apps_<tag>``)."""
        table = set(documented())
        unknown = set()
        for page in [TELEMETRY.parent.parent / "README.md", *sorted(TELEMETRY.parent.glob("*.md"))]:
            text = page.read_text(encoding="utf-8")
            for match in re.finditer(r"\bgateway_[a-z][a-z0-9_]*(?![a-z0-9_.<])", text):
                name = match.group(0)
                series = re.sub(r"_(bucket|count|sum)$", "", name)
                if not ({name, series} & table or any(metric.startswith(name) for metric in table)
                        or name in NOT_METRICS):
                    unknown.add(f"{page.name}: {name}")
        self.assertEqual(sorted(unknown), [])
