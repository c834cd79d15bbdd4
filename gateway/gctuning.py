"""Cyclic garbage collector settings for the long-running gateway process.

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
"""

from __future__ import annotations

import gc

#: Container allocations between young-generation collections (CPython's default: 700).
YOUNG_THRESHOLD = 10_000


def tune() -> None:
    """Freeze the objects alive now and raise the young-generation threshold.

    Call once, after the process has imported its modules and loaded its configuration.
    The older generations keep CPython's default ratios.
    """
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
