"""Cyclic garbage collector settings and memory hand-back for the long-running gateway process.

CPython runs a young-generation collection every 700 allocations of container objects
(tuples, lists, instances). The gateway's hot paths allocate a few per message: an MQTT
PUBLISH through the broker, a journal append and its Deferred, a record read back on
replay. Reference counting frees almost all of them, so those collections find nearly
nothing, yet they cost about a tenth of the CPU per message (measured with
``bench/journal.py``, see docs/benchmarks.md). The gateway collects the young
generation every :data:`YOUNG_THRESHOLD` allocations instead, and freezes what it
allocated while starting (modules, configuration) so full collections skip it.

Garbage cycles still get collected, only in bigger, rarer passes. The benchmarks call
:func:`tune` too, so they measure the journal as the gateway runs it.

Starting leaves freed memory behind in glibc's heap (the configuration's YAML, module
loading); glibc only gives the top of its heap back to the kernel on its own.
:func:`release_free_memory` asks it to hand back every free page once the services have
started (``malloc_trim(0)``), about 1 MB of resident memory on an idle gateway (see
docs/benchmarks.md, idle footprint).
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import sys
from typing import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime

#: Container allocations between young-generation collections (CPython's default: 700).
YOUNG_THRESHOLD = 10_000
#: Future iterators asyncio's C module keeps for reuse (``FI_FREELIST_MAXLEN`` in CPython).
FUTURE_ITERATORS = 255


def tune() -> None:
    """Freeze the objects alive now and raise the young-generation threshold.

    Call once, after the process has imported its modules and loaded its configuration.
    The older generations keep CPython's default ratios.
    """
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)


def prime_future_iterators(loop: asyncio.AbstractEventLoop) -> None:
    """Fill asyncio's cache of Future iterators now, while the gateway starts.

    Every ``await`` of an asyncio Future takes an iterator from a cache of up to
    :data:`FUTURE_ITERATORS` that asyncio's C module keeps, and gives it back after. Left to
    fill on its own, the cache fills during the first wave of connections (amqtt's
    authentication awaits a Future per CONNECT), and its iterators stay in the memory pools
    of that wave: each keeps one of CPython's 1 MiB arenas from being handed back after the
    clients have left (``bench/arena_pins.py`` shows them). Made here, they sit among the
    objects of the start. The cost is their size, about 12 KB.
    """
    futures = [loop.create_future() for _ in range(FUTURE_ITERATORS)]
    iterators = [future.__await__() for future in futures]
    del iterators, futures  # back into the cache, which keeps them


def release_free_memory() -> bool:
    """Ask the C library to return its free heap pages to the kernel (glibc's ``malloc_trim(0)``).

    Call once the gateway has started. A C library without ``malloc_trim`` (musl) is left
    alone.

    :return: whether memory was handed back (``False`` also when there is no ``malloc_trim``).
    """
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return bool(trim(0))


def collect_and_release() -> None:
    """Collect every generation now, then hand the freed heap back (:func:`release_free_memory`).

    For when much has become garbage at once, in reference cycles that the rare full
    collections (:func:`tune`) would leave for a long while on a quiet gateway: the services
    a configuration change has replaced, a whole tree of them with their queues and journal
    tails.
    """
    gc.collect()
    release_free_memory()


class ReleaseAfterChurn:
    """Hands freed memory back after a wave of connections has ended.

    Thousands of clients that connect and leave free their memory into the allocators
    (CPython's arenas, glibc's heap), which keep most of it. Once at least ``threshold``
    connections have closed, and then none for ``quiet`` seconds, CPython's attribute-lookup
    cache is emptied, a full collection runs and :func:`release_free_memory` hands the free
    pages back (measured by ``bench/sessions.py``).

    :param clock: schedules the release.
    :param threshold: closed connections that make a wave.
    :param quiet: seconds without a close before the release.
    :param release: what hands memory back (:func:`release_free_memory`).
    """

    def __init__(self, clock: IReactorTime, threshold: int = 1000, quiet: float = 2.0,
                 release: Callable[[], bool] = release_free_memory) -> None:
        self.clock = clock
        self.threshold = threshold
        self.quiet = quiet
        self.release = release
        self.closed = 0
        #: releases done so far.
        self.releases = 0
        self.stopped = False
        self._call: IDelayedCall | None = None

    def connection_closed(self) -> None:
        """One more connection ended; the release waits for ``quiet`` seconds without one."""
        self.closed += 1
        if self.closed < self.threshold or self.stopped:
            return
        if self._call is not None and self._call.active():
            self._call.reset(self.quiet)
        else:
            self._call = self.clock.callLater(self.quiet, self._release)

    def _release(self) -> None:
        self._call = None
        self.closed = 0
        # CPython's attribute-lookup cache keeps a reference to each name it caches (4096
        # entries), and names made at run time (an ``getattr`` by C code with a fresh str)
        # are cached by address: after a wave, hundreds of such strings, one in each
        # otherwise empty pool, kept about 13 of CPython's 1 MiB arenas from being freed.
        sys._clear_type_cache()
        gc.collect()
        self.release()
        self.releases += 1

    def stop(self) -> None:
        """Cancel a pending release; none is scheduled from now on."""
        self.stopped = True
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
