"""A shadow's updates waiting in the stream merged into one request: the backlog of a shadow
changing faster than the cloud answers stays bounded; RFC 7396 composition, the document cap,
409s, refusals and timeouts of a request standing for several records."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent

from gateway.mqtt.packets import Publish
from gateway.twin import shadows
from gateway.twin.document import merge_patch
from gateway.twin.sync import ShadowSync
from tests.twin.test_service import ROOT, command
from tests.twin.test_sync import BASE, ShadowSyncCase


class SlowCloud:
    """AWS IoT's shadow service as a connection: each request is answered ``delay`` seconds
    after it was sent; updates are applied (RFC 7396) when their version is the shadow's."""

    def __init__(self, clock: Clock, sync: ShadowSync, delay: float) -> None:
        self.clock = clock
        self.sync = sync
        self.delay = delay
        self.reported: dict[str, dict[str, Any]] = {}  # shadow -> its reported state
        self.versions: dict[str, int] = {}
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.sizes: list[int] = []  # each request's payload size

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool, packet_id: int, dup: bool) -> None:
        body = json.loads(payload)
        self.requests.append((topic, body))
        self.sizes.append(len(payload))
        self.clock.callLater(self.delay, self.answer, topic, body)

    def subscribe(self, filters: list[tuple[str, int]]) -> None:
        pass

    def updates(self, shadow: str) -> list[dict[str, Any]]:
        """The bodies of the updates of ``shadow`` received."""
        return [body for topic, body in self.requests if topic == f"{BASE}/name/{shadow}/update"]

    def answer(self, topic: str, body: dict[str, Any]) -> None:
        shadow, operation = shadows.parse_shadow_topic("gw1", topic)  # type: ignore[misc]
        version = self.versions.get(shadow)
        answer: dict[str, Any] = {"clientToken": body["clientToken"]}
        if operation == "get" and version is None:
            outcome, answer = "rejected", dict(answer, code=404, message="No shadow exists")
        elif operation == "get":
            outcome, answer = "accepted", dict(answer, state={"reported": self.reported[shadow]}, version=version)
        elif operation == "delete":
            del self.reported[shadow], self.versions[shadow]
            outcome = "accepted"
        elif "version" in body and body["version"] != version:
            outcome, answer = "rejected", dict(answer, code=409, message="Version conflict")
        else:
            self.reported[shadow] = merge_patch(self.reported.get(shadow, {}), body["state"]["reported"])
            self.versions[shadow] = (version or 0) + 1
            outcome, answer = "accepted", dict(answer, version=self.versions[shadow])
        self.sync.cloud_message(Publish(f"{topic}/{outcome}", json.dumps(answer).encode(), 1, False, 1, False))


