"""Helper process for the SIGKILL test: append as fast as it can, print each seq once durable.

Usage: ``python -m tests.journal.crash_writer STATE_DIR RUN_ID``. Each line printed is
``<seq> <payload>`` and is printed only after that append's Deferred fired.
"""

from __future__ import annotations

import sys
from pathlib import Path

from twisted.internet import reactor

from gateway.journal.record import Record
from gateway.journal.service import JournalService
from gateway.journal.settings import JournalSettings, StreamSettings

IN_FLIGHT = 64


def main(state_dir: str, run_id: str) -> None:
    """Append forever with up to :data:`IN_FLIGHT` appends outstanding."""
    settings = JournalSettings(defaults=StreamSettings(segment_bytes=64 * 1024, min_free_bytes=0))
    service = JournalService(settings, Path(state_dir), reactor)
    counter = 0
    inflight = 0

    def fired(seq: int, payload: bytes) -> None:
        nonlocal inflight
        inflight -= 1
        sys.stdout.write(f"{seq} {payload.decode()}\n")
        sys.stdout.flush()
        pump()

    def pump() -> None:
        nonlocal counter, inflight
        stream = service.stream("crash")
        while inflight < IN_FLIGHT:
            counter += 1
            payload = f"{run_id}:{counter}".encode()
            inflight += 1
            stream.append(Record("t/crash", payload.ljust(200, b"."))).addCallback(fired, payload)

    reactor.callWhenRunning(lambda: service.startService().addCallback(lambda _: pump()))
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
