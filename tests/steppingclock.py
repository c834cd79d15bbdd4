"""A task.Clock whose wall clock the test can step, as NTP steps a gateway's clock."""

from __future__ import annotations

from twisted.internet.task import Clock

from collections.abc import Callable

from gateway.clockstep import StepObserver, StepObservers, shift_timers


class SteppingClock(Clock):
    """``task.Clock`` with a steady clock beside it, as the gateway's reactor has one.

    ``advance`` moves both; :meth:`step` moves only the wall clock (``seconds()``) and keeps
    pending timers on their delays, as :class:`gateway.clockstep.SteadyTimersReactor` does.
    """

    _offset = 0.0  # how far the wall clock was stepped (a class default: no __init__ to call in a mixed reactor)
    _observers: StepObservers | None = None

    def steady_seconds(self) -> float:
        """Seconds on the steady clock (never stepped)."""
        return self.rightNow - self._offset

    def step(self, seconds: float) -> None:
        """The wall clock jumps by ``seconds`` (negative: back); nothing runs."""
        self.rightNow += seconds
        self._offset += seconds
        shift_timers(self, seconds)
        if self._observers is not None:
            self._observers.tell(seconds)

    def on_step(self, observer: StepObserver) -> Callable[[], None]:
        """Tell ``observer`` each :meth:`step` from now, as the gateway's reactor does."""
        if self._observers is None:
            self._observers = StepObservers()
        return self._observers.add(observer)
