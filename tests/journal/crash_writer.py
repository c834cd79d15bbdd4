"""Helper process for the SIGKILL test: append as fast as it can, print each seq once durable.

Usage: ``python -m tests.journal.crash_writer STATE_DIR RUN_ID [SYNC]``. Each line printed is
``<seq> <payload>`` and is printed only after that append's Deferred fired. ``SYNC`` is the
stream's ``sync`` policy (default ``sync``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

from twisted.internet import asyncioreactor

asyncioreactor.install()  # as the gateway runs (gateway/tap.py)
from twisted.internet import reactor  # noqa: E402

from gateway.journal.record import Record
from gateway.journal.service import JournalService
from gateway.journal.settings import JournalSettings, StreamSettings
from gateway.journal.stream import Stream

IN_FLIGHT = 64


def main(state_dir: str, run_id: str, sync: Literal["sync", "interval", "none"] = "sync") -> None:
    """Append forever with up to :data:`IN_FLIGHT` appends outstanding."""
    settings = JournalSettings(defaults=StreamSettings(segment_bytes=64 * 1024, min_free_bytes=0, sync=sync))
    service = JournalService(settings, Path(state_dir), reactor)
    counter = 0
    inflight = 0

    def fired(seq: int, payload: bytes) -> None:
        nonlocal inflight
        inflight -= 1
        sys.stdout.write(f"{seq} {payload.decode()}\n")
        sys.stdout.flush()
        if sync == "sync":
            pump()

    def append_one(stream: Stream) -> None:
        nonlocal counter, inflight
        counter += 1
        payload = f"{run_id}:{counter}".encode()
        inflight += 1
        stream.append(Record("t/crash", payload.ljust(200, b"."))).addCallback(fired, payload)

    def pump() -> None:
        stream = service.stream("crash")
        if sync != "sync":
            # interval and none fire at once, inside append, and write at the turn's end:
            # IN_FLIGHT appends a turn (appending again from the callbacks never ends the turn)
            for _ in range(IN_FLIGHT):
                append_one(stream)
            reactor.callLater(0, pump)
            return
        while inflight < IN_FLIGHT:
            append_one(stream)

    reactor.callWhenRunning(lambda: service.startService().addCallback(lambda _: pump()))
    reactor.run()


if __name__ == "__main__":
    main(*sys.argv[1:4])  # type: ignore[arg-type]
