"""The gateway's garbage collector settings."""

from __future__ import annotations

import asyncio
import gc
import sys
import weakref

from twisted.trial.unittest import SkipTest, TestCase

from gateway import gctuning


class TuneTests(TestCase):
    """``gctuning.tune`` as ``twistd gateway`` calls it at start."""

    def setUp(self) -> None:
        threshold = gc.get_threshold()
        self.addCleanup(gc.set_threshold, *threshold)
        self.addCleanup(gc.unfreeze)

    def test_raises_young_threshold_only(self) -> None:
        """The young generation is collected every YOUNG_THRESHOLD allocations; the older
        generations keep their ratios."""
        _, middle, old = gc.get_threshold()
        gctuning.tune()
        self.assertEqual(gc.get_threshold(), (gctuning.YOUNG_THRESHOLD, middle, old))
        self.assertGreater(gctuning.YOUNG_THRESHOLD, 700)

    def test_freezes_what_is_alive(self) -> None:
        """Objects alive at start move to the permanent generation, out of every collection."""
        gc.unfreeze()
        gctuning.tune()
        self.assertGreater(gc.get_freeze_count(), 1000)

    def test_cycles_still_collected(self) -> None:
        """Garbage cycles made after tuning are still freed by a collection."""
        gctuning.tune()

        class Node:
            pass

        a, b = Node(), Node()
        a.other, b.other = b, a  # type: ignore[attr-defined]
        ref = weakref.ref(a)
        del a, b
        gc.collect()
        self.assertIsNone(ref())


class ReleaseFreeMemoryTests(TestCase):
    """``gctuning.release_free_memory``, called once the gateway has started."""

    def test_hands_back_free_heap_pages(self) -> None:
        """On glibc, freed heap memory goes back to the kernel: malloc_trim reports it did."""
        import ctypes

        if not hasattr(ctypes.CDLL(None), "malloc_trim"):
            raise SkipTest("this C library has no malloc_trim (not glibc)")
        garbage = [bytearray(4096) for _ in range(4096)]  # 16 MB in the C heap, then freed
        del garbage
        self.assertTrue(gctuning.release_free_memory())

    def test_no_malloc_trim_is_no_error(self) -> None:
        """A C library without malloc_trim (musl) is left alone: no error, nothing handed back."""
        import ctypes

        class NoTrim:
            def __getattr__(self, name: str) -> object:
                raise AttributeError(name)

        self.patch(ctypes, "CDLL", lambda name: NoTrim())
        self.assertFalse(gctuning.release_free_memory())


class PrimeFutureIteratorsTests(TestCase):
    """``gctuning.prime_future_iterators``, called while the gateway starts."""

    def test_later_awaits_reuse_the_primed_iterators(self) -> None:
        """Once primed, as many Future iterators as the cache holds are made without
        allocating: they are the primed ones, made at start."""
        if sys.implementation.name != "cpython":
            raise SkipTest("the cache of Future iterators is CPython's asyncio C module's")
        loop = asyncio.new_event_loop()
        self.addCleanup(loop.close)
        n = gctuning.FUTURE_ITERATORS
        # Empty the cache first (hold every iterator it had, and more), so what the next
        # step finds in it is only what priming put there.
        drained = [future.__await__() for future in [loop.create_future() for _ in range(n)]]
        gctuning.prime_future_iterators(loop)
        futures = [loop.create_future() for _ in range(n)]
        before = sys.getallocatedblocks()
        iterators = [future.__await__() for future in futures]
        grown = sys.getallocatedblocks() - before
        self.assertLess(grown, n // 4)
        del iterators, drained