class MergedRequestTests(ShadowSyncCase):
    def cloud(self, delay: float, reported: dict[str, dict[str, Any]] | None = None) -> SlowCloud:
        """Connect to a :class:`SlowCloud` holding ``reported`` (shadow -> its reported state,
        each at version 1) and let it answer the connect's gets."""
        cloud = SlowCloud(self.clock, self.sync, delay)
        for shadow, state in (reported or {}).items():
            cloud.reported[shadow], cloud.versions[shadow] = state, 1
        self.sync.link_connected(cloud)
        self.clock.advance(delay)
        return cloud

    def properties(self, feature: str) -> Any:
        return self.twin.store.things[ROOT]["features"][feature]["properties"]

    def test_a_shadow_changing_faster_than_the_cloud_answers_keeps_up(self) -> None:
        """A device reporting every second to a cloud answering in 4 s: the sync sent one
        request per journal record, one at a time per shadow, so the shadow fell behind without
        bound (pending grew by three records in four seconds, for ever). The updates waiting
        behind the one in flight now go together in the shadow's next request: pending stays
        within the records of one round trip, and the cloud ends with the twin's state. Another
        shadow's change is sent at once, not held behind it."""
        self.send(command("modify", "/features/meter/properties", {"kwh": 0}))
        self.send(command("modify", "/features/door/properties", {"open": False}))
        cloud = self.cloud(4.0)
        most = 0
        for n in range(1, 301):
            self.send(command("modify", "/features/meter/properties", {"kwh": n, "phase": n % 3}))
            if n % 50 == 0:
                self.send(command("modify", "/features/door/properties/open", n % 100 == 50))
                self.assertEqual(cloud.requests[-1][0], f"{BASE}/name/door/update")
            self.clock.advance(1)
            most = max(most, len(self.sync.reader.pending))
        self.assertLessEqual(most, 10)  # (the records of the request in flight, and those since)
        self.clock.advance(20)
        self.assertEqual(self.sync.reader.pending, [])
        self.assertEqual(self.stream.acked["shadow"], len(self.stream.records))
        self.assertEqual(cloud.reported["meter"], self.properties("meter"))
        self.assertEqual(cloud.reported["door"], self.properties("door"))
        self.assertLess(len(cloud.updates("meter")), 100)

    def test_merged_updates_do_what_the_records_do_in_turn(self) -> None:
        """RFC 7396 composition: later wins, nested objects are merged, a null stays (the cloud
        deletes too), a key deleted then set again is set. An object set after a null is no
        patch over what the cloud holds, so it starts the next request; a delete of the shadow
        keeps its place between two requests. The cloud ends as the records one by one would
        leave it, keys the twin never knew included."""
        properties = {"x": 1, "y": {"a": 1, "b": 2}, "z": 1, "o": {"p": 1}}
        self.send(command("modify", "/features/f/properties", properties))
        self.send(command("delete", "/features/f/properties/x"))
        self.send(command("modify", "/features/f/properties/y/b", 3))
        self.send(command("delete", "/features/f/properties/y/a"))
        self.send(command("delete", "/features/f/properties/z"))
        self.send(command("modify", "/features/f/properties/z", 5))
        self.send(command("delete", "/features/f/properties/o"))
        self.send(command("modify", "/features/f/properties/o", {"q": 2}))
        self.send(command("modify", "/features/f/properties/x", 7))
        start = {"y": {"a": 0, "c": 9}, "w": 1, "o": {"p": 0, "r": 1}}
        cloud = self.cloud(0.0, {"f": start})
        self.clock.advance(0)
        self.assertEqual(cloud.updates("f"), [
            {"state": {"reported": {"x": None, "y": {"a": None, "b": 3}, "z": 5, "o": None}}, "clientToken": "7",
             "version": 1},
            {"state": {"reported": {"o": {"q": 2}, "x": 7}}, "clientToken": "9", "version": 2}])
        one_by_one: Any = start
        for record in self.stream.records:
            one_by_one = merge_patch(one_by_one, json.loads(record.payload)["state"]["reported"])
        self.assertEqual(cloud.reported["f"], one_by_one)
        self.assertEqual(self.stream.acked["shadow"], 9)
        # a delete of the shadow is not merged across
        self.send(command("modify", "/features/g/properties", {"n": 1}))
        self.clock.advance(0)  # (g read: it is new)
        cloud.delay = 1.0
        for n in (2, 3, 4):  # (the first goes at once: nothing waits)
            self.send(command("modify", "/features/g/properties/n", n))
        self.send(command("delete", "/features/g"))
        self.send(command("modify", "/features/g/properties/n", 5))
        self.send(command("modify", "/features/g/properties/m", 6))
        self.clock.pump([1.0] * 5)
        self.assertEqual([(topic.rsplit("/", 1)[1], body.get("state"), body["clientToken"])
                          for topic, body in cloud.requests if "/name/g/" in topic], [
            ("get", None, "get-3"), ("update", {"reported": {"n": 1}}, "10"),
            ("update", {"reported": {"n": 2}}, "11"), ("update", {"reported": {"n": 4}}, "13"),
            ("delete", None, "14"), ("update", {"reported": {"n": 5, "m": 6}}, "16")])

    def test_a_merge_stays_within_the_document_cap(self) -> None:
        """Merged updates are one document within max_document_bytes (clientToken and version
        included): a merge that would exceed it is sent as fewer records, the rest in the next
        request. Here keys of 60 characters each set then deleted: their nulls add up."""
        keys = [f"{n:02d}" + "k" * 58 for n in range(20)]
        for key in keys:
            self.send(command("modify", f"/features/f/properties/{key}", 1))
            self.send(command("delete", f"/features/f/properties/{key}"))
        cloud = self.cloud(0.0, {"f": {}})
        self.clock.pump([0.0] * 5)
        updates = cloud.updates("f")
        self.assertTrue(1 < len(updates) < 10, updates)
        self.assertLessEqual(max(cloud.sizes), self.settings.max_document_bytes)
        self.assertGreater(len(updates[0]["state"]["reported"]), 1)
        self.assertEqual(sorted(key for body in updates for key in body["state"]["reported"]), keys)
        self.assertEqual(self.stream.acked["shadow"], 40)

    def test_a_version_conflict_on_a_merged_request(self) -> None:
        """409 on a merged request: its records stay in the journal (the cursor does not move:
        a SIGKILL now loses none of them), the shadow is read, and the request goes again with
        the new version, taking in the change made meanwhile; all are acknowledged once it is
        accepted."""
        self.send(command("modify", "/features/lamp/properties/x", 1))
        self.send(command("modify", "/features/lamp/properties/x", 2))
        cloud = self.cloud(1.0, {"lamp": {"x": 0}})
        cloud.versions["lamp"] = 5  # someone else changed it since the connect's get
        self.send(command("modify", "/features/lamp/properties/y", 3))
        self.clock.advance(1)  # the 409; the get goes
        self.assertEqual(self.stream.acked["shadow"], 0)
        self.clock.advance(1)  # the get read; the request goes again
        self.assertEqual(self.stream.acked["shadow"], 0)
        self.clock.advance(1)
        self.assertEqual([(topic.rsplit("/", 1)[1], body.get("state"), body["clientToken"], body.get("version"))
                          for topic, body in cloud.requests if "/name/lamp/" in topic][1:], [
            ("update", {"reported": {"x": 2}}, "2", 1),
            ("get", None, "get-3", None),
            ("update", {"reported": {"x": 2, "y": 3}}, "3", 5)])
        self.assertEqual(cloud.reported["lamp"], {"x": 2, "y": 3})
        self.assertEqual((self.stream.acked["shadow"], self.sync.reader.pending), (3, []))

    def test_a_merged_request_refused_for_good_goes_again_one_record_at_a_time(self) -> None:
        """A merged request refused for good (400) dropped every record it stood for, though
        only one of them may be bad. Its records now go again one request each, as before the
        merge: only the one refused alone is dropped (one error line, one refusal); the merge
        resumes after them, and a record refused alone is not sent again."""
        self.connect()
        self.send(command("modify", "/features/f/properties/x", 1))
        self.answer_gets()
        (topic, body), = self.connection.take()
        self.send(command("modify", "/features/f/properties/x", 2))
        self.send(command("modify", "/features/f/properties/y", 3))
        self.send(command("modify", "/features/f/properties/z", 4))
        self.reply(f"{topic}/accepted", {"clientToken": body["clientToken"], "version": 1})
        (topic, body), = self.connection.take()
        self.assertEqual((body["state"], body["clientToken"]), ({"reported": {"x": 2, "y": 3, "z": 4}}, "4"))
        with capturedLogs() as events:
            self.reply(f"{topic}/rejected", {"code": 400, "message": "bad y", "clientToken": "4"})
            self.assertEqual(self.connection.take(), [(topic, {"state": {"reported": {"x": 2}}, "clientToken": "2",
                                                               "version": 1})])
            self.reply(f"{topic}/accepted", {"clientToken": "2", "version": 2})
            self.assertEqual(self.connection.take(), [(topic, {"state": {"reported": {"y": 3}}, "clientToken": "3",
                                                               "version": 2})])
            self.send(command("modify", "/features/f/properties/x", 5))  # (after them: merged again)
            self.reply(f"{topic}/rejected", {"code": 400, "message": "bad y", "clientToken": "3"})
            self.assertEqual(self.connection.take(), [(topic, {"state": {"reported": {"z": 4}}, "clientToken": "4",
                                                               "version": 2})])
        self.assertEqual([formatEvent(e) for e in events if "refused" in e["log_format"]], [
            "shadow f: request 4, 3 updates merged, refused for good: 400 bad y; sending them again one at a time",
            "shadow f: request 3 refused for good: 400 bad y"])
        self.assertEqual((self.sync.refused, self.stream.acked["shadow"]), (1, 3))
        self.send(command("modify", "/features/f/properties/y", 6))
        self.reply(f"{topic}/accepted", {"clientToken": "4", "version": 3})
        self.assertEqual(self.connection.take(), [(topic, {"state": {"reported": {"x": 5, "y": 6}}, "clientToken": "6",
                                                           "version": 3})])
        # a merged request refused for good again: alone, each refused too, each dropped once
        self.send(command("modify", "/features/f/properties/x", 7))
        self.reply(f"{topic}/rejected", {"code": 400, "message": "bad", "clientToken": "6"})
        for token in ("5", "6", "7"):
            (_, body), = self.connection.take()
            self.assertEqual(body["clientToken"], token)
            self.reply(f"{topic}/rejected", {"code": 400, "message": "bad", "clientToken": token})
        self.assertEqual((self.connection.take(), self.sync.refused), ([], 4))
        self.assertEqual((self.stream.acked["shadow"], self.sync.reader.pending), (7, []))

    def test_a_merged_request_refused_with_429_goes_again_with_the_changes_made_meanwhile(self) -> None:
        """A merged request refused with 429 goes again after the wait, merged, taking in the
        change made meanwhile; nothing is acknowledged before it is accepted."""
        self.connect()
        self.send(command("modify", "/features/f/properties/x", 4))
        self.answer_gets()
        (topic, body), = self.connection.take()
        self.send(command("modify", "/features/f/properties/x", 5))
        self.reply(f"{topic}/rejected", {"code": 429, "message": "slow down", "clientToken": body["clientToken"]})
        self.send(command("modify", "/features/f/properties/y", 6))
        self.clock.advance(2.0)
        self.assertEqual([(b["state"], b["clientToken"]) for _, b in self.connection.take()],
                         [({"reported": {"x": 5, "y": 6}}, "3")])
        self.assertEqual(self.stream.acked["shadow"], 0)

    def test_an_unanswered_merged_request_goes_again_as_it_was(self) -> None:
        """A merged request unanswered within request_timeout goes again with the same records
        and clientToken, not with the records journaled since: a cloud slower than the timeout
        answers the token it was sent, and a new token at each timeout would match no answer."""
        self.connect()
        self.send(command("modify", "/features/f/properties/x", 1))
        self.answer_gets()
        (topic, first), = self.connection.take()
        self.send(command("modify", "/features/f/properties/x", 2))
        self.send(command("modify", "/features/f/properties/x", 3))
        self.reply(f"{topic}/accepted", {"clientToken": first["clientToken"], "version": 1})
        (topic, merged), = self.connection.take()
        self.send(command("modify", "/features/f/properties/x", 4))
        self.clock.advance(self.settings.request_timeout)
        self.assertEqual(self.connection.take(), [(topic, merged)])
        self.sync.link_disconnected()
        self.connect({"f": {"state": {"reported": {"x": 1}}, "version": 1}})
        self.assertEqual(self.connection.take(), [(topic, merged)])
        self.reply(f"{topic}/accepted", {"clientToken": merged["clientToken"], "version": 2})
        self.assertEqual(self.connection.take(), [(topic, {"state": {"reported": {"x": 4}}, "clientToken": "4",
                                                           "version": 2})])
