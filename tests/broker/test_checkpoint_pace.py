"""How often the broker takes and writes its checkpoint while its state keeps changing.

A checkpoint is a copy of the whole state (every session's queue, every retained message),
taken on the reactor thread and written in a thread. With a large state a write takes
seconds; these tests pin down that a slow write never makes copies pile up behind it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from gateway.broker import service as service_module
from gateway.broker.service import SAVE_DELAY, BrokerService
from tests.broker.harness import ANONYMOUS, broker_settings
from tests.broker.test_durable_ack import make_broker

SECTION = {"listeners": {"default": {"endpoint": "tcp:0:interface=127.0.0.1"}}, "plugins": ANONYMOUS}


class HeldThreadPool:
    """A thread pool whose work runs only when the test says so (a write that takes long)."""

    def __init__(self) -> None:
        self.held: list[tuple[Callable[[bool, Any], object], Callable[..., Any], tuple[Any, ...]]] = []

    def callInThreadWithCallback(self, on_result: Callable[[bool, Any], object], f: Callable[..., Any],
                                 *args: Any) -> None:
        self.held.append((on_result, f, args))

    def finish_one(self) -> None:
        """Run the oldest held job and hand its result back."""
        on_result, f, args = self.held.pop(0)
        on_result(True, f(*args))


class PoolClock(Clock):
    """A clock that is also enough of a reactor for ``deferToThreadPool``."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = HeldThreadPool()

    def getThreadPool(self) -> HeldThreadPool:
        return self.pool

    def callFromThread(self, f: Callable[..., object], *args: Any) -> None:
        f(*args)


class CountingStore:
    """A state store that records what it was asked to save."""

    def __init__(self) -> None:
        self.saved: list[dict[str, Any]] = []

    def save(self, state: dict[str, Any]) -> int:
        self.saved.append(state)
        return 1000 * len(self.saved)  # (a size of its own for each save)


class CheckpointPaceTests(SynchronousTestCase):
    """A broker service whose checkpoint writes take as long as the test likes."""

    def setUp(self) -> None:
        self.clock = PoolClock()
        self.service = BrokerService(broker_settings(SECTION), self.clock, state_dir=Path(self.mktemp()))
        self.store = self.service.store = CountingStore()  # type: ignore[assignment]
        self.service.broker = object()  # type: ignore[assignment]
        self.service.running = True
        self.copies = 0

        def checkpoint_content(broker: Any) -> dict[str, Any]:
            self.copies += 1
            return {"copy": self.copies}

        self.patch(service_module, "checkpoint_content", checkpoint_content)

    def change_every_second(self, seconds: int) -> None:
        """A state change every second for ``seconds`` seconds."""
        for _ in range(seconds):
            self.service._state_changed()
            self.clock.advance(SAVE_DELAY)

    def test_no_copies_pile_up_behind_a_slow_write(self) -> None:
        """While one checkpoint is being written, changes take no new copy of the state: one
        copy is taken once that write is done, covering all of them."""
        self.change_every_second(1)
        self.assertEqual((self.copies, len(self.clock.pool.held)), (1, 1))
        self.change_every_second(10)  # the write takes 10 s: a large state on a slow card
        self.assertEqual((self.copies, len(self.clock.pool.held)), (1, 1))
        self.clock.pool.finish_one()
        self.clock.advance(SAVE_DELAY)
        self.assertEqual((self.copies, len(self.clock.pool.held)), (2, 1))
        self.clock.pool.finish_one()
        self.assertEqual(self.store.saved, [{"copy": 1}, {"copy": 2}])

    def test_no_copy_after_a_write_without_changes(self) -> None:
        """A write during which nothing changed is not followed by another."""
        self.change_every_second(1)
        self.clock.pool.finish_one()
        self.clock.advance(10 * SAVE_DELAY)
        self.assertEqual((self.copies, self.clock.pool.held), (1, []))

    def test_final_save_waits_for_the_write_in_progress(self) -> None:
        """Stopping takes a last copy once the write in progress is done, and writes it after it."""
        self.change_every_second(1)
        self.service._state_changed()
        self.service.running = False
        done = self.service._save()
        self.assertNoResult(done)
        self.clock.pool.finish_one()
        self.clock.pool.finish_one()
        self.successResultOf(done)
        self.assertEqual(self.store.saved, [{"copy": 1}, {"copy": 2}])

    def test_the_last_save_is_timed_and_sized(self) -> None:
        """The broker's snapshot has the last checkpoint's save time, from its hand-over to the
        thread until durable on the steady clock, and its size (none before the first save):
        on a slow disk /metrics said nothing of how long a checkpoint took, nor how large it was."""
        self.service.broker = make_broker(self, self.clock)
        self.assertEqual((self.service.snapshot().checkpoint_save_s, self.service.snapshot().checkpoint_bytes),
                         (None, None))
        self.change_every_second(1)
        self.clock.advance(2.5)  # a write of 2.5 s
        self.clock.pool.finish_one()
        self.change_every_second(1)
        self.clock.advance(0.25)
        self.clock.pool.finish_one()
        snapshot = self.service.snapshot()
        self.assertEqual((snapshot.checkpoint_save_s, snapshot.checkpoint_bytes), (0.25, 2000))
        self.service.broker = None  # stopped: the last save is still shown
        snapshot = self.service.snapshot()
        self.assertEqual((snapshot.checkpoint_save_s, snapshot.checkpoint_bytes), (0.25, 2000))
