"""Helper process for the SIGKILL test: append as fast as it can, print each seq once durable.

Usage: ``python -m tests.journal.crash_writer STATE_DIR RUN_ID [SYNC]``. Each line printed is
``<seq> <payload>`` and is printed only after that append's Deferred fired. ``SYNC`` is the
stream's ``sync`` policy (default ``sync``).

``python -m tests.journal.crash_writer --fork-server``: a fork server (:class:`ForkServer`
drives it) that imports Twisted and the journal once, then forks each writer from itself
instead: a writer starts in a few milliseconds, not in the 0.25 s of a new interpreter's
imports (most of the crash test's time, 34 writers). Each is still a process of its own,
appending through its own journal service and killed by SIGKILL mid-write.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO, Any, Literal

from twisted.internet import asyncioreactor  # (imported before the fork; installed after it)

from gateway.journal.record import Record
from gateway.journal.service import JournalService
from gateway.journal.settings import JournalSettings, StreamSettings
from gateway.journal.stream import Stream

IN_FLIGHT = 64


def main(state_dir: str, run_id: str, sync: Literal["sync", "interval", "none"] = "sync") -> None:
    """Append forever with up to :data:`IN_FLIGHT` appends outstanding."""
    asyncioreactor.install()  # as the gateway runs (gateway/tap.py)
    from twisted.internet import reactor

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
            reactor.callLater(0, pump)  # type: ignore[attr-defined]
            return
        while inflight < IN_FLIGHT:
            append_one(stream)

    reactor.callWhenRunning(lambda: service.startService().addCallback(lambda _: pump()))  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


def serve_forks() -> None:
    """Read one JSON request a line on stdin, ``[fifo, state_dir, run_id, sync]``; for each,
    fork a writer (:func:`main`) whose stdout is ``fifo`` (opened here, so its reader sees
    no end of file before the writer's death), print its pid, wait for its end and print its
    status as :func:`os.waitstatus_to_exitcode` gives it (``-9``: killed by SIGKILL)."""
    for line in sys.stdin:
        fifo, state_dir, run_id, sync = json.loads(line)
        out = os.open(fifo, os.O_WRONLY)
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:  # the writer
            try:
                os.dup2(out, 1)
                os.close(out)
                nothing = os.open(os.devnull, os.O_RDONLY)
                os.dup2(nothing, 0)
                os.close(nothing)
                signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # (its reader gone: it ends)
                main(state_dir, run_id, sync)
            finally:
                os._exit(1)
        os.close(out)
        print(pid, flush=True)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status), flush=True)


class ForkServer:
    """Drives ``crash_writer --fork-server`` from a test: :meth:`spawn` a writer, kill it by
    its pid, :meth:`status` of its end; :meth:`close` ends the server (and a writer left)."""

    def __init__(self, root: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.journal.crash_writer", "--fork-server"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=root, env=dict(os.environ, PYTHONPATH=root))
        self.pid: int | None = None  # the writer running, if any

    def spawn(self, fifo: str, state_dir: str, run_id: int, sync: str) -> tuple[int, IO[bytes]]:
        """Fork a writer appending to ``state_dir``'s stream ``crash`` under ``sync``: its pid,
        and its output (through the FIFO made at ``fifo``, to its end: the writer's death)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        os.mkfifo(fifo)
        # Opened before the writer's end is (which then does not block), read in blocking mode.
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        os.set_blocking(reader, True)
        self.proc.stdin.write((json.dumps([fifo, state_dir, str(run_id), sync]) + "\n").encode())
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            os.close(reader)
            raise AssertionError(f"the fork server ended: {self.proc.wait()}")
        self.pid = int(line)
        return self.pid, os.fdopen(reader, "rb")

    def status(self) -> int:
        """How the last writer ended, once it has: ``-9`` for SIGKILL (a negative signal)."""
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        self.pid = None
        return int(line)

    def close(self, *_: Any) -> None:
        """Kill a writer still running; end the server and wait for it."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.stdin.close()
        self.proc.stdout.read()
        self.proc.stdout.close()
        self.proc.wait(timeout=30)


if __name__ == "__main__":
    if sys.argv[1:] == ["--fork-server"]:
        serve_forks()
    else:
        main(*sys.argv[1:4])  # type: ignore[arg-type]
