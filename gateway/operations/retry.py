"""The default retry delays of the operation services (updates, uploads) and of the twin's
shadow sync: Twisted's backoffPolicy, imported for the first retry.

``twisted.application.internet`` brings ``ClientService`` and automat with it; an idle
gateway retries nothing (see docs/benchmarks.md, idle footprint).
"""

from __future__ import annotations

from typing import Any, Callable


def lazy_backoff(**options: Any) -> Callable[[int], float]:
    """``twisted.application.internet.backoffPolicy(**options)``, built when first asked for a delay.

    :param options: ``backoffPolicy``'s keyword arguments (``initialDelay``, ``maxDelay``,
        ``factor``, ``jitter``).
    :return: ``attempt -> seconds``, as backoffPolicy's.
    """
    policy: Callable[[int], float] | None = None

    def delay(attempt: int) -> float:
        nonlocal policy
        if policy is None:
            from twisted.application.internet import backoffPolicy

            policy = backoffPolicy(**options)
        return policy(attempt)

    return delay
