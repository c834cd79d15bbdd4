"""In-memory fakes for the upload service's unit tests: a provider whose sends the test
finishes, and a service on a ``task.Clock`` with blocking work run inline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred

from gateway.uploads.providers import Transfer
from gateway.uploads.service import UploadService
from gateway.uploads.settings import UploadsSettings
from tests.steppingclock import SteppingClock
from tests.uploads.realservers import StatusWatcher


class FakeProvider:
    """Records each send; the test fires or fails ``sends[i][1]``.

    :param log: shared list of (provider, transfer, deferred) of every send.
    """

    name = "fake"

    def __init__(self, log: list[tuple[FakeProvider, Transfer, Deferred[None]]], options: dict[str, str]) -> None:
        self.log = log
        self.options = options
        self.canceled = 0

    def digests_first(self, size: int) -> tuple[bool, int | None]:
        """Hash first, as S3 and Azure need."""
        return True, None

    def send(self, transfer: Transfer) -> Deferred[None]:
        """A send the test ends."""
        def cancel(d: Deferred[None]) -> None:
            self.canceled += 1
        d: Deferred[None] = Deferred(cancel)
        self.log.append((self, transfer, d))
        return d


def fake_service(state: Path, settings: UploadsSettings | None = None, **kwargs: Any) -> tuple[
        UploadService, StatusWatcher, SteppingClock, list[tuple[FakeProvider, Transfer, Deferred[None]]]]:
    """A service on a SteppingClock whose providers are :class:`FakeProvider` s (``storage.provider: bad``
    is refused like an unknown provider)."""
    clock = SteppingClock()
    clock.advance(1_800_000_000)  # 2027: periodic from/to are absolute times
    watcher = StatusWatcher()
    sends: list[tuple[FakeProvider, Transfer, Deferred[None]]] = []

    def factory(options: dict[str, str], *args: Any, **kwargs: Any) -> FakeProvider:
        from gateway.uploads.errors import InvalidRequest
        if options.get("storage.provider") == "bad":
            raise InvalidRequest("unknown storage provider 'bad'")
        return FakeProvider(sends, options)

    service = UploadService(settings or UploadsSettings(mode="lax"), state, clock, object(), watcher,
                            ("tenant", "ns:gw"), run_blocking=lambda f, *a, **k: maybeDeferred(f, *a, **k),
                            retry_policy=kwargs.pop("retry_policy", lambda attempt: 10.0 * attempt),
                            provider_factory=factory, **kwargs)
    return service, watcher, clock, sends


def body(value: Any) -> bytes:
    """JSON bytes."""
    return json.dumps(value).encode()
