"""A cloud that lost a shadow (deleted by someone, an emulator restarted) while updates of it
wait in the journal: the cloud ends with the twin's whole state, not with those updates only."""

from __future__ import annotations

import json
from typing import Any

from twisted.logger import capturedLogs, formatEvent

from gateway.mqtt.packets import Publish
from gateway.twin.shadows import CLASSIC
from tests.twin.fakes import HeldReads
from tests.twin.test_service import ROOT, command
from tests.twin.test_shadowrequests import SlowCloud
from tests.twin.test_sync import BASE, ShadowSyncCase


class LostShadowTests(ShadowSyncCase):
    def synced(self) -> SlowCloud:
        """A cloud answering at once, holding the feature ``meter`` and the attributes the twin
        holds, every request of them answered."""
        self.send(command("modify", "/features/meter/properties", {"kwh": 1, "volts": 230, "phase": {"a": 1}}))
        self.send(command("modify", "/attributes/site", "hall"))
        cloud = SlowCloud(self.clock, self.sync, 0.0)
        self.sync.link_connected(cloud)
        self.clock.advance(0)
        self.assertEqual((cloud.reported["meter"], cloud.reported[CLASSIC]), (self.properties(), {"site": "hall"}))
        self.assertEqual(self.sync.reader.pending, [])
        return cloud

    def properties(self) -> Any:
        return self.twin.store.things[ROOT]["features"]["meter"]["properties"]

    def test_a_shadow_lost_while_offline_gets_the_whole_document(self) -> None:
        """The cloud forgot every shadow (an emulator restarted) while the gateway was offline
        and changed a property: the connect's get found no shadow, the correction was skipped
        because the change was pending, and only that change was sent: the cloud ended with
        {"kwh": 2}. What the pending updates leave the cloud without is now journaled after
        them, so it ends with the twin's state; a shadow with nothing pending is corrected
        whole, as before."""
        cloud = self.synced()
        self.sync.link_disconnected()
        cloud.reported.clear()
        cloud.versions.clear()
        self.send(command("modify", "/features/meter/properties/kwh", 2))
        self.send(command("delete", "/features/meter/properties/phase/a"))
        self.sync.link_connected(cloud)
        self.clock.pump([0.0] * 4)
        self.assertEqual(cloud.reported, {"meter": self.properties(), CLASSIC: {"site": "hall"}})
        self.assertEqual(self.properties(), {"kwh": 2, "volts": 230, "phase": {}})
        self.assertEqual(self.sync.reader.pending, [])
        # a connect that finds the shadow as the pending updates leave it adds nothing
        self.sync.link_disconnected()
        self.send(command("modify", "/features/meter/properties/kwh", 3))
        records = len(self.stream.records)
        self.sync.link_connected(cloud)
        self.clock.pump([0.0] * 4)
        self.assertEqual((len(self.stream.records), cloud.reported["meter"]["kwh"]), (records, 3))

    def test_a_new_shadow_made_offline_is_sent_once(self) -> None:
        """A feature made while offline: its get finds no shadow, and its pending update is the
        whole document already; nothing more is journaled."""
        cloud = self.synced()
        self.sync.link_disconnected()
        self.send(command("modify", "/features/fan/properties", {"rpm": 900}))
        records = len(self.stream.records)
        self.sync.link_connected(cloud)
        self.clock.pump([0.0] * 4)
        self.assertEqual((len(self.stream.records), cloud.reported["fan"]), (records, {"rpm": 900}))

    def test_a_get_answered_before_the_first_read_after_a_restart_adds_nothing(self) -> None:
        """After a restart, the connect's gets can be answered before the shadow stream's first
        read from disk is done. A child thing made offline then found no shadow (404) and, the
        stream not read yet, no update of it pending: its whole state was journaled again and
        sent a second time (with version 1); a feature changed offline, found as it was before,
        got its change journaled again too. The correction after a get is now decided once the
        records written before the answer are read: each change goes once, nothing is added."""
        cloud = self.synced()
        self.sync.link_disconnected()
        self.send(command("create", "/", {"attributes": {"a": 1}}, thing=f"{ROOT}:sensor"))
        self.send(command("modify", "/features/meter/properties/kwh", 2))
        records, meter_updates = len(self.stream.records), len(cloud.updates("meter"))
        reads = HeldReads(self.stream.read)
        self.patch(self.stream, "read", reads)
        self.restart()
        cloud.sync = self.sync
        self.sync.link_connected(cloud)
        self.clock.advance(0)  # every get answered; the stream's first read still under way
        self.stream.read = reads.read  # type: ignore[method-assign]
        reads.release()
        self.clock.pump([0.0] * 6)
        self.assertEqual(cloud.reported, {"meter": self.properties(), CLASSIC: {"site": "hall"}, "sensor": {"a": 1}})
        self.assertEqual(([body["state"] for body in cloud.updates("sensor")], len(cloud.updates("meter"))),
                         ([{"reported": {"a": 1}}], meter_updates + 1))
        self.assertEqual((len(self.stream.records), self.sync.reader.pending), (records, []))

    def test_shadows_lost_during_a_restart_are_corrected_when_the_first_read_finds_nothing(self) -> None:
        """The cloud forgot every shadow while the gateway restarted with nothing waiting in
        the stream: the gets are answered 404 while the first read, which finds nothing, is
        under way. The corrections wait for a read begun after the answers (one begun before
        them cannot tell), and go: the cloud ends with the twin's state."""
        cloud = self.synced()
        self.sync.link_disconnected()
        cloud.reported.clear()
        cloud.versions.clear()
        reads = HeldReads(self.stream.read)
        self.patch(self.stream, "read", reads)
        self.restart()
        cloud.sync = self.sync
        self.sync.link_connected(cloud)
        self.clock.advance(0)
        self.stream.read = reads.read  # type: ignore[method-assign]
        reads.release()
        self.clock.pump([0.0] * 4)
        self.assertEqual(cloud.reported, {"meter": self.properties(), CLASSIC: {"site": "hall"}})

    def test_a_shadows_updates_wait_until_its_correction_is_decided(self) -> None:
        """A get answered while the stream is still being read has its correction decided
        once the records written before the answer are read; the shadow's updates waiting meanwhile
        are not sent before that: sent and accepted first, they would no longer be pending,
        and the get's stale state would be corrected with their change again."""
        self.send(command("modify", "/features/meter/properties/kwh", 1))
        self.send(command("modify", "/attributes/site", "hall"))
        reads = HeldReads(self.stream.read)
        self.patch(self.stream, "read", reads)
        self.restart()
        reads.release()  # the first read: both updates; the next, finding nothing, is under way
        self.sync.link_connected(self.connection)
        tokens = {topic: body["clientToken"] for topic, body in self.connection.take()}
        sent: list[tuple[str, dict[str, Any]]] = []

        def accept() -> None:
            for topic, body in self.connection.take():
                sent.append((topic, body))
                self.reply(f"{topic}/accepted", {"clientToken": body["clientToken"], "version": 2})

        self.reply(f"{BASE}/get/accepted", {"clientToken": tokens[f"{BASE}/get"], "state": {}, "version": 1})
        self.send(command("modify", "/attributes/site", "yard"))  # (after the read under way began)
        self.reply(f"{BASE}/name/meter/get/accepted", {"clientToken": tokens[f"{BASE}/name/meter/get"],
                                                        "state": {}, "version": 1})
        accept()  # the classic shadow's update
        accept()
        self.stream.read = reads.read  # type: ignore[method-assign]
        reads.release()
        accept()
        self.assertEqual((len(self.stream.records), [body["state"] for topic, body in sent if "meter" in topic]),
                         (3, [{"reported": {"kwh": 1}}]))

    def test_a_shadow_lost_while_connected_gets_the_whole_document(self) -> None:
        """The cloud lost the shadow while connected, no notice: the next update, with the version
        the gateway knew, is refused with 409 and the get that follows finds no shadow; the
        update went again without a version, and the cloud ended with it only. Now it ends
        with the twin's state."""
        cloud = self.synced()
        cloud.reported.clear()
        cloud.versions.clear()
        self.send(command("modify", "/features/meter/properties/kwh", 2))
        self.clock.pump([0.0] * 6)
        self.assertEqual(cloud.reported["meter"], self.properties())
        self.assertEqual(self.sync.reader.pending, [])

    def test_an_update_answered_404_reads_the_shadow(self) -> None:
        """An update sent with a version answered 404 (the cloud has no such shadow) was refused
        for good: the change was dropped and the cloud kept no shadow. Now the shadow is read,
        as after a 409, and the whole document goes, without a version; one sent without a
        version answered 404 is refused for good, and not read again (no loop)."""
        self.send(command("modify", "/features/meter/properties", {"kwh": 1, "volts": 230}))
        self.connect({"meter": {"state": {"reported": {"kwh": 1, "volts": 230}}, "version": 4}})
        self.assertEqual([body["version"] for _, body in self.connection.take()], [4])
        self.reply(f"{BASE}/name/meter/update/accepted", {"clientToken": "1", "version": 5})
        self.send(command("modify", "/features/meter/properties/kwh", 2))
        (topic, body), = self.connection.take()
        self.assertEqual(body["version"], 5)
        with capturedLogs() as events:
            self.reply(f"{topic}/rejected", {"code": 404, "message": "No shadow exists", "clientToken": "2"})
            self.answer_gets()
        self.assertEqual(self.connection.take(), [(topic, {
            "state": {"reported": {"kwh": 2, "volts": 230}}, "clientToken": "3"})])
        self.assertEqual([formatEvent(e) for e in events], [
            "shadow meter: the cloud has no such shadow any more; reading it before sending again"])
        self.reply(f"{topic}/rejected", {"code": 404, "message": "No shadow exists", "clientToken": "3"})
        for token in ("2", "3"):  # (the merged request's records, one at a time)
            self.assertEqual([body["clientToken"] for _, body in self.connection.take()], [token])
            self.reply(f"{topic}/rejected", {"code": 404, "message": "No shadow exists", "clientToken": token})
        self.assertEqual((self.connection.take(), self.sync.refused, self.sync.reader.pending), ([], 2, []))

    def test_a_shadow_someone_deletes_while_connected_gets_the_whole_document(self) -> None:
        """Someone deletes the shadow while the gateway is connected (AWS announces it on
        delete/accepted): the sync forgot its version and sent the next change without one,
        so the cloud made the shadow again from that change only, and a shadow with no change
        stayed deleted. Now the shadow is read again, and the twin's whole state goes."""
        cloud = self.synced()

        def delete(shadow: str) -> None:
            del cloud.reported[shadow], cloud.versions[shadow]
            topic = f"{BASE}/name/{shadow}/delete/accepted" if shadow else f"{BASE}/delete/accepted"
            self.sync.cloud_message(Publish(topic, json.dumps({"version": 2}).encode(), 1, False, 1, False))

        delete("meter")
        self.send(command("modify", "/features/meter/properties/kwh", 2))
        delete(CLASSIC)  # (nothing of it waits)
        self.clock.pump([0.0] * 6)
        self.assertEqual(cloud.reported, {"meter": self.properties(), CLASSIC: {"site": "hall"}})
        self.assertEqual(self.sync.reader.pending, [])
