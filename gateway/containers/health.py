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
               clock: Any) -> Deferred[None]:
    """Fire once ``unit`` has been RUNNING for ``window`` seconds after its ``startsecs``.

    :param supervisor: whose state changes are watched.
    :param unit: the new version's started unit.
    :param window: seconds it must stay RUNNING.
    :param clock: an IReactorTime.
    :return: fails with HealthCheckError when it leaves STARTING/RUNNING or is not RUNNING
        at the deadline.
    """
    result: Deferred[None] = Deferred()

    def finish() -> None:
        if changed in supervisor.observers:
            supervisor.observers.remove(changed)
        if timer.active():
            timer.cancel()

    def fail(why: str) -> None:
        if not result.called:
            finish()
            result.errback(HealthCheckError(why))

    def changed(which: ContainerUnit) -> None:
        if which is unit and unit.state not in _ALIVE:
            detail = f": {unit.error}" if unit.error else ""
            fail(f"{unit.name} went {unit.state.value} (exit status {unit.exitstatus}) during the "
                 f"health window{detail}")

    def deadline() -> None:
        if unit.state is not ProgramState.RUNNING:
            fail(f"{unit.name} is {unit.state.value}, not RUNNING, at the end of the health window")
        elif not result.called:
            finish()
            result.callback(None)

    supervisor.observers.append(changed)
    timer = clock.callLater(unit.description.startsecs + window, deadline)
    changed(unit)
    return result
