"""Tests for gateway.twin.unparsed: the twin command a message too large to parse names."""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from gateway.twin.unparsed import command_topic

TOPIC = "acme/gw1/things/twin/commands/modify"


class CommandTopicTests(SynchronousTestCase):
    def test_the_top_level_topic_in_any_place(self) -> None:
        """The top-level object's ``topic`` names the command wherever it stands among the members,
        after members whose strings hold brackets and escaped quotes, after a byte order mark and
        white space."""
        members = {"headers": {"x": "}]{[\"\\"}, "path": "/a\"}", "list": [1, {"b": [2]}]}
        for text in (json.dumps({"topic": TOPIC, **members}), json.dumps({**members, "topic": TOPIC}),
                     "\ufeff \n{ \"topic\" :\t\"" + TOPIC + "\" }", json.dumps({"k": "topic", "n": -1.5e3, "topic": TOPIC})):
            self.assertEqual(command_topic(text.encode()), TOPIC, text)

    def test_a_command_topic_deeper_or_in_an_array_is_none(self) -> None:
        """A command topic in a nested object, in an array, in a string, or as the top-level topic
        of an array's object names no command; nor does a top-level ``topic`` that is no twin
        command's, whatever comes after it."""
        inner = {"topic": TOPIC}
        for value in ({"log": [inner]}, {"a": inner}, [inner], {"s": json.dumps(inner)},
                      {"topic": "acme/gw1/things/twin/events/modified", "again": inner},
                      {"topic": TOPIC + "/more"}, {"topic": 5, "x": inner}):
            self.assertIsNone(command_topic(json.dumps(value).encode()), value)

    def test_only_the_first_bytes_are_read(self) -> None:
        """The members are read as far as ``within``: a topic, or a member before it, cut there or
        after it names no command; text that is not JSON or is nested too deeply names none either."""
        text = json.dumps({"a": "x" * 100, "topic": TOPIC}).encode()
        self.assertEqual(command_topic(text, within=len(text)), TOPIC)
        self.assertIsNone(command_topic(text, within=len(text) - 3))
        self.assertIsNone(command_topic(text, within=50))
        self.assertIsNone(command_topic(b'{"a": ' + b"[" * 100_000 + b'], "topic": "' + TOPIC.encode() + b'"}'))
        self.assertIsNone(command_topic(b'{"a" 1, "topic": "' + TOPIC.encode() + b'"}'))
