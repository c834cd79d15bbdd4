"""Kanto's thing-to-shadow mapping, shadow topics, and the merge-patch diff (pure functions)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gateway.twin import shadows
from gateway.twin.document import MISSING, diff, merge_patch

ROOT = "ex:root"


class MappingTests(SynchronousTestCase):
    def test_sections(self) -> None:
        """Kanto README's examples: root attributes -> classic, feature -> named; child -> C, C:F."""
        thing = {"attributes": {"location": {"lat": 44.6}}, "features": {"accelerometer": {"properties": {"x": 3.1}}}}
        self.assertEqual(shadows.shadow_sections(ROOT, ROOT, thing),
                         {"": {"location": {"lat": 44.6}}, "accelerometer": {"x": 3.1}})
        self.assertEqual(shadows.shadow_sections(ROOT, "ex:root:child", thing),
                         {"child": {"location": {"lat": 44.6}}, "child:accelerometer": {"x": 3.1}})

    def test_names(self) -> None:
        """The shadows' names alone are the sections' keys, in their order (none for no thing)."""
        thing = {"attributes": {"a": 1}, "features": {"f": {"properties": {"x": 1}}, "g": {}, "": None}}
        for thing_id in (ROOT, "ex:root:child"):
            for shown in (thing, {}, {"features": {"h": 3}}, None):
                self.assertEqual(shadows.shadow_names(ROOT, thing_id, shown),
                                 list(shadows.shadow_sections(ROOT, thing_id, shown)))

    def test_targets(self) -> None:
        """A named shadow is a child's attributes when that child exists, else a feature."""
        children = {"ex:root:child"}
        self.assertEqual(shadows.shadow_target(ROOT, "", children), (ROOT, None))
        self.assertEqual(shadows.shadow_target(ROOT, "child", children), ("ex:root:child", None))
        self.assertEqual(shadows.shadow_target(ROOT, "child:f", children), ("ex:root:child", "f"))
        self.assertEqual(shadows.shadow_target(ROOT, "lamp", children), (ROOT, "lamp"))

    def test_topics(self) -> None:
        """Classic and named shadow topics, both ways."""
        self.assertEqual(shadows.shadow_topic("t", "", "update"), "$aws/things/t/shadow/update")
        self.assertEqual(shadows.shadow_topic("t", "c:f", "get"), "$aws/things/t/shadow/name/c:f/get")
        self.assertEqual(shadows.parse_shadow_topic("t", "$aws/things/t/shadow/name/c:f/update/delta"),
                         ("c:f", "update/delta"))
        self.assertEqual(shadows.parse_shadow_topic("t", "$aws/things/t/shadow/get/accepted"), ("", "get/accepted"))
        self.assertIsNone(shadows.parse_shadow_topic("t", "$aws/things/u/shadow/get/accepted"))


class DiffTests(SynchronousTestCase):
    def test_diff_is_a_merge_patch(self) -> None:
        """Applying diff(old, new) to old with RFC 7396 gives new; removed keys become null."""
        old = {"a": 1, "b": {"c": 2, "d": 3}, "e": [1]}
        new = {"a": 1, "b": {"c": 5}, "f": None if False else 0}
        patch = diff(old, new)
        self.assertEqual(patch, {"b": {"c": 5, "d": None}, "e": None, "f": 0})
        self.assertEqual(merge_patch(old, patch), new)
        self.assertIs(diff(new, new), MISSING)
