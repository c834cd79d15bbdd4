"""Parsing JSON from outside the code: every malformed text is a ValueError."""

from __future__ import annotations

import datetime
import io
import json
from collections.abc import Iterator
from typing import Any

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

    def test_nesting_counts_objects_and_arrays(self) -> None:
        """Scalars are 0 deep, an empty object or array 1; the deepest branch counts."""
        self.assertEqual([jsontext.nesting(v) for v in (1, None, {}, [], {"a": [1]}, [{}, [[[]]], 2])],
                         [0, 0, 1, 1, 2, 4])

    def test_nesting_of_what_is_too_deep_to_recurse_over(self) -> None:
        """Nesting is counted without recursion, deeper than the recursion limit too."""
        value: object = 1
        for _ in range(5000):
            value = [value]
        self.assertEqual(jsontext.nesting(value), 5000)

    def test_malformed_json_is_a_value_error(self) -> None:
        """Bad syntax and bytes that are no text are ValueErrors as before."""
        for data in (b"{", b"\xff\xfe\xff", b""):
            self.assertRaises(ValueError, jsontext.loads, data)

    def test_a_lone_surrogate_is_a_value_error(self) -> None:
        """A string (or key) that is not Unicode text, escaped or as bytes, in str or bytes
        (UTF-8 or UTF-16), is refused; a surrogate pair is one character."""
        for data in (b'"\\ud800"', '["\\udfff"]', b'{"\\udc00": 1}', b'"\xed\xa0\x80"', '"\ud800"',
                     '{"a": [1, "x\\ud800"]}'.encode("utf-16")):
            self.assertRaises(ValueError, jsontext.loads, data)
        self.assertEqual(jsontext.loads(b'["\\ud83d\\ude00", "\\\\ud800"]'), ["\U0001f600", "\\ud800"])

    def test_strict_refuses_what_rfc_8259_does_not_allow(self) -> None:
        """With ``strict``: NaN and the infinities, a number too large for a float, an integer
        Python will not convert, and a key twice in one object are ValueErrors saying which;
        without it they parse as before (a stored state written so still reads)."""
        cases = {b'{"a": NaN}': "NaN is not JSON: a number is finite",
                 b'[1, -Infinity]': "-Infinity is not JSON: a number is finite",
                 b'{"x": 1e400}': "the number 1e400 is too large (at most about 1.8e308)",
                 b'{"x": ' + b"9" * 5000 + b'}': "an integer of 5000 digits is too long (at most 4300)",
                 b'{"a": {"force": true, "force": false}}': "key 'force' given twice in one object"}
        for data, error in cases.items():
            with self.subTest(data=data[:30]):
                self.assertEqual(str(self.assertRaises(ValueError, jsontext.loads, data, strict=True)), error)
        self.assertEqual(jsontext.loads(b'{"a": [1.5, {"b": 2}], "x": 1e308, "i": -12}', strict=True),
                         {"a": [1.5, {"b": 2}], "x": 1e308, "i": -12})
        self.assertEqual(jsontext.loads(b'{"f": 1, "f": 2}'), {"f": 2})

    def test_kind_names_a_value_in_jsons_words(self) -> None:
        """What was sent instead of an object is named as JSON names it, for errors."""
        self.assertEqual([jsontext.kind(jsontext.loads(text)) for text in
                          ("null", "true", "false", "5", "1.5", '"x"', "[1]", "{}")],
                         ["null", "true", "false", "a number", "a number", "a string", "an array", "an object"])

    def test_kind_names_a_configuration_value_in_yamls_words(self) -> None:
        """A configuration value (YAML, or JSON for a remote change) is named in the words
        the configuration docs use (a list, a mapping), YAML's own scalars among them, never
        by Python's type names (``list``, ``dict``, ``NoneType``, ``date``, ``bytes``)."""
        values = (None, True, 5, 1.5, "x", [1], {}, datetime.date(2026, 12, 5),
                  datetime.datetime(2026, 12, 5, 10, 0), b"\x00", {1})
        self.assertEqual([jsontext.kind(value, yaml=True) for value in values],
                         ["empty (null)", "the boolean true", "a number", "a number", "a string", "a list", "a mapping",
                          "a date", "a date and time", "binary data", "a set"])

    def test_given_shows_a_scalar_with_its_value(self) -> None:
        """What a configuration error says was given instead: text and numbers with their
        value (text quoted, cut as :func:`gateway.shown.shown` cuts it), dates as written,
        anything else by its kind alone."""
        self.assertEqual([jsontext.given(value) for value in
                          ("7", 7, 1.5, False, None, [1, 2], {"a": 1}, datetime.date(2026, 12, 5), "x" * 200)],
                         ["the text '7'", "the number 7", "the number 1.5", "the boolean false", "empty (null)", "a list",
                          "a mapping", "the date 2026-12-05", f"the text '{'x' * 100}... (200 characters)'"])

    def test_unknown_keys_names_the_first_few_and_the_known_ones(self) -> None:
        """A request's keys it does not take are named (the first three, each cut as a
        client's text is), then counted, then the keys it takes; none unknown: ``None``."""
        self.assertIsNone(jsontext.unknown_keys({"a": 1}, ("a", "b")))
        self.assertEqual(jsontext.unknown_keys({"a": 1, "c": 2}, ("b", "a")), "unknown key 'c' (known: a, b)")
        self.assertEqual(jsontext.unknown_keys({"c": 1}, ()),
                         "unknown key 'c' (this request takes none: send {} or no body)")
        self.assertEqual(jsontext.unknown_keys({"y" * 101: 1, "w": 2, "x": 3, "z": 4, "v": 5}, ("a",)),
                         f"unknown keys '{'y' * 100}... (101 characters)', 'w', 'x' and 2 more (known: a)")


