"""The tree of topic filters and topic names: the same answers as trying each with ``matches()``
(MQTT 3.1.1 §4.7), and no levels left behind when keys go."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from gateway.mqtt.topics import matches
from gateway.mqtt.topictree import TopicTree

#: Always the same examples: the module runs in a few seconds, the same way each time.
FEW = settings(max_examples=300, deadline=None, derandomize=True, database=None)

#: Few distinct level texts (empty and ``$`` ones among them), so filters and topics meet often.
levels = st.sampled_from(["a", "b", "", "$SYS", "$", "c d", "é"])
topics = st.lists(levels, min_size=1, max_size=4).map("/".join).filter(bool)
filters = st.builds(
    lambda head, tail: "/".join(head + tail) or "#",
    st.lists(st.one_of(levels, st.just("+")), max_size=4),
    st.sampled_from([[], ["#"]]))


def filter_tree(keys: list[str]) -> TopicTree[str]:
    """A tree holding each of ``keys`` with itself as its value."""
    tree: TopicTree[str] = TopicTree()
    for key in keys:
        tree.add(key, key)
    return tree


class FiltersMatchingTests(SynchronousTestCase):
    """A tree of filters gives the filters that match a topic name."""

    def assertMatching(self, keys: list[str], topic: str, expected: list[str]) -> None:
        """The tree of ``keys`` matches exactly ``expected`` (each once) for ``topic``."""
        found = filter_tree(keys).filters_matching(topic)
        self.assertEqual(sorted(found), sorted(expected), topic)

    def test_wildcards(self) -> None:
        """``+`` is one level (an empty one too), ``#`` the rest including the parent (§4.7.1.2)."""
        keys = ["sport/tennis/#", "sport/+/player1", "sport/+", "+/+", "#", "a/b", "sport/tennis/player1"]
        self.assertMatching(keys, "sport/tennis", ["sport/tennis/#", "sport/+", "+/+", "#"])
        self.assertMatching(keys, "sport/tennis/player1",
                            ["sport/tennis/#", "sport/+/player1", "#", "sport/tennis/player1"])
        self.assertMatching(keys, "/finance", ["+/+", "#"])
        self.assertMatching(keys, "sport/", ["sport/+", "+/+", "#"])
        self.assertMatching(keys, "a/b", ["a/b", "+/+", "#"])
        self.assertMatching(keys, "a/c", ["+/+", "#"])

    def test_dollar_topics(self) -> None:
        """§4.7.2: a filter starting with a wildcard does not match a ``$`` topic; deeper wildcards do."""
        keys = ["#", "+/broker/uptime", "$SYS/#", "$SYS/+/uptime", "+"]
        self.assertMatching(keys, "$SYS/broker/uptime", ["$SYS/#", "$SYS/+/uptime"])
        self.assertMatching(keys, "$SYS", ["$SYS/#"])

    def test_replace_and_remove(self) -> None:
        """Adding a key again replaces its value; removing one leaves the others, and an absent one is no error."""
        tree: TopicTree[str] = TopicTree()
        tree.add("a/+", "one")
        tree.add("a/+", "two")
        tree.add("a/#", "rest")
        self.assertEqual(sorted(tree.filters_matching("a/b")), ["rest", "two"])
        tree.remove("a/+")
        tree.remove("a/+/c")
        tree.remove("x")
        self.assertEqual(tree.filters_matching("a/b"), ["rest"])

    def test_removal_prunes_levels(self) -> None:
        """Removing every key leaves an empty tree: no nodes of levels nobody uses any more."""
        tree = filter_tree(["a/b/c", "a/b", "a/+/#", "", "/"])
        for key in ["a/b/c", "a/+/#", "", "a/b", "/"]:
            tree.remove(key)
        self.assertTrue(tree.empty)

    @FEW
    @given(st.lists(filters, max_size=12), topics)
    def test_same_as_matches(self, keys: list[str], topic: str) -> None:
        """For any filters and topic, the tree gives the filters ``matches()`` accepts, each once."""
        self.assertMatching(keys, topic, sorted({key for key in keys if matches(key, topic)}))

    @FEW
    @given(st.lists(filters, max_size=12), st.lists(filters, max_size=6), topics)
    def test_same_after_removals(self, keys: list[str], removed: list[str], topic: str) -> None:
        """After some keys are removed, the rest match as ``matches()`` says."""
        tree = filter_tree(keys)
        for key in removed:
            tree.remove(key)
        expected = {key for key in keys if key not in removed and matches(key, topic)}
        self.assertEqual(sorted(tree.filters_matching(topic)), sorted(expected))


class TopicsMatchingTests(SynchronousTestCase):
    """A tree of topic names gives the names a filter matches."""

    def assertMatching(self, keys: list[str], topic_filter: str, expected: list[str]) -> None:
        """The tree of ``keys`` gives exactly ``expected`` (each once) for ``topic_filter``."""
        found = filter_tree(keys).topics_matching(topic_filter)
        self.assertEqual(sorted(found), sorted(expected), topic_filter)

    def test_wildcards(self) -> None:
        """``+`` is one level, ``#`` the rest including the parent; ``$`` names need a literal first level."""
        keys = ["sport/tennis", "sport/tennis/player1", "sport/", "/finance", "$SYS/uptime", "sport"]
        self.assertMatching(keys, "sport/tennis/#", ["sport/tennis", "sport/tennis/player1"])
        self.assertMatching(keys, "sport/+", ["sport/tennis", "sport/"])
        self.assertMatching(keys, "+/+", ["sport/tennis", "sport/", "/finance"])
        self.assertMatching(keys, "#", ["sport/tennis", "sport/tennis/player1", "sport/", "/finance", "sport"])
        self.assertMatching(keys, "+", ["sport"])
        self.assertMatching(keys, "$SYS/#", ["$SYS/uptime"])
        self.assertMatching(keys, "sport", ["sport"])

    @FEW
    @given(st.lists(topics, max_size=12), filters)
    def test_same_as_matches(self, keys: list[str], topic_filter: str) -> None:
        """For any topic names and filter, the tree gives the names ``matches()`` accepts, each once."""
        self.assertMatching(keys, topic_filter, sorted({key for key in keys if matches(topic_filter, key)}))
