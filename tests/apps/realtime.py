"""Helpers for integration tests with real child processes on the running reactor."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from gateway.apps.service import AppsService
from gateway.apps.settings import AppsSettings

FAST = dict(backoff_initial=0.1, backoff_max=0.4, health_window=0.5, spool_interval=0.1,
            install_timeout=10.0)


def fast_settings(**overrides: Any) -> AppsSettings:
    """Settings with short delays so real-process tests finish in seconds."""
    return AppsSettings(**{**FAST, **overrides})


def make_service(state: Path, settings: AppsSettings) -> AppsService:
    """An AppsService on the real reactor."""
    return AppsService(settings, state, reactor, "tcp:127.0.0.1:1883")


def wait_until(condition: Callable[[], object], timeout: float = 10.0,
               step: float = 0.05, what: str = "condition") -> Deferred[None]:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds, naming ``what``."""
    async def poll() -> None:
        waited = 0.0
        while not condition():
            if waited >= timeout:
                raise AssertionError(f"{what} not met within {timeout}s")
            await deferLater(reactor, step, lambda: None)
            waited += step

    return Deferred.fromCoroutine(poll())


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) process."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return status.rsplit(")", 1)[1].split()[0] != "Z"
