"""Topic filter validation and matching (MQTT 3.1.1 §4.7)."""

from twisted.trial.unittest import SynchronousTestCase

from gateway.mqtt.topics import matches, topic_for_log, valid_filter, valid_topic


class TopicTests(SynchronousTestCase):
    """Wildcards and ``$`` topics behave as §4.7 says."""

    def test_matching(self) -> None:
        """``+`` is one level, ``#`` the rest including the parent (§4.7.1.2)."""
        self.assertTrue(matches("sport/tennis/#", "sport/tennis"))
        self.assertTrue(matches("sport/tennis/#", "sport/tennis/player1/ranking"))
        self.assertTrue(matches("sport/+/player1", "sport/tennis/player1"))
        self.assertFalse(matches("sport/+", "sport/tennis/player1"))
        self.assertTrue(matches("+/+", "/finance"))
        self.assertTrue(matches("#", "a/b"))
        self.assertFalse(matches("a/b", "a/c"))

    def test_dollar_topics_not_matched_by_leading_wildcards(self) -> None:
        """§4.7.2: ``#`` and ``+/...`` do not match ``$SYS/...``."""
        self.assertFalse(matches("#", "$SYS/broker/uptime"))
        self.assertFalse(matches("+/broker/uptime", "$SYS/broker/uptime"))
        self.assertTrue(matches("$SYS/#", "$SYS/broker/uptime"))

    def test_validation(self) -> None:
        """Filters put wildcards only on whole levels; topic names have none."""
        for good in ("#", "a/#", "+", "a/+/b", "/", "a//b"):
            self.assertTrue(valid_filter(good), good)
        for bad in ("", "a#", "a/#/b", "a+", "a/b+/c"):
            self.assertFalse(valid_filter(bad), bad)
        self.assertTrue(valid_topic("a/b"))
        for bad in ("", "a/+", "a/#", "a\0"):
            self.assertFalse(valid_topic(bad), bad)

    def test_topic_for_log_keeps_a_log_line_one_line(self) -> None:
        """MQTT allows control characters in a topic (only U+0000 is refused): a topic in a log
        line shows them escaped, so that a client's newline cannot end the gateway's line and
        forge the next one; a long topic is cut before it is escaped."""
        forged = "will/x\n2026-12-06T19:00:00-0000 [gateway.broker#info] forged\r\u2028\x1b[2J"
        self.assertEqual(topic_for_log(forged),
                         "will/x\\n2026-12-06T19:00:00-0000 [gateway.broker#info] forged\\r\\u2028\\x1b[2J")
        self.assertEqual(topic_for_log("caf\u00e9/a b/'q'"), "caf\u00e9/a b/'q'")  # printable stays as it is
        self.assertEqual(topic_for_log("\n" * 300, 2), "\\n\\n... (300 bytes)")
