"""The ingest's last values: bounded in aliases and in characters held."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.ingest.values import MAX_CHARACTERS, LastValues


class LastValuesBoundsTests(SynchronousTestCase):
    """What the last values keep in memory at most."""

    def test_characters_held_are_bounded(self) -> None:
        """Values of 64 KiB (the default max_body) under ever new aliases keep at most
        MAX_CHARACTERS characters, the oldest changes going first (10,000 of them held 640 MB);
        the newest value is always kept, however long."""
        values = LastValues(Clock())
        big = "v" * 65536
        for n in range(2 * MAX_CHARACTERS // len(big)):
            values.set(f"a{n}", big)
        self.assertLessEqual(sum(len(a) + len(v.value) for a, v in values.values.items()), MAX_CHARACTERS)
        self.assertEqual(values.get(f"a{n}"), (big, 0.0))
        self.assertIsNone(values.get("a0"))
        values.set("huge", "h" * (MAX_CHARACTERS + 1))
        self.assertEqual(list(values.values), ["huge"])

    def test_a_new_value_of_an_alias_replaces_its_old_one_in_the_count(self) -> None:
        """Writing one alias again and again holds one value, not one per write."""
        values = LastValues(Clock())
        for n in range(3 * MAX_CHARACTERS // 65536):
            values.set("a", str(n) * 65536)
        values.set("b", "x")
        self.assertEqual(sorted(values.values), ["a", "b"])

    def test_aliases_held_are_bounded(self) -> None:
        """Past ``limit`` aliases the one changed longest ago goes."""
        values = LastValues(Clock(), limit=3)
        for alias in "abcd":
            values.set(alias, "1")
        values.set("b", "2")
        values.set("e", "1")
        self.assertEqual(list(values.values), ["d", "b", "e"])
