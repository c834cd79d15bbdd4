"""The health gate for a new container version: the same rule as for hosted programs.

The container must become RUNNING (up ``startsecs``) and stay so for the window; leaving
STARTING/RUNNING during it fails the gate at once.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from gateway.apps.errors import HealthCheckError
from gateway.apps.process import ProgramState
from gateway.containers.supervisor import ContainerSupervisor
from gateway.containers.unit import ContainerUnit

_ALIVE = (ProgramState.STARTING, ProgramState.RUNNING)


def watch_unit(supervisor: ContainerSupervisor, unit: ContainerUnit, window: float,
               clock: Any, start_timeout: float = 60.0) -> Deferred[None]:
    """Fire once ``unit`` has been RUNNING (up ``startsecs``) for ``window`` seconds.

    Unlike a process, a container takes a runtime request to start, so the window opens when
    it becomes RUNNING, not when it was asked to start.

    :param supervisor: whose state changes are watched.
    :param unit: the new version's started unit.
    :param window: seconds it must stay RUNNING.
    :param clock: an IReactorTime.
    :param start_timeout: seconds it may take to become RUNNING at all.
    :return: fails with HealthCheckError when it leaves STARTING/RUNNING or does not become
        RUNNING in time.
    """
    result: Deferred[None] = Deferred()
    timers: list[Any] = []

    def finish() -> None:
        if changed in supervisor.observers:
            supervisor.observers.remove(changed)
        for timer in timers:
            if timer.active():
                timer.cancel()

    def fail(why: str) -> None:
        if not result.called:
            finish()
            result.errback(HealthCheckError(why))

    def changed(which: ContainerUnit) -> None:
        if which is not unit:
            return
        if unit.state not in _ALIVE:
            detail = f": {unit.error}" if unit.error else ""
            status = "unknown" if unit.exitstatus is None else unit.exitstatus
            fail(f"{unit.name} went {unit.state.value} (exit status {status}) during the "
                 f"health window{detail}")
        elif unit.state is ProgramState.RUNNING and len(timers) == 1:
            timers.append(clock.callLater(window, passed))

    def passed() -> None:
        if not result.called:
            finish()
            result.callback(None)

    def too_slow() -> None:
        if len(timers) == 1:
            fail(f"{unit.name} is {unit.state.value}, not RUNNING, {start_timeout:g}s after its start")

    supervisor.observers.append(changed)
    timers.append(clock.callLater(unit.description.startsecs + start_timeout, too_slow))
    changed(unit)
    return result
