"""Fire a Deferred faster when it holds one plain callback pair (the usual append).

``Deferred.callback`` runs Twisted's general chain loop: about 1.6 µs for one callback on
the reference machine, a fifth of the journal's Python per record. :func:`fire` calls the
single callback directly and hands anything unusual (more callbacks, a failure, a
Deferred returned, chaining, debugging) back to Twisted's own loop, so the result is the
same as ``d.callback(result)``. It reads Deferred internals of the pinned Twisted release;
``tests/journal/test_fire.py`` fails if they change.
"""

from __future__ import annotations

from typing import Any, TypeVar

from twisted.internet.defer import _CONTINUE, _DEFERRED_SUBCLASSES, _NONE_KWARGS, Deferred
from twisted.python.failure import Failure

T = TypeVar("T")


def _passthrough(result: Any) -> Any:
    return result


#: A callback pair that hands a result on unchanged (lets Twisted's loop chain a Deferred).
_PASS = ((_passthrough, (), {}), (_passthrough, (), {}))


def fire(d: Deferred[T], result: T) -> None:
    """``d.callback(result)``, with the same outcome."""
    cbs = d._callbacks
    if len(cbs) != 1 or d.called or d.paused or Deferred.debug:
        d.callback(result)
        return
    (cb, args, kwargs), _ = cbs[0]
    if cb is _CONTINUE:
        d.callback(result)
        return
    del cbs[0]
    d.called = True
    d._canceller = None
    d._runningCallbacks = True
    try:
        out = cb(result) if kwargs is _NONE_KWARGS and not args else cb(result, *args, **kwargs)
    except BaseException:
        out = Failure()
    finally:
        d._runningCallbacks = False
    d.result = out
    if cbs or type(out) in _DEFERRED_SUBCLASSES or isinstance(out, Failure):
        if type(out) in _DEFERRED_SUBCLASSES:
            cbs.insert(0, _PASS)  # Twisted's loop chains a Deferred a callback returns
        d._runCallbacks()
