"""Parsing Kanto SoftwareUpdatable requests into update operations."""

from __future__ import annotations

import json
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

    def test_with_both_links_the_https_one_is_used_and_other_fields_are_ignored(self) -> None:
        """An artifact naming an ``HTTP`` and an ``HTTPS`` link is fetched over the ``HTTPS``
        one, and Kanto's fields the gateway does not use (``weight``, ``forced``, a request's
        ``metadata``, ``md5url``) are accepted (docs/updates.md, Requests)."""
        request = kanto_install({})
        request.update({"weight": 5, "forced": True, "metadata": {"a": 1}})
        request["softwareModules"][0]["artifacts"][0]["download"] = {
            "HTTP": {"url": "http://cdn.example/tool.tar.gz", "md5url": "http://cdn.example/tool.md5"},
            "HTTPS": {"url": "https://cdn.example/tool.tar.gz"}}
        operation = parse_request("install", request)
        self.assertEqual(operation.modules[0].artifacts[0].url, "https://cdn.example/tool.tar.gz")

    def test_kantos_sha1_checksum_is_kept(self) -> None:
        """Kanto's ``SHA1`` hash key is a digest the gateway knows."""
        operation = parse_request("install", kanto_install({}))
        self.assertEqual(operation.modules[0].artifacts[0].digests, {"sha1": "a" * 40})


class StatusPayloadTests(SynchronousTestCase):
    """``lastOperation`` carries Kanto's ``softwareModule``: the module its status is about."""

    def operation(self, status: Status, installed: int) -> Operation:
        """A two-module install at ``status`` with ``installed`` modules installed."""
        request = kanto_install({})
        request["softwareModules"].append({**request["softwareModules"][0],
                                           "softwareModule": {"name": "agent", "version": "2.0"}})
        operation = parse_request("install", request)
        operation.status, operation.installed = status, installed
        return operation

    def module_of(self, status: Status, installed: int) -> Any:
        """The ``softwareModule`` of that operation's status."""
        return self.operation(status, installed).status_payload(1.0).get("softwareModule")

    def test_each_step_names_its_module(self) -> None:
        """Downloading names the first module, INSTALLING/INSTALLED the one being/just
        installed, FINISHED_SUCCESS the last, a failure the module that failed; the list of
        every module stays beside it."""
        tool, agent = {"name": "tool", "version": "1.0"}, {"name": "agent", "version": "2.0"}
        self.assertEqual([self.module_of(Status.DOWNLOADING, 0), self.module_of(Status.INSTALLING, 0),
                          self.module_of(Status.INSTALLED, 1), self.module_of(Status.INSTALLING, 1),
                          self.module_of(Status.INSTALLED, 2), self.module_of(Status.FINISHED_SUCCESS, 2),
                          self.module_of(Status.FINISHED_ERROR, 1)],
                         [tool, tool, tool, agent, agent, agent, agent])
        payload = self.operation(Status.STARTED, 0).status_payload(1.0)
        self.assertEqual(payload["softwareModules"], [tool, agent])


#: The final statuses of Kanto's SoftwareUpdatable (eclipse-kanto/software-update,
#: hawkbit/lib_status.go): a backend that maps them takes an operation for ended on these only.
KANTO_FINAL = ("FINISHED_CANCELED", "FINISHED_ERROR", "FINISHED_SUCCESS", "FINISHED_WARNING",
               "FINISHED_REJECTED")


class KantoStatusTests(SynchronousTestCase):
    """The statuses published are Kanto's, also for a cancel, and a record an earlier version
    wrote with its own ``CANCELED`` still reads as ended."""

    def test_a_canceled_operation_ends_in_kantos_finished_canceled(self) -> None:
        """A canceled operation is published FINISHED_CANCELED (it was CANCELED, which no Kanto
        backend knows: the operation never ended for it), and every final status is one of Kanto's."""
        operation = parse_request("install", kanto_install({}))
        operation.status = Status.FINISHED_CANCELED
        self.assertEqual(operation.status_payload(1.0)["status"], "FINISHED_CANCELED")
        self.assertEqual([s.value for s in Status if s.final and s.value not in KANTO_FINAL], [])

    def test_an_earlier_versions_canceled_record_is_read_as_finished_canceled(self) -> None:
        """An operation record written with ``"status": "CANCELED"`` loads as FINISHED_CANCELED,
        ended (it is not resumed) and published as Kanto's status."""
        record = parse_request("install", kanto_install({})).to_json()
        record["status"] = "CANCELED"
        operation = Operation.from_json(record)
        self.assertEqual((operation.status, operation.status.final), (Status.FINISHED_CANCELED, True))
        self.assertEqual(operation.status_payload(1.0)["status"], "FINISHED_CANCELED")

    def test_a_canceled_operations_record_keeps_the_word_earlier_builds_read(self) -> None:
        """The record of a FINISHED_CANCELED operation says ``CANCELED`` on disk, and reads back as
        FINISHED_CANCELED: a build up to 47daafe1, run again by gateway-selfupdate's rollback, knew
        no FINISHED_CANCELED and set such a record aside as damaged (``skipping unreadable
        operation ...: 'FINISHED_CANCELED' is not a valid Status``), against install.md's "no file
        is set aside as damaged"."""
        operation = parse_request("install", kanto_install({}))
        operation.status = Status.FINISHED_CANCELED
        record = operation.to_json()
        self.assertEqual(record["status"], "CANCELED")
        self.assertEqual(Operation.from_json(json.loads(json.dumps(record))).status, Status.FINISHED_CANCELED)
