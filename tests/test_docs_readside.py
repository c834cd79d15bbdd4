"""docs/readside.md is the snapshots' contract: each section names every field of its
snapshot (and of the records it nests), and each row of its field tables names fields the
snapshot has. The admin API, ``/metrics`` and the reports serve these dataclasses as they
are (:func:`gateway.readside.to_jsonable`), so a field the page leaves out is one users see
without a word about it, and one it names that does not exist is a promise the code breaks."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from gateway.apps.snapshot import AppSnapshot, AppsSnapshot
from gateway.broker.snapshot import BrokerSnapshot, CappedClientSnapshot, ClientQueueSnapshot, ListenerSnapshot
from gateway.certinfo import CertificateSnapshot
from gateway.containers.snapshot import ContainersSnapshot
from gateway.degraded import Degraded
from gateway.fleet.snapshot import FleetSnapshot
from gateway.ingest.snapshot import IngestSnapshot
from gateway.journal.snapshot import (CursorSnapshot, DroppedStream, JournalSnapshot, LatencySnapshot, LossCount,
                                     StreamSnapshot)
from gateway.links.snapshot import LinkSnapshot, LinksSnapshot
from gateway.telemetry.snapshot import AccountingSnapshot
from gateway.twin.snapshot import ShadowSyncSnapshot, TwinSnapshot
from gateway.updates.snapshot import ModuleSnapshot, OperationSnapshot

READSIDE = Path(__file__).resolve().parent.parent / "docs" / "readside.md"

#: Each section of the page (by its heading's first word), the snapshot whose fields its
#: table rows are (``None``: a section without a table), and every record whose fields it names.
SECTIONS: dict[str, tuple[type | None, tuple[type, ...]]] = {
    "Broker": (BrokerSnapshot, (BrokerSnapshot, ListenerSnapshot, ClientQueueSnapshot, CappedClientSnapshot,
                                CertificateSnapshot, Degraded)),
    "Journal": (StreamSnapshot, (StreamSnapshot, LatencySnapshot, CursorSnapshot, LossCount, Degraded,
                                 JournalSnapshot, DroppedStream)),
    "Links": (LinkSnapshot, (LinkSnapshot, LinksSnapshot, CertificateSnapshot, Degraded)),
    "Apps": (None, (AppsSnapshot, AppSnapshot)),
    "Updates": (None, (OperationSnapshot, ModuleSnapshot)),
    "Ingest": (IngestSnapshot, (IngestSnapshot,)),
    "Twin": (TwinSnapshot, (TwinSnapshot, ShadowSyncSnapshot, Degraded)),
    "Fleet": (FleetSnapshot, (FleetSnapshot,)),
    "App": (AccountingSnapshot, (AccountingSnapshot, Degraded)),
    "Containers": (ContainersSnapshot, (ContainersSnapshot, Degraded)),
}


def sections() -> dict[str, str]:
    """The text of each ``## <Name> (...)`` section of readside.md, by its first word."""
    text = READSIDE.read_text(encoding="utf-8")
    parts = re.split(r"^## ", text, flags=re.M)[1:]
    return {part.split(None, 1)[0]: part for part in parts}


def named(text: str) -> set[str]:
    """Every name the text writes as code (```name```)."""
    return set(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", text))


def table_fields(text: str) -> list[str]:
    """The names in the first cell of each row of the text's field table."""
    names: list[str] = []
    for line in text.splitlines():
        if line.startswith("| `"):
            names.extend(re.findall(r"`([^`]+)`", line.split("|")[1]))
    return names


def field_names(record: type) -> list[str]:
    """The fields of a snapshot dataclass, in order."""
    return [f.name for f in dataclasses.fields(record)]


class ReadsideDocTests(SynchronousTestCase):
    """Every snapshot field is on the page, and every field the page lists exists."""

    def test_every_section_is_checked(self) -> None:
        """Each snapshot section of the page is one this test knows (a new one is checked too)."""
        self.assertEqual(sorted(name for name, text in sections().items() if "snapshot.py" in text.split("\n")[0]),
                         sorted(SECTIONS))

    def test_every_field_is_documented(self) -> None:
        """Each field of each snapshot and of the records in it is named in its section."""
        texts = sections()
        missing = {f"{section}: {record.__name__}.{name}" for section, (_, records) in SECTIONS.items()
                   for record in records for name in field_names(record) if name not in named(texts[section])}
        self.assertEqual(sorted(missing), [], "readside.md leaves these fields out")

    def test_every_listed_field_exists(self) -> None:
        """Each field a section's table lists is a field of its snapshot."""
        texts = sections()
        tables = {section: (snapshot, table_fields(texts[section]))
                  for section, (snapshot, _) in SECTIONS.items() if snapshot is not None}
        self.assertEqual([section for section, (_, listed) in tables.items() if not listed], [],
                         "readside.md: sections without their field table")
        unknown = {f"{section}: {name}" for section, (snapshot, listed) in tables.items()
                   for name in listed if name not in field_names(snapshot)}
        self.assertEqual(sorted(unknown), [], "readside.md lists fields the snapshots do not have")

    def test_the_status_and_the_previous_run(self) -> None:
        """``side.status()``'s line names every field of ``GatewayStatus`` and ``ServiceState``,
        and "The previous run"'s table is ``PreviousStop``'s fields, in order."""
        from gateway.lastrun import PreviousStop
        from gateway.readside import GatewayStatus, ServiceState

        text = READSIDE.read_text(encoding="utf-8")
        line = next(row for row in text.splitlines() if row.startswith("side.status()"))
        called = set(re.findall(r"[(,=]\s*([a-z_]+)", line))
        self.assertEqual(sorted(set(field_names(GatewayStatus) + field_names(ServiceState)) - called), [])
        previous = re.split(r"^## ", text, flags=re.M)
        run = next(part for part in previous if part.startswith("The previous run"))
        self.assertEqual(table_fields(run), field_names(PreviousStop))
