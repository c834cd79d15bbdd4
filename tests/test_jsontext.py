"""Parsing JSON from outside the code: every malformed text is a ValueError."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway import jsontext


class LoadsTests(SynchronousTestCase):
    """:func:`gateway.jsontext.loads` parses as ``json.loads`` and refuses all bad text alike."""

    def test_json_is_parsed(self) -> None:
        """Text and UTF-8 bytes give what ``json.loads`` gives."""
        self.assertEqual(jsontext.loads(b'{"a": [1, 2.5, null]}'), {"a": [1, 2.5, None]})
        self.assertEqual(jsontext.loads("[[[]]]"), [[[]]])

    def test_json_nested_too_deeply_is_a_value_error(self) -> None:
        """JSON deeper than Python's recursion limit is a ValueError, not a RecursionError."""
        for text in ("[" * 100000, '{"a":' * 100000):
            self.assertRaises(ValueError, jsontext.loads, text)

    def test_malformed_json_is_a_value_error(self) -> None:
        """Bad syntax and bytes that are no text are ValueErrors as before."""
        for data in (b"{", b"\xff\xfe\xff", b""):
            self.assertRaises(ValueError, jsontext.loads, data)
