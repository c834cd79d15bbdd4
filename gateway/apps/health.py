"""The health gate: a new version's programs must stay RUNNING, then pass their check."""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IDelayedCall

from gateway.apps.errors import HealthCheckError
from gateway.apps.process import ProgramProcess, ProgramState
from gateway.apps.supervisor import AppSupervisor

_ALIVE = (ProgramState.STARTING, ProgramState.RUNNING)


def watch_health(supervisor: AppSupervisor, programs: list[ProgramProcess], window: float,
                 clock: Any, check: Callable[[], Deferred[None]] | None = None
                 ) -> Deferred[None]:
    """Fire once every program has been RUNNING for ``window`` seconds and ``check`` passed.

    Each program's window starts when it may first become RUNNING (its ``startsecs``),
    so the gate closes ``max(startsecs) + window`` seconds after the last of them is spawned
    (:meth:`~gateway.apps.process.ProgramProcess.launched`).

    :param supervisor: whose state changes are watched.
    :param programs: the new version's started programs.
    :param window: seconds they must stay RUNNING.
    :param clock: an IReactorTime.
    :param check: the health-check command, run once at the end of the window.
    :return: fails with HealthCheckError as soon as a program leaves STARTING/RUNNING,
        is not RUNNING at the deadline, or the check fails.
    """
    result: Deferred[None] = Deferred()
    watched = {p.spec.name: p for p in programs}
    timer: IDelayedCall | None = None  # the deadline's, once every program is spawned

    def fail(why: str) -> None:
        if not result.called:
            finish()
            result.errback(HealthCheckError(why))

    def changed(process: ProgramProcess) -> None:
        if watched.get(process.spec.name) is process and process.state not in _ALIVE:
            # (a spawn that failed has no exit status: its error says why)
            why = process.error if process.exitstatus is None and process.error else (
                f"exit status {process.exitstatus}")
            fail(f"{process.spec.name} went {process.state.value} ({why}) during the health window")

    def finish() -> None:
        if changed in supervisor.observers:
            supervisor.observers.remove(changed)
        if timer is not None and timer.active():
            timer.cancel()

    def deadline() -> None:
        for process in watched.values():
            if process.state is not ProgramState.RUNNING:
                fail(f"{process.spec.name} is {process.state.value}, not RUNNING, "
                     f"at the end of the health window")
                return
        if check is None:
            finish()
            result.callback(None)
            return
        check().addCallbacks(passed, lambda f: fail(f.getErrorMessage()))

    def passed(_: object) -> None:
        if not result.called:
            finish()
            result.callback(None)

    def arm(_: object) -> None:
        nonlocal timer
        if not result.called:
            timer = clock.callLater(startsecs + window, deadline)

    startsecs = max((p.spec.settings.startsecs for p in programs), default=0.0)
    supervisor.observers.append(changed)
    for process in programs:
        changed(process)
    gatherResults([p.launched() for p in programs]).addCallback(arm)
    return result