class ReadCounter(io.BytesIO):
    """A file that notes how much each read asked for."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads: list[int] = []

    def read(self, size: int | None = -1, /) -> bytes:
        self.reads.append(-1 if size is None else size)
        return super().read(size)


def taken(data: bytes, arrays: tuple[str, ...] = ()) -> dict[str, Any]:
    """What :func:`jsontext.members` gives for ``data``, each streamed array taken whole into a list."""
    return {key: list(value) if isinstance(value, Iterator) else value
            for key, value in jsontext.members(io.BytesIO(data), arrays)}


class MembersTests(SynchronousTestCase):
    """:func:`gateway.jsontext.members` parses a JSON object from a file a member (an array's
    item) at a time, as ``json.loads`` parses it whole, and refuses what :func:`jsontext.loads` refuses."""

    TEXTS = ('{}', ' { } ', '{"a": 1}', '{"a":[1,2,{"b":[3]}],"c":"x","n":12345678901234567890,"f":-1.5e-3}',
             '{\n "a": [\n  [1, "\\u00e9\\ud83d\\ude00\\"\\\\"],\n  []\n ],\n "b": null, "t": true, "e": []\n}\n',
             '{"a": [], "a": [7]}', '{"a": "\u00e9\u4e2d"}')

    def test_every_text_parses_as_json_loads_parses_it_whatever_the_read_size(self) -> None:
        """Whatever the reads cut (one byte at a time, a number, an escape, a UTF-8 character
        in two), the members are json.loads's, in the file's order, arrays streamed or not; in
        UTF-16 and UTF-8 with a BOM too."""
        for size in (1, 2, 3, 7, 1 << 16):
            self.patch(jsontext, "READ_SIZE", size)
            for text in self.TEXTS:
                for data in (text.encode(), text.encode("utf-16"), text.encode("utf-8-sig")):
                    expected = json.loads(text)
                    self.assertEqual(taken(data), expected, (size, data))
                    self.assertEqual(taken(data, ("a", "e")), expected, (size, data))
                    self.assertEqual(list(dict(jsontext.members(io.BytesIO(data)))), list(expected))

    def test_what_loads_refuses_is_a_value_error(self) -> None:
        """Every text cut short, bad syntax, bytes that are no text, a lone surrogate, nesting
        too deep, anything after the object and JSON that is no object: a ValueError (as the
        member or item is reached), never another error, never a hang."""
        self.patch(jsontext, "READ_SIZE", 3)
        whole = self.TEXTS[3].encode()
        bad = [whole[:n] for n in range(len(whole))] + [
            b'{"a" 1}', b'{"a": 1,}', b'{"a": [1,]}', b'{"a": [1 2]}', b'{1: 2}', b'{"a": 1} x', b'{"a": 1}{}',
            b'{"a": "\xff"}', b'{"a": "\xc3"}', b'{"a": ["\\ud800"]}', b'{"a": [' + b"[" * 100000 + b"]}",
            b"[]", b"5", b"null", b"", b"[" * 100000]
        for data in bad:
            for arrays in ((), ("a",)):
                try:
                    taken(data, arrays)
                except ValueError:
                    continue
                self.fail(f"{data[:40]!r} parsed")
        self.assertEqual(str(self.assertRaises(ValueError, taken, b"[1]")), "not a JSON object")
        self.assertIn("nested too deeply", str(self.assertRaises(ValueError, taken, b"[" * 100000)))
        self.assertEqual(str(self.assertRaises(ValueError, taken, b'{"a": [1, 2] "b": 3}')),
                         "Expecting ',' delimiter: char 13")

    def test_an_array_is_read_an_item_at_a_time(self) -> None:
        """A streamed array's items are read as they are taken: the reads stay near the
        longest item, far below the file; what is left of an array untaken is skipped."""
        items = [{"n": n, "x": "y" * 2000} for n in range(500)]
        data = json.dumps({"head": 1, "a": items, "tail": [2]}).encode()
        file = ReadCounter(data)
        members = jsontext.members(file, ("a",))
        self.assertEqual(next(members), ("head", 1))
        key, value = next(members)
        self.assertEqual(next(value), items[0])
        self.assertLess(file.tell(), 100_000)
        self.assertEqual(list(value)[-1], items[-1])
        self.assertEqual(list(members), [("tail", [2])])
        self.assertGreater(len(file.reads), 10)
        self.assertLess(max(file.reads), 100_000)  # the file: over a megabyte
        skipped = jsontext.members(io.BytesIO(data), ("a",))
        self.assertEqual([key for key, _ in skipped], ["head", "a", "tail"])
