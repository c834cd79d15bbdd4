"""Parsing Kanto SoftwareUpdatable requests into update operations."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from gateway.updates.errors import InvalidOperation
from gateway.updates.operation import Operation, Status, parse_request


def kanto_install(module_extra: dict[str, Any]) -> dict[str, Any]:
    """An ``install`` value as Kanto's SoftwareUpdatable model types it (``SoftwareModuleAction``
    spells its metadata ``metaData``), with ``module_extra`` added to its one module."""
    module: dict[str, Any] = {
        "softwareModule": {"name": "tool", "version": "1.0"},
        "artifacts": [{"filename": "tool.tar.gz", "download": {"HTTPS": {"url": "https://cdn.example/tool.tar.gz"}},
                       "checksums": {"SHA1": "a" * 40}, "size": 10}],
    }
    module.update(module_extra)
    return {"correlationId": "kanto-1", "softwareModules": [module]}


class ParseRequestTests(SynchronousTestCase):
    """What :func:`parse_request` makes of the messages a Kanto backend sends."""

    def test_the_target_is_read_from_kantos_metaData(self) -> None:
        """A module's ``metaData`` (Kanto's ``SoftwareModuleAction`` key) names its target: a
        ``.tar.gz`` artifact with ``metaData.target: script`` is a script, not an app."""
        operation = parse_request("install", kanto_install({"metaData": {"target": "script"}}))
        self.assertEqual(operation.modules[0].target, "script")

    def test_lowercase_metadata_is_still_read(self) -> None:
        """``metadata``, as the gateway's earlier docs spelled it, still names the target."""
        operation = parse_request("install", kanto_install({"metadata": {"target": "container"}}))
        self.assertEqual(operation.modules[0].target, "container")

    def test_a_wrong_metaData_target_is_named_with_kantos_key(self) -> None:
        """An unknown target in ``metaData`` is refused naming ``metaData.target``."""
        with self.assertRaises(InvalidOperation) as raised:
            parse_request("install", kanto_install({"metaData": {"target": "firmware"}}))
        self.assertIn("softwareModules[0].metaData.target", str(raised.exception))

    def test_kantos_sha1_checksum_is_kept(self) -> None:
        """Kanto's ``SHA1`` hash key is a digest the gateway knows."""
        operation = parse_request("install", kanto_install({}))
        self.assertEqual(operation.modules[0].artifacts[0].digests, {"sha1": "a" * 40})


class StatusTests(SynchronousTestCase):
    """The statuses are the values of Kanto's SoftwareUpdatable model."""

    def test_a_cancel_ends_in_kantos_finished_canceled(self) -> None:
        """Kanto has no ``CANCELED`` status: a canceled operation ends ``FINISHED_CANCELED``,
        a final status."""
        self.assertEqual(Status.FINISHED_CANCELED.value, "FINISHED_CANCELED")
        self.assertTrue(Status.FINISHED_CANCELED.final)

    def test_a_record_written_as_canceled_reads_as_finished_canceled(self) -> None:
        """An operation persisted as ``CANCELED`` (before the gateway used Kanto's value) is
        read back ``FINISHED_CANCELED``, and written back with Kanto's value."""
        record = Operation("op-1", "install", [], Status.STARTED).to_json()
        record["status"] = "CANCELED"
        operation = Operation.from_json(record)
        self.assertEqual(operation.status, Status.FINISHED_CANCELED)
        self.assertEqual(operation.to_json()["status"], "FINISHED_CANCELED")
