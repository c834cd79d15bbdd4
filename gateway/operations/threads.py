"""The private thread pool of an operation service (updates, uploads)."""

from __future__ import annotations

import threading
from typing import Any

from twisted.python.threadpool import ThreadPool


def daemon_thread(*args: Any, **kwargs: Any) -> threading.Thread:
    """A pool thread that does not hold the interpreter's exit."""
    return threading.Thread(*args, daemon=True, **kwargs)


def daemon_pool(min_threads: int, max_threads: int, name: str) -> ThreadPool:
    """A thread pool of daemon threads: if a stopService elsewhere in the tree raises before
    this pool is stopped, the interpreter can still exit.

    :param min_threads: threads kept once started.
    :param max_threads: most threads at once.
    :param name: the pool's (and its threads') name.
    """
    pool = ThreadPool(min_threads, max_threads, name=name)
    pool.threadFactory = daemon_thread  # type: ignore[assignment]
    return pool
