"""A stand-in gateway for restart tests: runs the update service until its operation ends.

``python -m tests.updates.oprunner STATE_DIR [REQUEST.json]``: statuses are appended as JSON
lines to ``STATE_DIR/statuses.jsonl``; the fake app installer copies the archive to
``STATE_DIR/installed``. With a request file, the request is submitted unless an operation
is already persisted (the second run after a SIGKILL resumes instead).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

from twisted.internet import reactor, task
from twisted.internet.defer import Deferred
from twisted.logger import globalLogBeginner, textFileLogObserver

from gateway.updates.httpclient import make_http_client
from gateway.updates.operation import Status
from gateway.updates.service import UpdateService
from gateway.updates.settings import DownloadSettings, UpdatesSettings


class CopyingInstaller:
    """Installs an app by copying its archive, after one second."""

    def __init__(self, state: Path) -> None:
        self.state = state

    def install(self, archive: Path) -> Deferred[Any]:
        return task.deferLater(reactor, 1.0, shutil.copy, archive, self.state / "installed")


def main(state: Path, request: Path | None) -> None:
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    statuses = (state / "statuses.jsonl").open("a")

    def publish(topic: str, payload: bytes, qos: int, retain: bool) -> None:
        statuses.write(payload.decode() + "\n")
        statuses.flush()

    settings = UpdatesSettings(
        download=DownloadSettings(allow_http=True, checkpoint_bytes=2**20),
        deb_install_command=("/bin/sh", "-c", 'sleep 2; echo "installed $0"'),
    )
    service = UpdateService(settings, state, reactor, make_http_client(reactor, settings.download), publish,
                            CopyingInstaller(state), systemd=lambda: False)

    def started(_: object) -> None:
        if request is not None and not service.operations:
            service.handle_command("install", request.read_bytes())

        def stop_when_done() -> None:
            if all(op.status.final for op in service.operations.values()):
                check.stop()
                service.stopService().addCallback(lambda _: reactor.stop())

        check = task.LoopingCall(stop_when_done)
        check.start(0.2)

    service.startService().addCallback(started)
    reactor.run()
    print(json.dumps({cid: op.status.value for cid, op in service.operations.items()}))
    sys.exit(0 if all(op.status == Status.FINISHED_SUCCESS for op in service.operations.values()) else 1)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else None)
