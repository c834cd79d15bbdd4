"""``fire(d, result)`` has the outcome of ``d.callback(result)`` in every case.

It reads Deferred internals of the pinned Twisted, so these tests are the guard: each
scenario runs once with ``Deferred.callback`` and once with ``fire`` and compares what
every party observes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import AlreadyCalledError, Deferred, succeed
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gateway.journal import fire as fire_module
from gateway.journal.fire import fire

Fire = Callable[["Deferred[Any]", Any], None]


def _callback(d: Deferred[Any], result: Any) -> None:
    d.callback(result)


def _outcome(d: Deferred[Any], seen: list[Any]) -> tuple[Any, ...]:
    """What is observable: what the callbacks saw, and what a callback added now gets."""
    later: list[Any] = []
    d.addBoth(later.append)
    last = later[0] if later else "pending"
    if isinstance(last, Failure):
        last = ("failure", last.type, str(last.value))
    seen = [("failure", s.type, str(s.value)) if isinstance(s, Failure) else s for s in seen]
    return (d.called, d.paused, seen, last)


class FireTests(SynchronousTestCase):
    """Each scenario, fired both ways, looks the same from outside."""

    def _both(self, scenario: Callable[[Fire], tuple[Any, ...]]) -> tuple[Any, ...]:
        expected = scenario(_callback)
        self.flushLoggedErrors()
        got = scenario(fire)
        self.flushLoggedErrors()
        self.assertEqual(got, expected)
        return got

    def test_one_callback(self) -> None:
        """The usual append: one callback pair gets the result and returns a new one."""
        def scenario(f: Fire) -> tuple[Any, ...]:
            seen: list[Any] = []
            d: Deferred[int] = Deferred()
            d.addCallbacks(lambda r: seen.append(r) or r + 1, seen.append)
            f(d, 41)
            return _outcome(d, seen)
        self.assertEqual(self._both(scenario), (True, 0, [41], 42))

    def test_args_and_keywords(self) -> None:
        """Extra callback arguments are passed as Deferred.callback passes them."""
        def scenario(f: Fire) -> tuple[Any, ...]:
            seen: list[Any] = []
            d: Deferred[int] = Deferred()
            d.addCallback(lambda r, a, k: seen.append((r, a, k)), 1, k=2)
            f(d, 0)
            return _outcome(d, seen)
        self.assertEqual(self._both(scenario), (True, 0, [(0, 1, 2)], None))

    def test_callback_raises(self) -> None:
        """A raising callback leaves a failure for the next errback."""
        def scenario(f: Fire) -> tuple[Any, ...]:
            d: Deferred[int] = Deferred()
            d.addCallback(lambda r: 1 // 0)
            f(d, 1)
            return _outcome(d, [])
        self.assertEqual(self._both(scenario)[3][:2], ("failure", ZeroDivisionError))

    def test_unhandled_failure_is_logged(self) -> None:
        """A failure nobody handles is still reported when the Deferred is collected."""
        for f in (_callback, fire):
            d: Deferred[int] = Deferred()
            d.addCallback(lambda r: 1 // 0)
            f(d, 1)
            del d
            import gc
            gc.collect()
            self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1, f)

    def test_returns_fired_deferred(self) -> None:
        """A callback returning a fired Deferred passes its result on."""
        def scenario(f: Fire) -> tuple[Any, ...]:
            d: Deferred[int] = Deferred()
            d.addCallback(lambda r: succeed(r * 2))
            f(d, 4)
            return _outcome(d, [])
        self.assertEqual(self._both(scenario), (True, 0, [], 8))

    def test_returns_unfired_deferred(self) -> None:
        """A callback returning an unfired Deferred pauses the chain until that one fires."""
        def scenario(f: Fire) -> tuple[Any, ...]:
            inner: Deferred[int] = Deferred()
            d: Deferred[int] = Deferred()
            d.addCallback(lambda r: inner)
            f(d, 4)
            before = _outcome(d, [])
            inner.callback(5)
            return before, (d.called, d.paused)
        self.assertEqual(self._both(scenario), ((True, 1, [], "pending"), (True, 0)))

    def test_callback_adds_callback(self) -> None:
        """A callback that adds another callback to the same Deferred has it run."""
        def scenario(f: Fire) -> tuple[Any, ...]:
            seen: list[Any] = []
            d: Deferred[int] = Deferred()
            d.addCallback(lambda r: d.addCallback(lambda r2: seen.append(r2) or "second") and r)
            f(d, 3)
            return list(seen), _outcome(d, seen)
        self.assertEqual(self._both(scenario), ([3], (True, 0, [3], "second")))

    def test_no_callback_and_two_callbacks(self) -> None:
        """Deferreds with no callback or several are fired the general way."""
        def scenario(f: Fire) -> tuple[Any, ...]:
            bare: Deferred[int] = Deferred()
            f(bare, 1)
            two: Deferred[int] = Deferred()
            two.addCallback(lambda r: r + 1).addCallback(lambda r: r * 10)
            f(two, 1)
            return _outcome(bare, []), _outcome(two, [])
        self.assertEqual(self._both(scenario), ((True, 0, [], 1), (True, 0, [], 20)))

    def test_already_called(self) -> None:
        """Firing twice raises AlreadyCalledError; after cancel it is ignored."""
        for f in (_callback, fire):
            d: Deferred[int] = Deferred()
            d.addCallback(lambda r: r)
            f(d, 1)
            self.assertRaises(AlreadyCalledError, f, d, 2)
            cancelled: Deferred[int] = Deferred()
            cancelled.addErrback(lambda failure: None)
            cancelled.cancel()
            f(cancelled, 1)

    def test_chained_and_paused(self) -> None:
        """A Deferred another one waits on (it was returned from a callback), or a paused
        one, hands its result on as Twisted does."""
        def scenario(f: Fire) -> tuple[Any, ...]:
            outer: Deferred[int] = Deferred()
            d: Deferred[int] = Deferred()
            outer.addCallback(lambda r: d)
            outer.callback(0)
            f(d, 7)
            seen: list[Any] = []
            paused: Deferred[int] = Deferred()
            paused.addCallback(lambda r: seen.append(r) or r + 1)
            paused.pause()
            f(paused, 1)
            before = list(seen), _outcome(paused, [])
            paused.unpause()
            return _outcome(outer, []), before, (paused.called, paused.paused, seen)
        self.assertEqual(self._both(scenario),
                         ((True, 0, [], 7), ([], (True, 1, [], "pending")), (True, 0, [1])))

    def test_debug_mode(self) -> None:
        """With Deferred debugging on, firing goes the general way (it records call sites)."""
        self.patch(Deferred, "debug", True)
        calls: list[Any] = []
        self.patch(fire_module.Deferred, "callback", lambda d, r: calls.append(r))
        d: Deferred[int] = Deferred()
        d.addCallback(lambda r: r)
        fire(d, 1)
        self.assertEqual(calls, [1])
