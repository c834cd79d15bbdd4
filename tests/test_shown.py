"""gateway/shown.py: what an answer or a log line repeats of a client's request is the
whole of it up to 100 characters, else its first 100 and its length (docs/topics.md)."""

from __future__ import annotations

import json
import sys
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from gateway.shown import SHOWN_CHARS, shown, shown_repr


def nested(depth: int) -> list[Any]:
    """``[[...[]...]]``, ``depth`` lists deep, made without recursion."""
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


class ShownTests(SynchronousTestCase):
    """Text a client sent, as :func:`shown` repeats it."""

    def test_short_text_whole_long_text_cut_with_its_length(self) -> None:
        """100 characters are repeated whole; 101 as the first 100 and the length."""
        self.assertEqual(shown("x" * SHOWN_CHARS), "x" * SHOWN_CHARS)
        self.assertEqual(shown("x" * 70000), "x" * SHOWN_CHARS + "... (70000 characters)")


class ShownReprTests(SynchronousTestCase):
    """A value of the wrong type, as :func:`shown_repr` repeats it: as Python writes it,
    whole up to 100 characters, else its first 100 and its length."""

    def test_a_short_list_is_repeated_whole(self) -> None:
        """Seven items of a list are all there (they were cut to six, ``[1, 2, 3, 4, 5, 6,
        ...]``, though the whole is 21 characters), and so are a short value's levels."""
        self.assertEqual(shown_repr([1, 2, 3, 4, 5, 6, 7]), "[1, 2, 3, 4, 5, 6, 7]")
        self.assertEqual(shown_repr({"a": [[[[1]]]], "b": None}), "{'a': [[[[1]]]], 'b': None}")
        self.assertEqual(shown_repr([True, 1.5, (2,), ()]), "[True, 1.5, (2,), ()]")

    def test_a_long_value_is_its_first_100_characters_and_its_length(self) -> None:
        """A long list is its text's first 100 characters and how long that text is (it was
        six items and no length); a long string in it is not cut in its middle."""
        value = [1] * 80
        self.assertEqual(shown_repr(value), repr(value)[:SHOWN_CHARS] + "... (240 characters)")
        inner = ["s" * 150]
        self.assertEqual(shown_repr(inner), repr(inner)[:SHOWN_CHARS] + "... (154 characters)")
        number = 10 ** 150
        self.assertEqual(shown_repr(number), str(number)[:SHOWN_CHARS] + "... (151 characters)")

    def test_exactly_100_characters_are_whole(self) -> None:
        """The edge: a value of 100 characters whole, of 101 cut."""
        self.assertEqual(shown_repr(["x" * 96]), "['" + "x" * 96 + "']")
        self.assertEqual(shown_repr(["x" * 97]), "['" + "x" * 97 + "'... (101 characters)")

    def test_a_string_is_cut_then_quoted(self) -> None:
        """A string (where a number belongs...) is its text as :func:`shown` cuts it, quoted."""
        self.assertEqual(shown_repr("x" * 150), repr("x" * SHOWN_CHARS + "... (150 characters)"))
        self.assertEqual(shown_repr("a\nb"), "'a\\nb'")

    def test_a_value_deeper_than_python_writes(self) -> None:
        """A list nested deeper than Python's ``repr`` goes from here is written all the same,
        as it would write it, with its length."""
        depth = sys.getrecursionlimit() + 10
        value = nested(depth)
        self.assertRaises(RecursionError, repr, value)
        self.assertEqual(shown_repr(value), "[" * SHOWN_CHARS + f"... ({2 * depth} characters)")
        self.assertEqual(shown_repr({"k": nested(3)}), "{'k': [[[]]]}")

    def test_a_value_of_json_as_the_gateway_parses_it(self) -> None:
        """A JSON request's value: its text is Python's, as the error messages quote it."""
        value = json.loads('{"correlationId": [1, 2], "n": null, "t": true, "f": 0.5}')
        self.assertEqual(shown_repr(value), "{'correlationId': [1, 2], 'n': None, 't': True, 'f': 0.5}")

    def test_a_container_inside_itself(self) -> None:
        """A list that holds itself (YAML's aliases can make one) is ``[...]`` inside itself,
        as Python writes it, also where it is written in pieces."""
        value: list[Any] = []
        value.append(value)
        self.assertEqual(shown_repr(value), "[[...]]")
        deep = nested(sys.getrecursionlimit() + 10)
        deep.append(deep)
        self.assertTrue(shown_repr(deep).startswith("[" * SHOWN_CHARS + "... ("))

    def test_an_integer_of_more_digits_than_python_writes(self) -> None:
        """An integer past Python's limit of digits (``sys.set_int_max_str_digits``) is named
        by its size, not an error."""
        self.assertEqual(shown_repr([10 ** 5000, 1]), "[<an integer of 16610 bits>, 1]")
