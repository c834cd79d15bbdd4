"""The twin service with a recording bus: Ditto commands, events, responses, persistence."""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from gateway.degraded import Degraded
from gateway.journal.errors import StreamFullError
from gateway.payloadlimits import REQUEST_BYTES
from gateway.twin.ditto import DittoError
from gateway.twin.service import TwinService
from gateway.twin.settings import TwinSettings
from tests.twin.fakes import HeldRunner, RecordingBus, run_now

ROOT = "acme:gw1"


def command(action: str, path: str, value: Any = None, thing: str = ROOT, **headers: Any) -> dict[str, Any]:
    namespace, _, name = thing.partition(":")
    envelope: dict[str, Any] = {"topic": f"{namespace}/{name}/things/twin/commands/{action}",
                                "headers": {"correlation-id": "c1", **headers}, "path": path}
    if value is not None or action in ("modify", "merge", "create"):
        envelope["value"] = value
    return envelope


class TwinServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.bus = RecordingBus()
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.twin = self.start()

    def start(self, runner: Any = run_now) -> TwinService:
        twin = TwinService(TwinSettings(), self.dir, self.clock, self.bus, ("acme", "gw1"), runner)
        self.successResultOf(twin.startService())
        return twin

    def send(self, envelope: Any, topic: str = "e") -> list[tuple[str, Any]]:
        self.successResultOf(self.bus.deliver(topic, envelope))
        return self.bus.take()

    def test_modify_property_event_then_response(self) -> None:
        """A modify that creates a feature property is announced as a `created` event on
        command///req//created, then answered on command///req//modify-response (201: created)."""
        out = self.send(command("modify", "/features/meter/properties/x", 5))
        self.assertEqual([t for t, _ in out], ["command///req//created", "command///req//modify-response"])
        event, response = out[0][1], out[1][1]
        self.assertEqual(event["topic"], "acme/gw1/things/twin/events/created")
        self.assertEqual((event["path"], event["value"]), ("/features/meter/properties/x", 5))
        self.assertEqual(event["timestamp"], "2023-11-14T22:13:20.000Z")
        self.assertEqual(response["status"], 201)
        self.assertEqual(response["headers"]["correlation-id"], "c1")
        self.assertIs(response["headers"]["response-required"], False)
        self.assertEqual(self.twin.store.things[ROOT]["features"], {"meter": {"properties": {"x": 5}}})

    def test_modify_creating_is_created_as_in_ditto(self) -> None:
        """Ditto's own example (protocol-examples-createattribute: ModifyAttribute of
        /attributes/location, answered 201, then AttributeCreated): a modify that creates what
        was not there is announced as `created`, one that changes what is there as `modified`
        (answered 204), as Ditto and Kanto's local twins announce them."""
        location = {"latitude": 44.673856, "longitude": 8.261719}
        out = self.send(command("modify", "/attributes/location", location))
        self.assertEqual([t for t, _ in out], ["command///req//created", "command///req//modify-response"])
        self.assertEqual(out[0][1]["topic"], "acme/gw1/things/twin/events/created")
        self.assertEqual((out[0][1]["path"], out[0][1]["value"]), ("/attributes/location", location))
        self.assertEqual(out[1][1]["status"], 201)
        out = self.send(command("modify", "/attributes/location", {"latitude": 45.0, "longitude": 8.0}))
        self.assertEqual([t for t, _ in out], ["command///req//modified", "command///req//modify-response"])
        self.assertEqual(out[0][1]["topic"], "acme/gw1/things/twin/events/modified")
        self.assertEqual(out[1][1]["status"], 204)

    def test_modify_creating_a_thing_announces_the_thing(self) -> None:
        """A modify of / that creates a child thing is ThingCreated in Ditto: a `created` event
        whose value is the created thing, its thingId included, as a create's."""
        out = self.send(command("modify", "/", {"attributes": {"a": 1}}, thing="acme:gw1:sensor"))
        self.assertEqual([t for t, _ in out], ["command//acme:gw1:sensor/req//created",
                                               "command//acme:gw1:sensor/req//modify-response"])
        thing = {"thingId": "acme:gw1:sensor", "attributes": {"a": 1}}
        self.assertEqual(out[0][1]["topic"], "acme/gw1:sensor/things/twin/events/created")
        self.assertEqual((out[0][1]["value"], out[1][1]["value"], out[1][1]["status"]), (thing, thing, 201))

    def test_not_found_errors_carry_dittos_codes(self) -> None:
        """A retrieve or delete of what is not there is a 404 with Ditto's code for the
        outermost part missing: Ditto's own example (an attribute 'unknown-key':
        things:attribute.notfound) and Kanto's (property /x of feature 'meter':
        things:feature.property.notfound), not a code of the gateway's own."""
        def code(action: str, path: str) -> tuple[str, int, str]:
            out = self.send(command(action, path))
            self.assertEqual(out[0][0], "command///req//errors-response")
            return out[0][1]["topic"], out[0][1]["value"]["status"], out[0][1]["value"]["error"]

        self.assertEqual(code("retrieve", "/attributes/unknown-key"),
                         ("acme/gw1/things/twin/errors", 404, "things:attribute.notfound"))
        self.assertEqual(code("retrieve", "/features/meter")[2], "things:feature.notfound")
        self.assertEqual(code("retrieve", "/features/meter/properties/x")[2], "things:feature.notfound")
        self.send(command("modify", "/features/meter", {"properties": {"y": 1}}))
        self.assertEqual(code("retrieve", "/features/meter/properties/x")[2], "things:feature.property.notfound")
        self.assertEqual(code("delete", "/features/meter/properties/x")[2], "things:feature.property.notfound")
        self.assertEqual(code("retrieve", "/features/meter/desiredProperties")[2],
                         "things:feature.desiredProperties.notfound")
        self.assertEqual(code("retrieve", "/features/meter/desiredProperties/x")[2],
                         "things:feature.desiredProperties.notfound")
        self.assertEqual(code("retrieve", "/features/meter/definition")[2], "things:feature.definition.notfound")
        self.assertEqual(code("retrieve", "/definition")[2], "things:definition.notfound")
        self.send(command("delete", "/attributes"))
        self.assertEqual(code("retrieve", "/attributes/a")[2], "things:attributes.notfound")
        self.assertEqual(code("retrieve", "/attributes")[2], "things:attributes.notfound")
        self.send(command("delete", "/features"))
        self.assertEqual(code("delete", "/features")[2], "things:features.notfound")
        self.assertEqual(code("retrieve", "/features/meter")[2], "things:features.notfound")

    def test_an_error_quotes_what_it_refuses_by_its_start(self) -> None:
        """An error response quotes a path, an action or a thing id of a megabyte (in its
        message, its ``path`` and its ``topic``) by the first 100 characters and the length:
        the answer repeated each whole, twice for a path (docs/topics.md)."""
        long = "z" * 900_000
        for envelope in (command("retrieve", "/attributes/" + long), command("modify", "/nope" + long, 1),
                         command("retrieve", long),
                         dict(command("retrieve", "/"), topic=f"acme/gw1/things/twin/commands/{long}"),
                         command("retrieve", "/", thing="acme:" + long), command("retrieve", "/", thing="other:" + long),
                         dict(command("retrieve", "/"), path=[long]), command("modify", "/features/f", {long: 1}),
                         command("modify", "/policyId/" + long, 1)):
            [(topic, answer)] = self.send(envelope)
            self.assertLess(len(json.dumps(answer)) + len(topic), 1000, (topic[:40], json.dumps(answer)[:300]))
            self.assertIn("... (9000", json.dumps(answer))

    def test_a_command_over_the_request_limit_is_a_413_unparsed(self) -> None:
        """A twin command of REQUEST_BYTES is carried out; one byte more is not parsed: answered
        413 on the errors topic of the thing its topic names (without its headers, unread), and a
        message that large naming no twin command is an event, left to the links."""
        text = json.dumps(command("retrieve", "/")).encode().ljust(REQUEST_BYTES)
        [(topic, answer)] = self.send(text)
        self.assertEqual((topic, answer["status"]), ("command///req//retrieve-response", 200))
        [(topic, answer)] = self.send(text + b" ")
        self.assertEqual(topic, "command///req//errors-response")
        self.assertEqual((answer["topic"], answer["status"], answer["value"]["error"], answer["value"]["message"]),
                         ("acme/gw1/things/twin/errors", 413, "things:command.toolarge",
                          f"the message is {REQUEST_BYTES + 1} bytes, more than the {REQUEST_BYTES} bytes"
                          " a request may have"))
        child = json.dumps(command("modify", "/attributes/a", 1, thing=ROOT + ":c")).encode().ljust(REQUEST_BYTES + 1)
        [(topic, answer)] = self.send(child)
        self.assertEqual((topic, answer["status"]), ("command//acme:gw1:c/req//errors-response", 413))
        self.assertEqual(self.send(b'{"x": 1}'.ljust(REQUEST_BYTES + 1)), [])
        self.assertNotIn(ROOT + ":c", self.twin.store.things)

    def test_a_large_event_holding_a_command_deeper_is_an_event(self) -> None:
        """A message over the request limit is a twin command only when its top-level object's
        ``topic`` names one: a large event carrying a command's text deeper (a log of commands,
        a batch in an array) was answered 413 on the errors topic of the thing it named, though no
        one had sent that thing a command; it is an event, left to the links (docs/topics.md)."""
        logged = command("modify", "/attributes/a", 1, thing=ROOT + ":c")
        pad = "x" * REQUEST_BYTES
        for event in ({"log": [logged], "pad": pad}, {"pad": pad, "last": {"topic": logged["topic"]}},
                      [logged, pad], {"text": json.dumps(logged), "pad": pad}):
            self.assertEqual(self.send(json.dumps(event).encode()), [], event if isinstance(event, list) else list(event))
        # a command whose members come in another order (sorted: headers, path, topic, value) is one
        ordered = json.dumps({**logged, "value": pad}, sort_keys=True).encode()
        [(topic, answer)] = self.send(ordered)
        self.assertEqual((topic, answer["status"], answer["value"]["error"]),
                         ("command//acme:gw1:c/req//errors-response", 413, "things:command.toolarge"))
        # and one whose topic comes after its first REQUEST_BYTES (its headers that large) is not read so far
        late = json.dumps({"headers": {"h": pad}, "topic": logged["topic"], "path": "/", "value": {}}).encode()
        self.assertEqual(self.send(late), [])
        self.assertNotIn(ROOT + ":c", self.twin.store.things)

    def test_a_thing_is_at_most_max_thing_bytes(self) -> None:
        """A change that makes a thing's JSON exactly max_thing_bytes is taken; one byte more is
        refused 413 things:thing.toolarge, nothing stored (50 modifies of 1 MB values made one
        thing of 50 MB, written whole after each change). Under a lowered limit, a change that
        shrinks a thing already larger is taken, one that grows it is not."""
        child = ROOT + ":c"
        self.send(command("create", "/", {"attributes": {"s": ""}}, thing=child))
        room = TwinSettings().max_thing_bytes - len(json.dumps(self.twin.store.things[child]))
        out = self.send(command("modify", "/attributes/s", "x" * room, thing=child))
        self.assertEqual(out[-1][1]["status"], 204)
        self.assertEqual(len(json.dumps(self.twin.store.things[child])), TwinSettings().max_thing_bytes)
        [(topic, answer)] = self.send(command("modify", "/attributes/t", 1, thing=child))
        self.assertEqual((topic, answer["status"], answer["value"]["error"]),
                         ("command//acme:gw1:c/req//errors-response", 413, "things:thing.toolarge"))
        self.assertEqual(answer["value"]["message"],
                         f"the thing 'acme:gw1:c' would be {TwinSettings().max_thing_bytes + 8} bytes, more than its"
                         " max_thing_bytes (102400): store less in it, or raise twin.max_thing_bytes")
        self.assertNotIn("t", self.twin.store.things[child]["attributes"])
        self.successResultOf(self.twin.stopService())
        self.twin = TwinService(TwinSettings(max_thing_bytes=1024), self.dir, self.clock, self.bus, ("acme", "gw1"),
                                run_now)
        self.successResultOf(self.twin.startService())
        self.bus.take()
        self.assertEqual(self.send(command("modify", "/attributes/s", "x" * (room + 1), thing=child))[-1][1]["status"],
                         413)
        self.assertEqual(self.send(command("modify", "/attributes/s", "x" * 2000, thing=child))[-1][1]["status"], 204)

    def test_modify_existing_is_204(self) -> None:
        """Replacing what exists answers 204 without a value; replacing it with the same value
        announces nothing."""
        self.send(command("modify", "/attributes/location", {"lat": 1}))
        out = self.send(command("modify", "/attributes/location", {"lat": 2}))
        self.assertEqual(out[1][1]["status"], 204)
        self.assertNotIn("value", out[1][1])
        # the same value again changes nothing: answered 204, with no event and the revision kept
        revision = self.twin.store.revisions[ROOT]
        out = self.send(command("modify", "/attributes/location", {"lat": 2}))
        self.assertEqual([(t, m["status"]) for t, m in out], [("command///req//modify-response", 204)])
        self.assertEqual(self.twin.store.revisions[ROOT], revision)

    def test_merge_patch_semantics(self) -> None:
        """merge is RFC 7396: members merged, null deletes; the event is `merged`."""
        self.send(command("modify", "/features/f/properties", {"a": 1, "b": {"c": 2, "d": 3}}))
        out = self.send(command("merge", "/features/f/properties", {"b": {"c": None, "e": 4}}), topic="event/x")
        self.assertEqual(out[0][1]["topic"], "acme/gw1/things/twin/events/merged")
        self.assertEqual(self.twin.store.things[ROOT]["features"]["f"]["properties"], {"a": 1, "b": {"d": 3, "e": 4}})

    def test_retrieve_and_not_found(self) -> None:
        """retrieve answers 200 with the value; a missing path is a Ditto error response (404)."""
        self.send(command("modify", "/attributes/serial", "X1"))
        out = self.send(command("retrieve", "/attributes/serial"))
        self.assertEqual(out, [("command///req//retrieve-response", {
            "topic": "acme/gw1/things/twin/commands/retrieve", "path": "/attributes/serial", "status": 200,
            "value": "X1", "headers": {"correlation-id": "c1", "response-required": False}})])
        out = self.send(command("retrieve", "/attributes/nothing"))
        self.assertEqual(out[0][0], "command///req//errors-response")
        self.assertEqual(out[0][1]["topic"], "acme/gw1/things/twin/errors")
        self.assertEqual(out[0][1]["value"]["status"], 404)

    def test_delete(self) -> None:
        """delete removes the value, announced as `deleted` (without a value); 204."""
        self.send(command("modify", "/features/f", {"properties": {"a": 1}}))
        out = self.send(command("delete", "/features/f"))
        self.assertEqual(out[0][0], "command///req//deleted")
        self.assertNotIn("value", out[0][1])
        self.assertEqual(out[1][1]["status"], 204)
        self.assertEqual(self.twin.store.things[ROOT]["features"], {})

    def test_child_thing(self) -> None:
        """A child thing (<root>:<child>) is created, changed and deleted on its own topics;
        its changes before it exists are refused with 404."""
        out = self.send(command("modify", "/attributes/a", 1, thing="acme:gw1:sensor"))
        self.assertEqual(out[0][1]["value"]["status"], 404)
        out = self.send(command("create", "/", {"attributes": {"a": 1}}, thing="acme:gw1:sensor"))
        self.assertEqual([t for t, _ in out], ["command//acme:gw1:sensor/req//created",
                                               "command//acme:gw1:sensor/req//create-response"])
        self.assertEqual(out[1][1]["value"], {"thingId": "acme:gw1:sensor", "attributes": {"a": 1}})
        out = self.send(command("create", "/", {}, thing="acme:gw1:sensor"))
        self.assertEqual(out[0][1]["value"]["status"], 409)
        out = self.send(command("delete", "/", thing="acme:gw1:sensor"))
        self.assertEqual(out[0][0], "command//acme:gw1:sensor/req//deleted")
        self.assertNotIn("acme:gw1:sensor", self.twin.store.things)

    def test_foreign_thing_refused(self) -> None:
        """A thing that is neither the gateway's nor its child is not held: 404."""
        out = self.send(command("modify", "/attributes/a", 1, thing="other:thing"))
        self.assertEqual(out[0][0], "command//other:thing/req//errors-response")
        self.assertIn("holds acme:gw1 and its children", out[0][1]["value"]["message"])

    def test_thing_id_with_a_wildcard_refused(self) -> None:
        """A child thing id holding '+', '#' or NUL would put its events and responses on
        topics that cannot be published (command//<id>/req//...): refused with 400 on the
        gateway's errors topic, not created (it was created, and its app got no answer)."""
        for thing in ("acme:gw1:x#", "acme:gw1:a+b", "acme:gw1:n\0", "other:x#"):
            out = self.send(command("create", "/", {"attributes": {"a": 1}}, thing=thing))
            self.assertEqual([t for t, _ in out], ["command///req//errors-response"], thing)
            self.assertEqual((out[0][1]["status"], out[0][1]["value"]["error"]), (400, "things:id.invalid"))
            self.assertNotIn(thing, self.twin.store.things)
        out = self.send(command("bogus", "/", thing="acme:gw1:x#"))
        self.assertEqual([t for t, _ in out], ["command///req//errors-response"])

    def test_a_thing_id_in_the_value_other_than_the_topics_is_not_settable(self) -> None:
        """Kanto's local twins (and Ditto) refuse a create, modify or merge of / whose value's
        ``thingId`` is not the command topic's: 400 ``things:id.notsettable``, nothing changed.
        It was taken, the id silently replaced, and the `modified` event announced the other
        id as the thing's. The topic's own id in the value is taken."""
        for action in ("create", "modify", "merge"):
            out = self.send(command(action, "/", {"thingId": "other:x", "attributes": {"a": 1}}, thing="acme:gw1:s"))
            self.assertEqual([t for t, _ in out], ["command//acme:gw1:s/req//errors-response"], action)
            self.assertEqual((out[0][1]["status"], out[0][1]["value"]["error"]), (400, "things:id.notsettable"))
        out = self.send(command("modify", "/", {"thingId": "other:x", "attributes": {"a": 1}}))
        self.assertEqual((out[0][1]["status"], out[0][1]["value"]["error"]), (400, "things:id.notsettable"))
        self.assertIn("'other:x'", out[0][1]["value"]["message"])
        self.assertEqual(self.twin.store.things[ROOT], {"thingId": ROOT, "attributes": {}, "features": {}})
        self.assertNotIn("acme:gw1:s", self.twin.store.things)
        out = self.send(command("modify", "/", {"thingId": ROOT, "attributes": {"a": 1}}))
        self.assertEqual([(t, e.get("status")) for t, e in out],
                         [("command///req//modified", None), ("command///req//modify-response", 204)])

    def test_kantos_retrieve_of_several_things(self) -> None:
        """Kanto's retrieve of several things: ``_/_/things/twin/commands/retrieve``, path ``/``,
        value ``{"thingIds": [...]}``, answered 200 on ``command//_:_/req//retrieve-response``
        with the things the twin holds, in the order asked, the others left out. It was a 404
        (``_:_`` is no thing of the gateway's), so a Kanto app could not list its things."""
        self.send(command("create", "/", {"attributes": {"a": 1}}, thing="acme:gw1:s"))
        kanto = {"topic": "_/_/things/twin/commands/retrieve", "path": "/",
                 "headers": {"correlation-id": "list-1"}, "value": {"thingIds": ["acme:gw1:s", "acme:gw1:gone", ROOT]}}
        [(topic, response)] = self.send(kanto)
        self.assertEqual(topic, "command//_:_/req//retrieve-response")
        self.assertEqual((response["topic"], response["status"], response["headers"]["correlation-id"]),
                         ("_/_/things/twin/commands/retrieve", 200, "list-1"))
        self.assertEqual(response["value"], [{"thingId": "acme:gw1:s", "attributes": {"a": 1}},
                                             {"thingId": ROOT, "attributes": {}, "features": {}}])
        for value, error in (({"thingIds": []}, "json.invalid"), ({"ids": [ROOT]}, "json.invalid"),
                             ({"thingIds": ["nocolon"]}, "things:id.invalid")):
            [(topic, answer)] = self.send({**kanto, "value": value})
            self.assertEqual((topic, answer["status"], answer["value"]["error"]),
                             ("command//_:_/req//errors-response", 400, error), value)
        self.assertEqual(self.send({**kanto, "headers": {"response-required": False}}), [])

    def test_a_thing_named_underscore_is_retrieved_as_itself(self) -> None:
        """Only ``_/_`` (both the namespace and the name ``_``, as Kanto's placeholder) is the
        retrieve of several things: a gateway whose device id (or tenant id) is ``_`` retrieves
        its own thing at ``acme/_/things/twin/commands/retrieve``. It was refused 400
        ``json.invalid`` (taken for a retrieve of several things without ``thingIds``)."""
        self.successResultOf(self.twin.stopService())
        for tenant, device in (("acme", "_"), ("_", "gw1")):
            twin = TwinService(TwinSettings(), self.dir / f"{tenant}{device}", self.clock, self.bus, (tenant, device),
                               run_now)
            self.successResultOf(twin.startService())
            root = f"{tenant}:{device}"
            [(topic, response)] = self.send(command("retrieve", "/", thing=root))
            self.assertEqual((response["status"], response["value"]),
                             (200, {"thingId": root, "attributes": {}, "features": {}}), root)
            self.successResultOf(twin.stopService())

    def test_where_answers_differ_from_kantos_as_docs_say(self) -> None:
        """docs/twin.md names where the answers differ from Kanto's local twins: an error's path
        is the command's (Kanto's is /), with no description and no content-type header, and a
        retrieve's ``fields`` is not applied."""
        [(_, error)] = self.send(command("retrieve", "/attributes/none"))
        self.assertEqual((error["path"], sorted(error["value"]), "content-type" in error["headers"]),
                         ("/attributes/none", ["error", "message", "status"], False))
        [(_, response)] = self.send({**command("retrieve", "/"), "fields": "thingId"})
        self.assertEqual((response["value"], "content-type" in response["headers"]),
                         ({"thingId": ROOT, "attributes": {}, "features": {}}, False))

    def test_bad_paths_and_values(self) -> None:
        """Paths outside Ditto's thing model and non-object features are refused with 400."""
        for envelope in (command("modify", "/nope", 1), command("modify", "/features/f/props/x", 1),
                         command("modify", "/features", {"f": 3}), command("modify", "/attributes", [1]),
                         command("modify", "/thingId", "x"), command("frobnicate", "/")):
            out = self.send(envelope)
            self.assertEqual(out[0][1]["value"]["status"], 400, envelope)

    def test_a_refused_command_is_logged_on_one_line(self) -> None:
        """A refused command's log line quotes its topic, path and message with their control
        characters escaped: a newline an app put there cannot end the line and forge the next."""
        envelope = command("modify", "/nope\n2026-12-06T19:00:00+0000 [gateway] forged", 1)
        envelope["topic"] += "\nforged too"
        with capturedLogs() as events:
            self.send(envelope)
        [line] = [formatEvent(e) for e in events if "refused" in e.get("log_format", "")]
        self.assertNotIn("\n", line)
        self.assertIn("modify\\nforged too /nope\\n2026-12-06T19:00:00+0000 [gateway] forged refused: 400", line)
        # (the refusal's message, not the () Twisted's legacy log bridge puts in a `message` field)
        self.assertTrue(line.endswith("refused: 400 the local twin does not support 'modify\\nforged too' ("
                                      "logged at most once every 10 s while they go on)"),
                        line)

    def test_a_burst_of_refused_commands_is_one_line_then_one_summary(self) -> None:
        """docs/twin.md: an app sending bad commands in a loop wrote an info line for each. The
        first is logged at once, then at most one line per 10 s saying how many were refused
        since; each is still answered with its error."""
        def burst(commands: int) -> list[str]:
            with capturedLogs() as events:
                for _ in range(commands):
                    [(topic, answer)] = self.send(command("modify", "/nope", 1))
                    self.assertEqual(answer["value"]["status"], 400)
            return [formatEvent(e) for e in events if e.get("log_format", "").startswith("twin command")]

        [first] = burst(1000)
        self.assertTrue(first.startswith("twin command on acme/gw1/things/twin/commands/modify /nope refused: 400 "))
        self.assertTrue(first.endswith(" (logged at most once every 10 s while"
                                       " they go on)"), first)
        self.clock.advance(9)
        self.assertEqual(burst(1), [])
        self.clock.advance(1)
        [summary] = burst(1)
        self.assertEqual(summary, first.replace("(logged", "(1001 refused since the last such line; logged"))

    def test_paths_outside_the_model_refused(self) -> None:
        """Only the paths twin.md lists are served: nothing below /policyId or /definition (a
        string, which a modify would otherwise turn into an object), and no /thingId; 400,
        nothing changes."""
        for envelope in (command("modify", "/policyId/x", 1), command("modify", "/definition/x", 1),
                         command("merge", "/policyId/x", {"a": 1}), command("retrieve", "/thingId"),
                         command("retrieve", "/policyId/x")):
            out = self.send(envelope)
            self.assertEqual([t for t, _ in out], ["command///req//errors-response"], envelope)
            self.assertEqual(out[0][1]["value"]["status"], 400, envelope)
        self.assertEqual(self.twin.store.things[ROOT], {"thingId": ROOT, "attributes": {}, "features": {}})

    def test_non_objects_inside_a_whole_value_refused(self) -> None:
        """A value given for / or /features/<F> is held to the same model as its parts: attributes,
        features, a feature and its (desired) properties must be objects (400, nothing changes)."""
        child = "acme:gw1:sensor"
        for envelope in (command("create", "/", {"attributes": 5}, thing=child),
                         command("create", "/", {"features": {"f": 3}}, thing=child),
                         command("modify", "/", {"features": {"f": {"properties": [1]}}}),
                         command("merge", "/", {"attributes": "x"}),
                         command("modify", "/features/f", {"desiredProperties": 2}),
                         command("merge", "/features", {"f": {"properties": 1}})):
            out = self.send(envelope)
            self.assertEqual(out[0][1]["value"]["status"], 400, envelope)
            self.assertEqual(out[0][1]["value"]["error"], "things:value.invalid", envelope)
        # The message reads as a sentence (it was "the value holds /foo is not part of a thing ...").
        out = self.send(command("modify", "/features/f", {"state": 1}))
        self.assertEqual(out[0][1]["value"]["message"],
                         "the value is refused: /features/f/state is not part of a feature "
                         "(known: definition, properties, desiredProperties)")
        self.assertNotIn(child, self.twin.store.things)
        self.assertEqual(self.twin.store.things[ROOT], {"thingId": ROOT, "attributes": {}, "features": {}})
        out = self.send(command("merge", "/", {"attributes": None, "features": {"f": {"properties": {"a": 1}}}}))
        self.assertEqual(out[1][1]["status"], 204)

    def test_members_outside_the_model_inside_a_whole_value_refused(self) -> None:
        """A value given for /, /features or /features/<F> may hold only what its paths could
        reach: a thing's known keys, a feature's definition and (desired) properties, a string
        policyId and definition (400, nothing changes). They were stored, and then no path could
        read, change or remove them (retrieve /foo is a 400)."""
        child = "acme:gw1:sensor"
        for envelope in (command("create", "/", {"foo": 1}, thing=child),
                         command("modify", "/", {"attributes": {}, "bogus": {"a": 1}}),
                         command("merge", "/", {"features": {"f": {"bogus": 1}}}),
                         command("modify", "/features", {"f": {"properties": {}, "props": {}}}),
                         command("modify", "/features/f", {"state": 1}),
                         command("create", "/", {"policyId": {"a": 1}}, thing=child),
                         command("modify", "/", {"definition": 5}),
                         command("modify", "/policyId", ["p"])):
            out = self.send(envelope)
            self.assertEqual([t for t, _ in out], ["command///req//errors-response"
                                                   if envelope["topic"].startswith("acme/gw1/")
                                                   else f"command//{child}/req//errors-response"], envelope)
            self.assertEqual(out[0][1]["value"]["status"], 400, envelope)
            self.assertEqual(out[0][1]["value"]["error"], "things:value.invalid", envelope)
        # The message reads as a sentence (it was "the value holds /foo is not part of a thing ...").
        out = self.send(command("modify", "/features/f", {"state": 1}))
        self.assertEqual(out[0][1]["value"]["message"],
                         "the value is refused: /features/f/state is not part of a feature "
                         "(known: definition, properties, desiredProperties)")
        self.assertNotIn(child, self.twin.store.things)
        self.assertEqual(self.twin.store.things[ROOT], {"thingId": ROOT, "attributes": {}, "features": {}})
        out = self.send(command("modify", "/", {"thingId": ROOT, "policyId": "acme:p", "definition": "acme:gw:1",
                                                "features": {"f": {"definition": ["acme:f:1"], "properties": {}}}}))
        self.assertEqual(out[-1][1]["status"], 204)
        self.assertEqual(self.twin.store.things[ROOT]["thingId"], ROOT)
        out = self.send(command("merge", "/", {"policyId": None, "features": {"f": None}}))
        self.assertEqual(out[-1][1]["status"], 204)

    def test_a_command_nested_too_deeply_refused(self) -> None:
        """A command whose JSON nests deeper than 100 levels is refused with 400 (its value used
        to exhaust the stack of the code that copies it: no answer at all); 100 levels are served."""
        def nested(levels: int) -> Any:
            return 1 if not levels else {"a": nested(levels - 1)}

        out = self.send(command("modify", "/attributes/x", nested(500)))
        self.assertEqual([t for t, _ in out], ["command///req//errors-response"])
        self.assertEqual(out[0][1]["value"]["error"], "things:value.invalid")
        self.assertEqual(self.twin.store.things[ROOT], {"thingId": ROOT, "attributes": {}, "features": {}})
        out = self.send(command("modify", "/attributes/x", nested(99)))  # with the envelope: 100
        self.assertEqual(out[-1][1]["status"], 201)

    def test_a_path_nesting_the_thing_too_deeply_refused(self) -> None:
        """A modify (or merge, create) whose path makes the objects on the way nests the thing
        as deeply as a value would: 500 levels of path made the gateway's thing one that every
        later command failed on (RecursionError: a traceback, no answer). Refused with 400,
        the thing unchanged and still served; the objects of the path and the value's levels
        count together, up to 100."""
        def nested(levels: int) -> Any:
            return 1 if not levels else {"a": nested(levels - 1)}

        for action in ("modify", "merge"):
            out = self.send(command(action, "/attributes" + "/a" * 500, 1))
            self.assertEqual([t for t, _ in out], ["command///req//errors-response"])
            self.assertEqual((out[0][1]["status"], out[0][1]["value"]["message"]),
                             (400, "the value at this path would nest deeper than 100 levels"))
        out = self.send(command("modify", "/attributes" + "/a" * 50, nested(51)))
        self.assertEqual(out[0][1]["status"], 400)
        self.assertEqual(self.twin.store.things[ROOT], {"thingId": ROOT, "attributes": {}, "features": {}})
        out = self.send(command("modify", "/attributes" + "/a" * 50, nested(50)))
        self.assertEqual(out[-1][1]["status"], 201)
        out = self.send(command("retrieve", "/attributes/a"))
        self.assertEqual(out[-1][1]["status"], 200)

    def test_a_path_that_is_no_string_is_refused_as_such(self) -> None:
        """A command whose path is there but no string (a number, a list) is refused with 400
        saying so: before, it was told ``the envelope has no path``, which it had."""
        for path, message in ((5, "path must be a string, not 5"), (["/a"], "path must be a string, not ['/a']"),
                              (None, "the envelope has no path")):
            [(topic, answer)] = self.send(dict(command("retrieve", "/"), path=path))
            self.assertEqual((topic, answer["value"]), ("command///req//errors-response", {
                "status": 400, "error": "things:path.invalid", "message": message}), path)

    def test_malformed_child_command_answered_on_its_topic(self) -> None:
        """A child thing's malformed command (an unknown action, no path, headers that are no
        object) is answered on the child's errors topic, command//<id>/req//errors-response, as
        every other error of it."""
        for envelope in (command("frobnicate", "/", thing="acme:gw1:sensor"),
                         {"topic": "acme/gw1:sensor/things/twin/commands/retrieve"},
                         {"topic": "acme/gw1:sensor/things/twin/commands/retrieve", "path": "/", "headers": [1]},
                         # (empty ones too: [], "" and false were taken for no headers)
                         {"topic": "acme/gw1:sensor/things/twin/commands/retrieve", "path": "/", "headers": []},
                         {"topic": "acme/gw1:sensor/things/twin/commands/retrieve", "path": "/", "headers": ""}):
            out = self.send(envelope)
            self.assertEqual([t for t, _ in out], ["command//acme:gw1:sensor/req//errors-response"], envelope)
            self.assertEqual(out[0][1]["value"]["status"], 400)
        out = self.send(command("frobnicate", "/"))
        self.assertEqual([t for t, _ in out], ["command///req//errors-response"])
        out = self.send({"topic": "acme/gw1/things/twin/commands/retrieve", "path": "/", "headers": None})
        self.assertEqual([(t, m["status"]) for t, m in out], [("command///req//retrieve-response", 200)])

    def test_a_command_that_is_not_rfc_8259_json_is_answered(self) -> None:
        """docs/twin.md: a command holding NaN, Infinity or 1e400 was carried out and stored
        (things.json and the events then held NaN, no JSON), a key given twice took the last
        value silently, and a 5000-digit integer got no answer at all. Each is answered 400
        ``json.invalid`` (``the command is not valid JSON: ...``), its correlation id kept and a
        header that is no JSON left out, and changes nothing."""
        for value, why in (("NaN", "NaN is not JSON"), ("-Infinity", "-Infinity is not JSON"),
                           ("1e400", "the number 1e400 is too large"), ("9" * 5000, "an integer of 5000 digits"),
                           ('{"a": 1, "a": 2}', "key 'a' given twice")):
            payload = ('{"topic": "acme/gw1/things/twin/commands/modify", "path": "/attributes/x",'
                       ' "value": %s, "headers": {"correlation-id": "c9", "n": NaN}}' % value).encode()
            self.clock.advance(11)
            out = self.send(payload)
            self.assertEqual([t for t, _ in out], ["command///req//errors-response"], value[:20])
            answer = out[0][1]
            self.assertEqual((answer["status"], answer["value"]["error"]), (400, "json.invalid"))
            self.assertIn(f"the command is not valid JSON: {why}", answer["value"]["message"])
            self.assertEqual(answer["headers"], {"correlation-id": "c9", "response-required": False})
            self.assertEqual(self.twin.store.things[ROOT], {"thingId": ROOT, "attributes": {}, "features": {}})
        self.assertEqual(self.send(b'{"topic": "a/b/things/other", "x": NaN, "x": 1}'), [])  # (no twin command)
        self.assertEqual(self.send(command("modify", "/attributes/x", 1.5))[-1][1]["status"], 201)

    def test_a_command_that_is_not_unicode_text_is_answered(self) -> None:
        """docs/twin.md: a command whose JSON holds a lone surrogate (``"\\ud800"``, or its
        three UTF-8-like bytes) or bytes that are not UTF-8 got no answer at all (its JSON is
        refused as not text, and it was taken for no twin command). It is answered 400
        ``json.invalid`` on the thing's errors topic, its correlation id kept, what cannot be
        encoded mended (U+FFFD); one log line; nothing changes, and the next command runs."""
        topic = b'"topic": "acme/gw1:sensor/things/twin/commands/modify"'
        for payload in (b'{' + topic + b', "path": "/attributes/a", "value": "\\ud800",'
                        b' "headers": {"correlation-id": "c9"}}',
                        b'{' + topic + b', "path": "/attributes/\xed\xa0\x80", "value": 1,'
                        b' "headers": {"correlation-id": "c9", "x": "\\udc00", "y": ["\\ud800"]}}'):
            self.clock.advance(11)  # (past the refused lines' 10 s)
            with capturedLogs() as events:
                out = self.send(payload)
            self.assertEqual([t for t, _ in out], ["command//acme:gw1:sensor/req//errors-response"], payload)
            answer = out[0][1]
            self.assertEqual((answer["status"], answer["value"]["error"]), (400, "json.invalid"))
            self.assertIn("the command is not Unicode text: ", answer["value"]["message"])
            self.assertEqual(answer["headers"]["correlation-id"], "c9")
            self.assertEqual(answer["topic"], "acme/gw1:sensor/things/twin/errors")
            json.dumps(answer, ensure_ascii=False).encode("utf-8")  # (Unicode text: it could be sent)
            lines = [formatEvent(e) for e in events]
            self.assertEqual(len(lines), 1, lines)
            self.assertIn("refused: 400 the command is not Unicode text", lines[0])
        self.assertEqual(out[0][1]["headers"].get("x"), "\ufffd")
        self.assertNotIn("y", out[0][1]["headers"])
        self.assertNotIn("acme:gw1:sensor", self.twin.store.things)
        self.assertEqual(self.send(b'{"topic": "a/b/things/other", "x": "\\ud800"}'), [])  # (no twin command)
        out = self.send(command("modify", "/attributes/a", 1))
        self.assertEqual([t for t, _ in out], ["command///req//created", "command///req//modify-response"])

    def test_response_not_required(self) -> None:
        """response-required: false gives the event only (errors are only logged)."""
        out = self.send(command("modify", "/attributes/a", 1, **{"response-required": False}))
        self.assertEqual([t for t, _ in out], ["command///req//created"])
        self.assertEqual(self.send(command("retrieve", "/attributes/b", **{"response-required": False})), [])

    def test_other_events_ignored(self) -> None:
        """Ordinary events on e/# (not JSON, not Ditto twin commands) are none of the twin's business."""
        self.assertEqual(self.send(b"not json"), [])
        self.assertEqual(self.send({"topic": "a/b/things/live/messages/hello", "path": "/"}), [])
        self.assertEqual(self.send({"temperature": 3}), [])
        self.assertEqual(self.send(b"[" * 100000), [])  # nested too deeply to parse: not JSON either

    def test_survives_restart(self) -> None:
        """What was acknowledged is in things.json; a new service reads it back."""
        self.send(command("modify", "/features/f/properties/x", 1))
        self.successResultOf(self.twin.stopService())
        self.bus.subscriptions.clear()
        twin = self.start()
        self.assertEqual(twin.store.things[ROOT]["features"]["f"]["properties"], {"x": 1})
        self.assertEqual(twin.store.revisions[ROOT], 2)
        data = json.loads((self.dir / "twin" / "things.json").read_bytes())
        self.assertIn(ROOT, data["things"])

    def test_a_change_encodes_only_the_thing_it_changed(self) -> None:
        """things.json is rewritten whole on each change, but only the things changed since
        the last write are encoded again (a twin of 3,000 things took 50-80 ms of the reactor
        per write, encoding all of them); the file is the same JSON as before. The changed thing
        is encoded once: the size check's bytes are the ones written."""
        from gateway.twin import service, store

        for i in range(50):
            self.send(command("create", "/", {"attributes": {"n": i}}, thing=f"{ROOT}:c{i}"))
        encoded: list[Any] = []
        encode = store.encode_thing
        for module in (service, store):
            self.patch(module, "encode_thing", lambda thing: encoded.append(thing) or encode(thing))
        self.send(command("modify", "/attributes/n", -1, thing=f"{ROOT}:c7"))
        self.send(command("delete", "/", thing=f"{ROOT}:c8"))
        self.assertEqual(encoded, [{"attributes": {"n": -1}, "thingId": f"{ROOT}:c7"}])
        things = self.twin.store.things
        self.assertEqual(len(things), 50)
        self.assertEqual((self.dir / "twin" / "things.json").read_bytes(), json.dumps(
            {"things": things, "revisions": self.twin.store.revisions}, sort_keys=True).encode())

    def test_the_gateways_own_thing_deleted_is_made_afresh_at_the_next_start(self) -> None:
        """A delete of / on the gateway's own thing removes it like any thing (its commands are
        then 404 until a create); the next start makes it afresh, empty, with a later revision."""
        self.send(command("modify", "/attributes/a", 1))
        out = self.send(command("delete", "/"))
        self.assertEqual([(t, m.get("status")) for t, m in out],
                         [("command///req//deleted", None), ("command///req//delete-response", 204)])
        out = self.send(command("modify", "/attributes/a", 2))
        self.assertEqual(out[0][1]["value"]["status"], 404)
        self.successResultOf(self.twin.stopService())
        self.bus.subscriptions.clear()
        twin = self.start()
        self.assertEqual(twin.store.things[ROOT], {"thingId": ROOT, "attributes": {}, "features": {}})
        self.assertEqual(twin.store.revisions[ROOT], 4)

    def test_revisions_of_deleted_things_are_bounded(self) -> None:
        """Things created and deleted under ever new ids leave a bounded trace: the revisions
        of the last MAX_DELETED_REVISIONS deleted things are kept (one created again goes on
        from its revision), older ones are forgotten. Every deleted thing's revision stayed in
        memory and in things.json, rewritten whole on each change, for good."""
        from gateway.twin import store

        self.patch(store, "MAX_DELETED_REVISIONS", 3)
        for i in range(10):
            self.send(command("create", "/", {"attributes": {}}, thing=f"{ROOT}:c{i}"))
            self.send(command("delete", "/", thing=f"{ROOT}:c{i}"))
        self.assertEqual(sorted(self.twin.store.revisions), [ROOT, f"{ROOT}:c7", f"{ROOT}:c8", f"{ROOT}:c9"])
        out = self.send(command("create", "/", {"attributes": {}}, thing=f"{ROOT}:c8"))
        self.assertEqual(out[0][1]["revision"], 3)  # created, deleted, created again
        self.send(command("create", "/", {"attributes": {}}, thing=f"{ROOT}:c1"))  # forgotten: from 1
        self.assertEqual(self.twin.store.revisions[f"{ROOT}:c1"], 1)
        self.successResultOf(self.twin.stopService())
        self.bus.subscriptions.clear()
        self.patch(store, "MAX_DELETED_REVISIONS", 1)  # a file holding more than the bound
        twin = self.start()
        self.assertEqual(sorted(twin.store.revisions), [ROOT, f"{ROOT}:c1", f"{ROOT}:c8", f"{ROOT}:c9"])

    def test_an_unusable_file_is_set_aside_and_the_twin_starts(self) -> None:
        """A things.json that is not JSON, or not a twin file, no longer keeps the twin (and with
        it the whole gateway) from starting: it is moved aside to things.json.damaged, kept as it
        was, and the twin starts with the gateway's own thing, answering commands again."""
        self.successResultOf(self.twin.stopService())
        path = self.dir / "twin" / "things.json"
        for text in ('{"things": ', '{"things": {}}', '{"things": {"acme:gw1": 5}, "revisions": {}}',
                     '{"things": {}, "revisions": {"acme:gw1": "x"}}'):
            path.write_text(text)
            self.bus.subscriptions.clear()
            twin = self.start()
            self.assertEqual((self.dir / "twin" / "things.json.damaged").read_text(), text)
            self.assertEqual(twin.store.things, {ROOT: {"thingId": ROOT, "attributes": {}, "features": {}}})
            out = self.send(command("modify", "/attributes/a", 1))
            self.assertEqual([topic for topic, _ in out], ["command///req//created", "command///req//modify-response"])
            self.assertEqual(json.loads(path.read_bytes())["things"][ROOT]["attributes"], {"a": 1})
            self.successResultOf(twin.stopService())

    def test_values_no_json_holds_are_set_to_null_and_told_once(self) -> None:
        """docs/twin.md: a things.json written by an older version holding ``NaN`` or
        ``Infinity`` (a command it took) loads with those values set to null, one warning per
        thing naming each path and its value, and written at once: the next start says nothing.
        They were kept, and went into every retrieve and shadow update (which AWS IoT refuses for
        good). A revision of ``Infinity`` (no version writes one) sets the file aside as any
        damaged file: it stopped the twin's start with an OverflowError."""
        self.successResultOf(self.twin.stopService())
        path = self.dir / "twin" / "things.json"
        saved = json.loads(path.read_bytes())
        saved["things"][ROOT]["features"] = {"t": {"properties": {"a/b": float("nan"), "l": [1, float("-inf")]}}}
        saved["things"][ROOT]["attributes"] = {"x": float("inf"), "y": 2.5}
        path.write_text(json.dumps(saved))
        self.bus.subscriptions.clear()
        with capturedLogs() as events:
            twin = self.start()
        said = [formatEvent(e) for e in events if "no JSON" in formatEvent(e)]
        self.assertEqual(said, [f"twin: thing {ROOT} in {path} held values that are no JSON, set to null (stored by"
                                " an older version; AWS IoT and the twin's events take no NaN or Infinity):"
                                " /attributes/x (Infinity), /features/t/properties/a~1b (NaN),"
                                " /features/t/properties/l/1 (-Infinity)"])
        thing = twin.store.things[ROOT]
        self.assertEqual((thing["attributes"], thing["features"]["t"]["properties"]),
                         ({"x": None, "y": 2.5}, {"a/b": None, "l": [1, None]}))
        on_disk = json.loads(path.read_bytes(), parse_constant=lambda name: self.fail(name))
        self.assertEqual(on_disk["things"][ROOT]["attributes"], {"x": None, "y": 2.5})
        self.successResultOf(twin.stopService())
        self.bus.subscriptions.clear()
        with capturedLogs() as events:
            twin = self.start()
        self.assertEqual([e for e in events if "no JSON" in formatEvent(e)], [])
        self.successResultOf(twin.stopService())
        path.write_text('{"things": {}, "revisions": {"acme:gw1": Infinity}}')
        self.bus.subscriptions.clear()
        twin = self.start()
        self.assertTrue((self.dir / "twin" / "things.json.damaged").exists())
        self.assertIn(ROOT, twin.store.things)

    def test_a_revision_that_is_not_a_whole_number_makes_the_file_unusable(self) -> None:
        """docs/twin.md: a revision that is not a whole number makes things.json one the twin
        cannot use (set aside, the twin starts without its things), as ``Infinity`` does: ``1.5``
        and ``true`` were taken as revision 1, a revision the twin never gave. ``3.0`` is 3."""
        self.successResultOf(self.twin.stopService())
        path = self.dir / "twin" / "things.json"
        for revision in ("1.5", "true", '"2"'):
            path.write_text('{"things": {"acme:gw1:s": {"thingId": "acme:gw1:s"}}, "revisions": {"acme:gw1:s": %s}}'
                            % revision)
            self.bus.subscriptions.clear()
            twin = self.start()
            self.assertTrue((self.dir / "twin" / "things.json.damaged").exists(), revision)
            self.assertNotIn("acme:gw1:s", twin.store.things)
            self.successResultOf(twin.stopService())
        path.write_text('{"things": {"acme:gw1:s": {"thingId": "acme:gw1:s"}}, "revisions": {"acme:gw1:s": 3.0}}')
        self.bus.subscriptions.clear()
        twin = self.start()
        self.assertEqual(twin.store.revisions["acme:gw1:s"], 3)
        self.successResultOf(twin.stopService())

    def test_a_start_whose_first_write_the_disk_refuses_serves_on(self) -> None:
        """A start with no usable things.json (none, set aside, or a file where the twin's
        directory belongs) on a disk that refuses writes (full or read-only at boot): the
        gateway's own thing, made afresh, is kept in memory and written with the next write the
        disk takes; the refusal is one error line, and the twin serves (a change is answered
        503 while the disk refuses it, a retrieve 200). The twin's start failed with the
        OSError, and the whole gateway with it ('gateway failed to start: [Errno 28] No space
        left on device'); the stop that followed failed too, logged critical with a traceback."""
        runner = HeldRunner()
        self.bus.subscriptions.clear()
        twin = TwinService(TwinSettings(), Path(self.mktemp()), self.clock, self.bus, ("acme", "gw1"), runner)
        with capturedLogs() as events:
            d = twin.startService()
            runner.run_one()  # read: no file
            runner.run_one(fail=OSError(errno.ENOSPC, "No space left on device"))  # the root thing's
            self.successResultOf(d)
        self.assertEqual([e["log_format"].split(" (")[0] for e in events], ["twin: cannot write {path}"])
        self.assertEqual(events[0]["error"], "[Errno 28] No space left on device")
        self.assertEqual(self.flushLoggedErrors(OSError), [])
        self.bus.deliver("e", command("modify", "/attributes/a", 1))
        runner.run_one(fail=OSError(errno.ENOSPC, "No space left on device"))
        self.assertEqual(self.bus.take()[0][1]["value"]["status"], 503)
        self.bus.deliver("e", command("retrieve", "/attributes"))
        runner.run_one()  # (a retrieve waits for the changes not written yet: written now)
        [(topic, answer)] = self.bus.take()
        self.assertEqual((topic, answer["status"], answer["value"]), ("command///req//retrieve-response", 200, {"a": 1}))
        self.assertEqual(json.loads((twin.store.path).read_bytes())["things"][ROOT]["attributes"], {"a": 1})

    def test_a_stop_whose_last_write_the_disk_refuses_is_one_log_line(self) -> None:
        """A stop with changes the disk refused (answered 503 to the apps: nothing they were
        told is lost) on a disk that still refuses them ends all the same, logging one error
        line; it failed, which the gateway logged as 'stopping twin failed', critical, with a
        traceback, the way a bug is logged."""
        twin, runner = self.twin_on_held_writes()
        self.bus.deliver("e", command("modify", "/attributes/a", 1))
        runner.run_one(fail=OSError(errno.ENOSPC, "No space left on device"))
        self.bus.take()
        with capturedLogs() as events:
            stopped = twin.stopService()
            runner.run_one(fail=OSError(errno.ENOSPC, "No space left on device"))
            self.successResultOf(stopped)
        self.assertEqual([e["log_format"].split(" (")[0] for e in events], ["twin: cannot write {path}"])
        self.assertEqual(self.flushLoggedErrors(OSError), [])

    def test_nothing_announced_before_durable(self) -> None:
        """Event and response wait for the write; writes while one runs go together in the next."""
        runner = HeldRunner()
        self.bus.subscriptions.clear()
        self.dir = Path(self.mktemp())
        twin = TwinService(TwinSettings(), self.dir, self.clock, self.bus, ("acme", "gw1"), runner)
        d = twin.startService()
        runner.run_one()  # read
        runner.run_one()  # the root thing's first write
        self.successResultOf(d)
        self.bus.deliver("e", command("modify", "/attributes/a", 1))
        self.bus.deliver("e", command("modify", "/attributes/b", 2))
        self.bus.deliver("e", command("retrieve", "/attributes/a"))
        self.assertEqual(self.bus.take(), [])
        self.assertEqual(len(runner.pending), 1)
        runner.run_one()
        self.assertEqual([t for t, _ in self.bus.take()], ["command///req//created", "command///req//modify-response"])
        runner.run_one()  # a and b's second change, and the retrieve waiting for it
        self.assertEqual([t for t, _ in self.bus.take()], [
            "command///req//created", "command///req//modify-response", "command///req//retrieve-response"])

    def started_on_held_writes(self) -> HeldRunner:
        """A twin (in place of the test's) whose file writes wait for the test to run them."""
        return self.twin_on_held_writes()[1]

    def twin_on_held_writes(self) -> tuple[TwinService, HeldRunner]:
        """:meth:`started_on_held_writes`, with the twin."""
        runner = HeldRunner()
        self.bus.subscriptions.clear()
        twin = TwinService(TwinSettings(), Path(self.mktemp()), self.clock, self.bus, ("acme", "gw1"), runner)
        d = twin.startService()
        runner.run_one()
        runner.run_one()
        self.successResultOf(d)
        return twin, runner

    def test_things_past_max_things_are_refused_and_counted(self) -> None:
        """docs/twin.md: the twin holds ``max_things`` things at most (the gateway's own
        included). A command that would create one more is refused with 403 (nothing stored,
        no event), counted in the snapshot's ``things_refused`` and said once in a warning;
        the things held still change, and deleting one makes room again."""
        self.successResultOf(self.twin.stopService())  # (one twin on the bus)
        twin = TwinService(TwinSettings(max_things=3), self.dir / "capped", self.clock, self.bus, ("acme", "gw1"),
                           run_now)
        self.successResultOf(twin.startService())
        self.bus.take()
        for child in ("a", "b"):
            self.send(command("create", "/", {}, thing=f"acme:gw1:{child}"))
        with capturedLogs() as events:
            for verb, child in (("create", "c"), ("modify", "d"), ("merge", "e")):
                out = self.send(command(verb, "/", {}, thing=f"acme:gw1:{child}"))
                self.assertEqual([topic for topic, _ in out], [f"command//acme:gw1:{child}/req//errors-response"])
                self.assertEqual((out[0][1]["status"], out[0][1]["value"]["error"]),
                                 (403, "things:thing.notcreatable"))
                self.assertIn("max_things (3)", out[0][1]["value"]["message"])
        warnings = [formatEvent(e) for e in events if "max_things" in formatEvent(e) and e["log_level"].name == "warn"]
        self.assertEqual(len(warnings), 1, warnings)
        snap = twin.snapshot()
        self.assertEqual((snap.things, snap.max_things, snap.things_refused), (3, 3, 3))
        self.assertNotIn("acme:gw1:c", json.loads((self.dir / "capped" / "twin" / "things.json").read_text())["things"])
        out = self.send(command("modify", "/attributes/x", 1, thing="acme:gw1:a"))
        self.assertEqual(out[-1][1]["status"], 201)
        self.send(command("delete", "/", thing="acme:gw1:b"))
        out = self.send(command("create", "/", {}, thing="acme:gw1:c"))
        self.assertEqual(out[-1][1]["status"], 201)
        # The gateway's own thing is never refused, and keeps its place while deleted: a child
        # created meanwhile took it, and the twin held 4 things past its max_things of 3.
        self.send(command("delete", "/"))
        out = self.send(command("create", "/", {}, thing="acme:gw1:d"))
        self.assertEqual((out[-1][1]["status"], out[-1][1]["value"]["message"][:29]),
                         (403, "the twin holds 3 things, its "))
        out = self.send(command("create", "/", {}))
        self.assertEqual((out[-1][1]["status"], twin.snapshot().things), (201, 3))

    def test_the_snapshot_has_the_last_writes_time_and_size(self) -> None:
        """The snapshot has how long the last write of things.json that worked took, from its
        hand-over to the thread until durable on the clock, and the file's size; a failed
        write leaves them: /metrics said nothing of how long a change waited for the disk."""
        twin, runner = self.twin_on_held_writes()
        self.assertEqual((twin.snapshot().save_s, twin.snapshot().save_bytes),
                         (0.0, twin.store.path.stat().st_size))  # the root thing's first write
        self.bus.deliver("e", command("modify", "/attributes/a", 1))
        self.clock.advance(0.5)  # a slow card
        runner.run_one()
        size = twin.store.path.stat().st_size
        self.assertEqual((twin.snapshot().save_s, twin.snapshot().save_bytes), (0.5, size))
        self.bus.deliver("e", command("modify", "/attributes/a", 2))
        self.clock.advance(3)
        runner.run_one(fail=OSError(errno.ENOSPC, "No space left on device"))
        self.assertEqual((twin.snapshot().save_s, twin.snapshot().save_bytes), (0.5, size))

    def test_the_snapshot_says_while_writes_fail(self) -> None:
        """While the disk refuses the twin's writes (every change answered 503), its snapshot
        says so (save_failing: the error, since when, how many; the status gives it as the
        twin's error), and no more once a write works: the twin showed ``running``, nothing else."""
        twin, runner = self.twin_on_held_writes()
        self.assertIsNone(twin.snapshot().save_failing)
        self.clock.advance(5)
        began = self.clock.seconds()
        for value in (1, 2):
            self.bus.deliver("e", command("modify", "/attributes/a", value))
            runner.run_one(fail=OSError(errno.ENOSPC, "No space left on device"))
            self.clock.advance(1)
        self.assertEqual(twin.snapshot().save_failing,
                         Degraded("not-saved", "[Errno 28] No space left on device", began, 2))
        self.bus.deliver("e", command("modify", "/attributes/a", 3))
        runner.run_one()
        self.assertIsNone(twin.snapshot().save_failing)

    def test_write_failure_is_an_error_response(self) -> None:
        """A change the disk refused is answered 503, with no event."""
        runner = self.started_on_held_writes()
        self.bus.deliver("e", command("modify", "/attributes/a", 1))
        runner.run_one(fail=OSError("disk full"))
        out = self.bus.take()
        self.assertEqual([t for t, _ in out], ["command///req//errors-response"])
        self.assertEqual(out[0][1]["value"]["status"], 503)
        self.flushLoggedErrors(OSError)

    def test_a_write_the_disk_refuses_is_one_log_line(self) -> None:
        """A change the disk refused (full, read-only) is logged as the refusal it is answered
        with, one line naming the error; it was a critical log with a traceback besides, at
        every change an app sent to a gateway on a full disk (seen on a real gateway on a full
        tmpfs), the way a bug is logged."""
        runner = self.started_on_held_writes()
        with capturedLogs() as events:
            self.bus.deliver("e", command("modify", "/attributes/a", 1))
            runner.run_one(fail=OSError(errno.ENOSPC, "No space left on device"))
        self.assertEqual([(e["log_format"].split(":")[0], e["status"]) for e in events],
                         [("twin command on {topic} {path} refused", 503)])
        self.assertNotIn("log_failure", events[0])
        self.assertEqual(self.flushLoggedErrors(OSError), [])
        answer = self.bus.take()[0][1]
        self.assertEqual(answer["value"]["message"], "the change was not stored: [Errno 28] No space left on device")

    def test_changes_the_disk_refuses_are_logged_once_a_minute(self) -> None:
        """docs/twin.md: on a read-only disk every change an app sends is refused (503); each
        was a log line (an app changing a property ten times a second wrote 36,000 lines an
        hour, seen on a real gateway whose ext4 the kernel remounted read-only). The first is
        logged, then at most once a minute with how many were refused since; once a write
        works, the next refusal is logged at once again."""
        runner = self.started_on_held_writes()
        read_only = OSError(errno.EROFS, "Read-only file system")
        values = iter(range(1000))  # each change sets a new value: one the twin holds changes nothing

        def changes(seconds: int, fail: OSError | None = read_only) -> list[str]:
            with capturedLogs() as events:
                for _ in range(seconds):
                    self.bus.deliver("e", command("modify", "/attributes/a", next(values)))
                    runner.run_one(fail=fail)
                    self.clock.advance(1)
            return [formatEvent(e) for e in events if e["log_format"].startswith("twin command")]

        line = ("twin command on acme/gw1/things/twin/commands/modify /attributes/a refused: 503 the change was not"
                " stored: [Errno 30] Read-only file"
                " system ({count} refused so since the last such line; logged at most once a minute while the disk"
                " refuses the twin's writes)")
        self.assertEqual(changes(60), [line.format(count=1)])
        self.assertEqual(changes(2), [line.format(count=60)])
        self.assertEqual(changes(1, fail=None), [])  # remounted read-write: the write works
        self.assertEqual(changes(1), [line.format(count=1)])
        self.assertEqual(len([t for t, _ in self.bus.take() if t.endswith("errors-response")]), 63)

    def test_a_refusal_resting_on_a_change_not_durable_yet_waits_for_it(self) -> None:
        """A second create of a thing whose create is still being written is refused (409) only
        after that create is durable and announced: it answered at once, telling of a thing that a
        failing write would then answer 503 for. When the write fails the refusal is 503 too."""
        child = f"{ROOT}:sensor"
        runner = self.started_on_held_writes()
        self.bus.deliver("e", command("create", "/", {"attributes": {}}, thing=child))
        self.bus.deliver("e", command("create", "/", {"attributes": {}}, thing=child))
        self.assertEqual(self.bus.take(), [])
        runner.run_one()
        self.assertEqual([t for t, _ in self.bus.take()],
                         [f"command//{child}/req//created", f"command//{child}/req//create-response"])
        runner.run_one()  # (the refusal waits for a write holding all made before it)
        self.assertEqual([(t, m["value"]["status"]) for t, m in self.bus.take()],
                         [(f"command//{child}/req//errors-response", 409)])

        self.bus.deliver("e", command("delete", "/", thing=child))
        self.bus.deliver("e", command("delete", "/", thing=child))
        self.assertEqual(self.bus.take(), [])
        runner.run_one(fail=OSError("disk full"))
        runner.run_one(fail=OSError("disk full"))  # the refusal's wait for the delete, written again
        self.assertEqual([(t, m["value"]["status"]) for t, m in self.bus.take()],
                         [(f"command//{child}/req//errors-response", 503)] * 2)
        self.flushLoggedErrors(OSError)

    def test_validator_refuses(self) -> None:
        """A validator (the shadow sync's size check) refuses a change: nothing changes."""
        def refuse(thing_id: str, before: Any, after: Any) -> None:
            raise DittoError(413, "things:shadow.toolarge", "too large")
        self.twin.validators.append(refuse)
        out = self.send(command("modify", "/attributes/a", 1))
        self.assertEqual(out[0][1]["value"]["status"], 413)
        self.assertEqual(self.twin.store.things[ROOT].get("attributes"), {})

    def test_desired_from_cloud(self) -> None:
        """A shadow delta goes into desiredProperties and out as a `merged` event, no response."""
        self.successResultOf(self.twin.apply_desired(ROOT, "lamp", {"on": True}))
        out = self.bus.take()
        self.assertEqual([t for t, _ in out], ["command///req//merged"])
        self.assertEqual(out[0][1]["path"], "/features/lamp/desiredProperties")
        self.assertEqual(self.twin.store.things[ROOT]["features"]["lamp"], {"desiredProperties": {"on": True}})

    def told_listener(self, twin: TwinService) -> list[tuple[str, Any, Any]]:
        """The ``(thing, before, after)`` the twin tells its change listeners (the shadow sync)."""
        told: list[tuple[str, Any, Any]] = []
        twin.listeners.append(lambda thing_id, before, after: told.append((thing_id, before, after)))
        return told

    def test_a_change_the_disk_refused_is_told_to_the_listeners_once_written(self) -> None:
        """A change the disk refused (answered 503) stays in memory and goes to disk with the
        next write that succeeds, but the change listeners were never told of it: the shadow
        sync sent the next change's difference only, and the cloud never had the first one
        (things.json did). It is told with that write now, before the next change, as that
        write holds it."""
        twin, runner = self.twin_on_held_writes()
        told = self.told_listener(twin)
        self.bus.deliver("e", command("modify", "/attributes/a", 1))
        runner.run_one(fail=OSError("disk full"))
        self.assertEqual(told, [])
        self.bus.deliver("e", command("modify", "/attributes/b", 2))
        runner.run_one()
        empty = {"thingId": ROOT, "attributes": {}, "features": {}}
        self.assertEqual(told, [(ROOT, empty, dict(empty, attributes={"a": 1})),
                                (ROOT, dict(empty, attributes={"a": 1}), dict(empty, attributes={"a": 1, "b": 2}))])
        self.flushLoggedErrors(OSError)

    def test_a_refused_change_is_told_with_any_write_that_holds_it(self) -> None:
        """The write that puts a refused change on disk may be another thing's, or the one a
        retry of the same change waits for (a retry changes nothing, so it told nobody, and
        was answered 204): the listeners are told then too."""
        twin, runner = self.twin_on_held_writes()
        told = self.told_listener(twin)
        self.bus.deliver("e", command("modify", "/attributes/a", 1))
        runner.run_one(fail=OSError("disk full"))
        self.bus.deliver("e", command("modify", "/attributes/a", 1))  # the app sends it again
        runner.run_one()
        self.assertEqual([(t, b["attributes"], a["attributes"]) for t, b, a in told], [(ROOT, {}, {"a": 1})])
        self.bus.deliver("e", command("modify", "/attributes/c", 1))
        runner.run_one(fail=OSError("disk full"))
        self.bus.deliver("e", command("create", "/", {}, thing=f"{ROOT}:child"))
        runner.run_one()
        self.assertEqual([(t, b and b["attributes"], a.get("attributes")) for t, b, a in told[1:]],
                         [(ROOT, {"a": 1}, {"a": 1, "c": 1}), (f"{ROOT}:child", None, None)])
        self.flushLoggedErrors(OSError)

    def test_a_refused_change_written_by_the_stop_is_told(self) -> None:
        """The last write, at a stop, holds a change the disk refused before: the listeners
        (the shadow sync journals until the twin stops) are told before they are let go."""
        twin, runner = self.twin_on_held_writes()
        told = self.told_listener(twin)
        self.bus.deliver("e", command("modify", "/attributes/a", 1))
        runner.run_one(fail=OSError("disk full"))
        stopped = twin.stopService()
        runner.run_one()
        self.successResultOf(stopped)
        self.assertEqual([(t, b["attributes"], a["attributes"]) for t, b, a in told], [(ROOT, {}, {"a": 1})])
        self.flushLoggedErrors(OSError)

    def test_retrieve_behind_a_failed_write_is_answered_503(self) -> None:
        """A retrieve waits for pending writes; when the write it waits for fails it is
        answered 503 like the change (twin.md: if a write fails, the command is answered
        503), not left without any answer."""
        runner = self.started_on_held_writes()
        self.bus.deliver("e", command("modify", "/attributes/a", 1))
        self.bus.deliver("e", command("retrieve", "/attributes/a", **{"correlation-id": "r1"}))
        runner.run_one(fail=OSError("disk full"))  # the modify's write
        runner.run_one(fail=OSError("disk full"))  # the write the retrieve waits for
        out = self.bus.take()
        self.assertEqual([t for t, _ in out], ["command///req//errors-response", "command///req//errors-response"])
        answer = out[1][1]
        self.assertEqual(answer["topic"], "acme/gw1/things/twin/errors")
        self.assertEqual(answer["headers"]["correlation-id"], "r1")
        self.assertEqual((answer["status"], answer["value"]["status"]), (503, 503))
        self.flushLoggedErrors(OSError)

    def test_retrieve_after_a_failed_write_waits_for_a_new_write(self) -> None:
        """A change whose write failed is not durable until a later write holds it
        (twin.md: a retrieve never shows a change that is not durable yet; the change goes to
        disk with the next write that succeeds): a retrieve once that write has failed writes
        again and answers with the change only once it is on disk, or 503 when the disk
        still refuses it; it answered the change at once, from memory."""
        runner = self.started_on_held_writes()
        self.bus.deliver("e", command("modify", "/attributes/a", 1))
        runner.run_one(fail=OSError("disk full"))
        self.bus.take()
        self.bus.deliver("e", command("retrieve", "/attributes/a", **{"correlation-id": "r1"}))
        self.assertEqual(self.bus.take(), [])  # waits for a write
        runner.run_one(fail=OSError("disk full"))
        out = self.bus.take()
        self.assertEqual([(t, a["value"]["status"]) for t, a in out], [("command///req//errors-response", 503)])
        self.bus.deliver("e", command("retrieve", "/attributes/a", **{"correlation-id": "r2"}))
        runner.run_one()  # space is back: the change is on disk now
        out = self.bus.take()
        self.assertEqual([(t, a["status"], a["value"]) for t, a in out], [("command///req//retrieve-response", 200, 1)])
        self.flushLoggedErrors(OSError)

    def test_messages_refused_are_logged_once_per_interval(self) -> None:
        """While the journal refuses every twin message (a stream full for hours, an app
        reading its twin every 10 s) the first refusal is a warning, then at most one every 10
        minutes with their count, and the first after a message published again at once: each
        refused message was a warning."""
        refusing = [True]
        publish = self.bus.publish

        def refused(topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> Deferred[None]:
            if refusing[0]:
                return fail(StreamFullError("link-cloud", "max-bytes"))
            return publish(topic, payload, qos, retain)

        self.patch(self.bus, "publish", refused)
        with capturedLogs() as events:
            for _ in range(120):  # 20 minutes
                self.send(command("retrieve", "/attributes"))
                self.clock.advance(10)
        lines = [formatEvent(e) for e in events if "not published" in e.get("log_format", "")]
        self.assertEqual(len(lines), 2, lines)  # at 0 and 600 s
        self.assertEqual(lines[1], "twin message on command///req//retrieve-response not published: journal stream"
                                   " 'link-cloud' is full (max-bytes); append rejected (60 not published since the"
                                   " last such line; logged at most once every 10 minutes until one is)")
        refusing[0] = False
        self.send(command("retrieve", "/attributes"))
        refusing[0] = True
        with capturedLogs() as events:
            self.send(command("retrieve", "/attributes"))
        self.assertEqual(len([e for e in events if "not published" in e.get("log_format", "")]), 1)
