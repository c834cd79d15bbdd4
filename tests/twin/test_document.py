"""Merge patches composed (gateway.twin.document.compose)."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from gateway.twin.document import MISSING, compose, merge_patch

#: Documents a composed patch must treat as the two patches in turn do.
TARGETS: list[Any] = [{}, {"a": {"x": 0, "y": 1}, "b": 1, "c": [1]}, {"a": 5, "b": {"q": 1}}, None]


class ComposeTests(SynchronousTestCase):
    def assertExact(self, first: Any, second: Any, composed: Any) -> None:
        """``composed`` is what compose gives, and does to every target what both in turn do."""
        self.assertEqual(compose(first, second), composed)
        for target in TARGETS:
            self.assertEqual(merge_patch(target, composed), merge_patch(merge_patch(target, first), second), target)

    def test_later_wins_nested_objects_are_merged(self) -> None:
        """A key in both takes the later value; objects in both are composed key by key."""
        self.assertExact({"a": {"x": 1, "y": 2}, "b": 1}, {"a": {"y": 3}, "b": 2, "c": [4]},
                         {"a": {"x": 1, "y": 3}, "b": 2, "c": [4]})

    def test_a_null_survives_so_the_cloud_deletes_too(self) -> None:
        """A null (a delete) stays in the composed patch, nested ones included, whether it comes
        first or last: applied, it still deletes."""
        self.assertExact({"a": {"x": None}, "b": None}, {"c": 1}, {"a": {"x": None}, "b": None, "c": 1})
        self.assertExact({"b": 1, "a": {"x": 1}}, {"b": None, "a": {"x": None}}, {"b": None, "a": {"x": None}})

    def test_a_key_deleted_then_set_again_is_set(self) -> None:
        """A null then a value: the value (an object after a scalar is the next case)."""
        self.assertExact({"b": None}, {"b": 7}, {"b": 7})
        self.assertExact({"a": {"x": None}}, {"a": {"x": [1]}}, {"a": {"x": [1]}})

    def test_an_object_after_a_null_or_a_scalar_does_not_compose(self) -> None:
        """After a null or a scalar, an object replaces what the document held, while one patch
        holding it would merge it into that: no patch does both in turn, so compose says so."""
        self.assertIs(compose({"a": None}, {"a": {"y": 2}}), MISSING)
        self.assertIs(compose({"a": {"x": 5}}, {"a": {"x": {"y": 2}}}), MISSING)
        self.assertIs(compose(None, {"y": 2}), MISSING)
