"""``usage_report``: bytes and packets per interface and per cloud link, since boot (or start)
and since the last report; bytes per hosted app where the platform can count them.

:func:`interface_counters` is blocking (``/proc/net/dev``): run it in a thread.
"""

from __future__ import annotations

from typing import Any, Mapping

from gateway.links.snapshot import LinksSnapshot

#: psutil's per-interface counters, as the report names them.
INTERFACE_FIELDS = ("bytes_sent", "bytes_recv", "packets_sent", "packets_recv", "errin", "errout", "dropin", "dropout")
#: A link's counters in the report.
LINK_FIELDS = ("bytes_up", "bytes_down", "sent", "acked")

Counters = dict[str, dict[str, int]]


def interface_counters() -> Counters:
    """Per interface, psutil's counters since boot (blocking)."""
    import psutil

    return {name: {f: int(getattr(c, f)) for f in INTERFACE_FIELDS}
            for name, c in sorted(psutil.net_io_counters(pernic=True).items())}


def link_counters(links: LinksSnapshot) -> Counters:
    """Per cloud link, its byte and message counters since the links service started (from
    zero again after a configuration change, which :meth:`UsageTracker.carried` carries over)."""
    return {link.name: {f: int(getattr(link, f)) for f in LINK_FIELDS} for link in links.links}


def delta(now: Mapping[str, int], before: Mapping[str, int] | None) -> dict[str, int]:
    """``now - before`` per counter; a counter that went down (an interface re-created, a
    counter wrapped) counts from zero again."""
    if before is None:
        return dict(now)
    return {k: v - before.get(k, 0) if v >= before.get(k, 0) else v for k, v in now.items()}


class UsageTracker:
    """Remembers the counters of the last report, so the next one says what happened since.

    :param baseline_time: when the first period starts (the gateway's start).
    :param baseline_steady: the same on a clock that never steps (``steady_seconds``), which
        gives the period's ``seconds``; by default ``baseline_time``.
    """

    def __init__(self, baseline_time: float, baseline_steady: float | None = None) -> None:
        self.last_time = baseline_time
        self.last_steady = baseline_time if baseline_steady is None else baseline_steady
        self.last: dict[str, Counters] = {}

    def set_baseline(self, kind: str, counters: Counters) -> None:
        """Counters at the start of the first period (taken when the service starts); those
        of a report already made are kept (a tracker carried over a configuration change)."""
        self.last.setdefault(kind, counters)

    def carried(self, links: Counters) -> "UsageTracker":
        """The tracker for the services a configuration change starts: the period and the
        interfaces' counters (the kernel's) go on from the last report, and so do the links':
        what the stopped links counted after the last report (``links``, their counters when
        they stopped) is added to the next report's ``since_last``, beside what the new ones
        count from zero. The apps' start again from zero with their services.

        :param links: per link, the final counters of the links the change stopped
            (:func:`link_counters`).
        """
        tracker = UsageTracker(self.last_time, self.last_steady)
        if "interfaces" in self.last:
            tracker.last["interfaces"] = self.last["interfaces"]
        reported = self.last.get("links", {})
        # A baseline of minus the unreported part: since_last = new - baseline (delta()).
        tracker.last["links"] = {name: {field: reported.get(name, {}).get(field, 0) - value
                                        for field, value in final.items()}
                                 for name, final in links.items()}
        return tracker

    def section(self, kind: str, counters: Counters, total_key: str) -> dict[str, Any]:
        """Per name: the totals (under ``total_key``) and the change since the last report."""
        before = self.last.get(kind, {})
        self.last[kind] = counters
        return {name: {total_key: values, "since_last": delta(values, before.get(name))}
                for name, values in counters.items()}

    def period(self, now: float, steady_now: float | None = None) -> dict[str, float]:
        """The period this report covers; the next one starts now.

        ``start`` and ``end`` are times of day; ``seconds`` is how long it lasted, on the
        steady clock when ``steady_now`` is given (a step of the wall clock in between does
        not count: ``end - start`` then differs from it by the step)."""
        steady_now = now if steady_now is None else steady_now
        start, self.last_time = self.last_time, now
        lasted, self.last_steady = steady_now - self.last_steady, steady_now
        return {"start": start, "end": now, "seconds": round(lasted, 3)}
