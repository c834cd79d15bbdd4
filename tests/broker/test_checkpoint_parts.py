"""The broker's checkpoint written a part at a time: how large a part grows with large retained
messages, and that the parts read back as the state they were written from."""

from __future__ import annotations

import io

from twisted.trial.unittest import SynchronousTestCase

from gateway.broker.checkpointreader import read_checkpoint
from gateway.broker.checkpointwriter import FORMAT, RETAINED_PART_BYTES, RETAINED_PER_PART, encoded_parts

MIB = 2**20


def state(retained: list[list[object]]) -> dict[str, object]:
    """A checkpoint's content with no sessions and these ``[topic, payload, qos]`` rows."""
    return {"format": FORMAT, "sessions": [], "retained": retained, "log_through": 7}


class RetainedPartsTests(SynchronousTestCase):
    """Retained messages go in parts bounded by count and by payload bytes."""

    def test_large_retained_messages_make_small_parts(self) -> None:
        """Retained messages of 1 MiB went a thousand to a part: eighty made one part of 112 MB of
        JSON (held a few times over while it was written: the base64, the text, its bytes),
        which took a gateway in a 160 MiB memory limit to the OOM killer at every start; now a
        part holds about one of them."""
        retained = [[f"r/{n}", bytes([n]) * MIB, 1] for n in range(8)]
        parts = list(encoded_parts(state(retained)))
        self.assertEqual(RETAINED_PART_BYTES, MIB)
        self.assertLess(max(len(part) for part in parts), 1.4 * MIB)
        self.assertEqual(read_checkpoint(io.BytesIO(b"".join(parts)))["retained"], retained)

    def test_small_retained_messages_still_go_a_thousand_at_a_time(self) -> None:
        """Small ones keep their parts of :data:`RETAINED_PER_PART`; a mix splits where either
        bound is reached, and reads back in order."""
        small = [[f"s/{n}", b"x" * 10, 0] for n in range(2500)]
        big = [["b/0", b"y" * (MIB + 1), 2]]
        retained = small[:1500] + big + small[1500:]
        parts = list(encoded_parts(state(retained)))
        # (the head with the sessions, the retained list's start, its parts: 1000 | 500 |
        # the big one | 1000, and the end)
        self.assertEqual(len(parts), 2 + 4 + 1, [len(p) for p in parts])
        self.assertEqual(RETAINED_PER_PART, 1000)
        self.assertEqual(read_checkpoint(io.BytesIO(b"".join(parts)))["retained"], retained)


class RetainedLinksTests(SynchronousTestCase):
    """``retained_links``: which cloud link brought which retained message (docs/topics.md)."""

    def test_read_back_and_checked(self) -> None:
        """The member reads back as written; a checkpoint without it (no link's retained message,
        or written before it was kept) reads as before, and a wrong one is refused by name."""
        content = {**state([["c//d/q/1/x", b"on", 1], ["local", b"mine", 0]]),
                   "retained_links": [["c//d/q/1/x", "cloud"]]}
        text = b"".join(encoded_parts(content))
        self.assertEqual(read_checkpoint(io.BytesIO(text))["retained_links"], [["c//d/q/1/x", "cloud"]])
        self.assertNotIn("retained_links", read_checkpoint(io.BytesIO(b"".join(encoded_parts(state([]))))))
        for wrong in ([["c//d/q/1/x", ""]], [["c//d/#", "cloud"]], {"c//d/q/1/x": "cloud"}):
            text = b"".join(encoded_parts({**content, "retained_links": wrong}))
            with self.assertRaises(ValueError) as refused:
                read_checkpoint(io.BytesIO(text))
            self.assertEqual(str(refused.exception), "retained_links: not a list of [topic, link name] pairs")
