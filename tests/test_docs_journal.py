"""docs/journal.md, as its reader uses it: the page's Python examples run, in the page's
order, against a real journal on disk; its configuration example loads as it says; and the
files it writes are read back by the page's own description of them (the record frame, the
segment and cursor names)."""

from __future__ import annotations

import json
import re
import struct
import textwrap
import zlib
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import TestCase

from gateway import config as gateway_config
from gateway.journal.record import Record

PAGE = Path(__file__).resolve().parent.parent / "docs" / "journal.md"


def blocks(language: str) -> list[str]:
    """The page's code blocks in ``language``, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```", PAGE.read_text(encoding="utf-8"), re.S | re.M)


def frames(data: bytes) -> list[dict[str, Any]]:
    """The records of a segment file, read as the page's "On disk" describes a frame:
    ``magic (a5 4a) | body length u32 | CRC-32 u32 | body``, little-endian, the CRC over the
    body seeded with the length; the body ``seq u64 | received f64 | qos u8 | flags u8 | topic
    length u16 | header count u16 | payload length u32 | topic | headers (key length u16,
    value length u32, key, value) | payload``."""
    records, offset = [], 0
    while offset < len(data):
        assert data[offset:offset + 2] == b"\xa5\x4a", f"no magic at {offset}"
        length, crc = struct.unpack_from("<II", data, offset + 2)
        body = data[offset + 10:offset + 10 + length]
        assert zlib.crc32(body, length) == crc, f"the CRC at {offset} is not the body's seeded with its length"
        seq, received, qos, flags, topic_length, header_count, payload_length = struct.unpack_from("<QdBBHHI", body)
        at = struct.calcsize("<QdBBHHI")
        topic = body[at:at + topic_length].decode()
        at += topic_length
        headers = []
        for _ in range(header_count):
            key_length, value_length = struct.unpack_from("<HI", body, at)
            at += 6
            headers.append((body[at:at + key_length].decode(),
                            body[at + key_length:at + key_length + value_length].decode()))
            at += key_length + value_length
        assert at + payload_length == length, "the body holds more than its fields"
        records.append({"seq": seq, "received": received, "qos": qos, "retain": bool(flags & 1), "topic": topic,
                        "headers": tuple(headers), "payload": body[at:]})
        offset += 10 + length
    return records


class JournalExamplesTests(TestCase):
    """The page's examples, run."""

    timeout = 30

    @inlineCallbacks
    def test_the_python_examples_run_in_order(self) -> Any:
        """The service example makes a journal (started as the page says); the usage, cursor and
        loss report examples, run one after the other in one coroutine, append the page's record
        (seq 1), forward it and acknowledge it; the files are then as "On disk" describes."""
        using, reading, losses, service = blocks("python")
        work = Path(self.mktemp()).resolve()
        work.mkdir()
        (work / "gateway.yaml").write_text(f"gateway:\n  state_dir: {work / 'state'}\n")
        names: dict[str, Any] = {"config": gateway_config.load(work / "gateway.yaml"),
                                 "state_dir": work / "state", "reactor": reactor}
        exec(service, names)
        journal = names["journal"]
        yield journal.startService()
        self.addCleanup(journal.stopService)
        sent: list[Record] = []
        upstream: list[Any] = []

        async def send_to_cloud(records: list[Record]) -> None:
            sent.extend(records)
            names["running"] = False

        async def send_upstream(report: Any) -> None:
            upstream.append(report)

        names.update(running=True, send_to_cloud=send_to_cloud, send_upstream=send_upstream)
        code = "async def example():\n" + textwrap.indent("\n".join((using, reading, losses, "return locals()")), "    ")
        exec(code, names)
        names.update((yield Deferred.fromCoroutine(names["example"]())))
        self.assertEqual(names["seq"], 1)
        self.assertEqual([(r.seq, r.topic, r.payload) for r in sent], [(1, "telemetry/dev1/temp", b"21.5")])
        stream = names["stream"]
        self.assertEqual(stream.unacked("link"), 0)
        self.assertEqual([e.reason for e in upstream[0].entries], [])
        yield journal.stopService()
        directory = work / "state" / "journal" / "cloud-a"
        self.assertEqual(json.loads((directory / "cursors" / "link.json").read_text()), {"acked": 1})
        [segment] = directory.glob("*.seg")
        self.assertEqual(segment.name, "00000000000000000001.seg")
        [record] = frames(segment.read_bytes())
        self.assertEqual({k: v for k, v in record.items() if k != "received"},
                         {"seq": 1, "qos": 1, "retain": False, "topic": "telemetry/dev1/temp",
                          "headers": (("content-type", "text/plain"),), "payload": b"21.5"})

    def test_the_configuration_example_loads_as_it_says(self) -> None:
        """The ``journal:`` example, for a gateway with the links ``hono`` and ``aws``, loads;
        each stream it names takes its settings from its own entry (which replaces ``defaults``
        whole), every other stream from ``defaults``."""
        [example] = blocks("yaml")
        work = Path(self.mktemp()).resolve()
        work.mkdir()
        path = work / "gateway.yaml"
        path.write_text(f"gateway:\n  state_dir: {work / 'state'}\nlinks:\n  links:\n"
                        "    hono: {endpoint: 'tcp:host=127.0.0.1:port=1'}\n"
                        "    aws: {endpoint: 'tcp:host=127.0.0.1:port=2'}\n" + example)
        journal = gateway_config.load(path).journal
        self.assertEqual(journal.defaults.max_bytes, 536870912)
        hono, aws = journal.streams["link-hono"], journal.streams["link-aws"]
        self.assertEqual((hono.overflow, hono.max_age_s, hono.max_bytes), ("reject-new", 86400, 1 << 30))
        self.assertEqual((aws.sync, aws.sync_interval_ms, aws.max_bytes), ("interval", 500, 1 << 30))
