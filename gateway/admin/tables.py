"""Plain-text tables, durations and a progress bar for ``gatewayctl`` (standard library only)."""

from __future__ import annotations

import sys
TYPE_CHECKING = False  # typing costs ~5 ms of start-up: annotations only
if TYPE_CHECKING:
    from typing import IO, Any, Sequence

from gateway.utctext import utc_text  # noqa: E402  (after the typing guard, as cli.py's imports)


def duration(seconds: Any) -> str:
    """``seconds`` for a person: ``42s``, ``5m 3s``, ``2h 10m``, ``3d 4h``; ``-`` when unknown."""
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or seconds < 0:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def size(n: Any) -> str:
    """A byte count for a person: ``512 B``, ``1.5 KiB``, ``3.0 MiB``."""
    if not isinstance(n, (int, float)):
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns padded to their widest cell, a header line first; ``(none)`` when empty. A row
    is one line: a cell of several lines shows its first and `` ...``."""
    if not rows:
        return "(none)"
    cells = [[str(h) for h in headers]] + [["-" if c is None else _one_line(str(c)) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def service_state(service: Any) -> str:
    """A service of ``GET /status`` in a word or a line: ``stopped``; why a started one does not
    do its job, its ``error`` (a failure) or ``off (<its off>)`` (an ordinary reason); else ``running``."""
    if not service.get("running"):
        return "stopped"
    if service.get("error"):
        return str(service["error"])
    return f"off ({service['off']})" if service.get("off") else "running"


def link_problem(link: Any) -> str:
    """What keeps a cloud link (as ``GET /links`` gives it) from its job beyond its connection's
    ``last_error``: its cursor's failing saves (``cursor_failing``) and a session another client
    keeps taking over (``taken_over``), as :func:`problem` says them."""
    return problem(link, ("cursor_failing", "taken_over"))


def stream_problem(stream: Any) -> str:
    """What keeps a journal stream (as ``GET /journal`` gives it) from its job: its refusing
    appends (``refusing``) and its loss ledger not written (``ledger_failing``), as
    :func:`problem` says them."""
    return problem(stream, ("refusing", "ledger_failing"))


def stream_losses(stream: Any) -> str:
    """The records a journal stream (as ``GET /journal`` gives it) lost since the gateway
    started, by reason (its ``losses``): ``195688 max-bytes``, several joined by ``, ``; ``""``
    when it lost none (or the row has no such key: a gateway older than this gatewayctl)."""
    losses = stream.get("losses") if isinstance(stream, dict) else None
    return ", ".join(f"{x['records']} {x['reason']}" for x in losses or () if x.get("records"))


def problem(row: Any, keys: Sequence[str]) -> str:
    """The failures of an API answer's ``row`` under ``keys`` (each ``null`` or a
    :class:`~gateway.degraded.Degraded` as JSON), each as the gateway's status words a failure
    (:func:`gateway.degraded.describe`), joined by ``; ``; ``""`` when none holds (or the row has
    no such key: a gateway older than this gatewayctl)."""
    failing = [f for f in (row.get(key) for key in keys) if isinstance(f, dict)] if isinstance(row, dict) else []
    if not failing:
        return ""
    from gateway.degraded import Degraded, describe  # (dataclasses: only when there is one to show)

    return "; ".join(describe(Degraded(str(f.get("reason", "")), str(f.get("error", "")),
                                       float(f.get("since") or 0), int(f.get("failures") or 0))) for f in failing)


def fleet_rows(fleet: Any) -> list[tuple[str, str]]:
    """``GET /fleet`` as ``(what, value)`` rows for a person: the server, what the channel does
    (failing since when, held by the server's ``Retry-After`` until when), its polls, the last
    one, the last success and error, the next poll, the server's sleep, the action under way,
    the software installed, the feedback waiting."""
    state = str(fleet.get("state", "-"))
    if state == "failing":
        state += f" ({fleet.get('failures_in_row')} in a row since {utc_text(fleet.get('failing_since'))})"
    elif state == "held":
        state += f" by the server's Retry-After until {utc_text(fleet.get('held_until'))}"
    error = fleet.get("last_error") or ""
    sleep = fleet.get("server_sleep_s")
    waiting = fleet.get("feedback_waiting") or 0
    dropped = fleet.get("feedback_dropped")
    last = fleet.get("last_poll_outcome") or ""
    return [
        ("server", f"{fleet.get('server')} (tenant {fleet.get('tenant')}, controller {fleet.get('controller_id')})"),
        ("state", state),
        ("polls", f"{fleet.get('polls')} ({fleet.get('failures')} failed)"),
        ("last poll", f"{utc_text(fleet.get('last_poll_at'))} {last}" if last else "none yet"),
        ("last success", utc_text(fleet.get("last_success_at")) if fleet.get("last_success_at") is not None
         else "none yet"),
        ("last error", f"{error} (at {utc_text(fleet.get('last_error_at'))})" if error else "none"),
        ("next poll", f"in {duration(fleet.get('next_poll_in_s'))}" if fleet.get("next_poll_in_s") is not None
         else "-"),
        ("server sleep", duration(sleep) if sleep is not None else "none said (fleet.poll_interval)"),
        ("action", f"{fleet.get('action_id')} {fleet.get('action_status')}" if fleet.get("action_id") else "none"),
        ("installed", fleet.get("sw_version") or "-"),
        ("feedback waiting", f"{waiting} (the oldest {duration(fleet.get('feedback_oldest_age_s'))})" if waiting
         else "0"),
        ("feedback dropped", f"{dropped} (refused for good by the server)" if dropped else "0"),
    ]


def _one_line(text: str) -> str:
    """``text``'s first line, `` ...`` after it when more follow."""
    lines = text.splitlines() or [""]
    return lines[0] + (" ..." if len(lines) > 1 else "")


class ProgressBar:
    """A one-line bar on stderr, drawn only when stderr is a terminal.

    :param label: shown before the bar.
    :param stream: where to draw (stderr).
    """

    def __init__(self, label: str, stream: IO[str] | None = None) -> None:
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty()
        self._last = -1

    def update(self, done: float, total: float | None) -> None:
        """Redraw at ``done`` of ``total`` (a percentage when total is 100)."""
        if not self.enabled or not total:
            return
        percent = max(0, min(100, int(100 * done / total)))
        if percent == self._last:
            return
        self._last = percent
        filled = percent * 30 // 100
        self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] {percent:3d}%")
        self.stream.flush()

    def close(self) -> None:
        """End the bar's line."""
        if self.enabled and self._last >= 0:
            self.stream.write("\n")
            self.stream.flush()


def pending_change(pending: Any, now: float) -> str:
    """One line about a configuration change waiting for confirmation (``GET /status``'s
    ``config_pending``): which keys, by whom, how long until it is reverted."""
    if not isinstance(pending, dict):
        return str(pending)
    keys = ", ".join(str(k) for k in pending.get("keys") or ()) or "a change"
    text = f"{keys} (by {pending.get('origin', '?')}) waits for confirmation"
    deadline = pending.get("deadline")
    if isinstance(deadline, (int, float)):
        text += f": reverted in {duration(max(0.0, deadline - now))} unless {confirming_links(pending)}"
    return text


def confirming_links(change: Any) -> str:
    """What confirms a change (``config_pending`` or ``POST /config/apply``'s answer) by its
    ``required_links``: ``link cloud is up again``, ``links a, b are up again`` (every one),
    or, when it names none (none was up when it was made), ``a cloud link is up`` (any one)."""
    names = change.get("required_links") if isinstance(change, dict) else None
    names = [str(name) for name in names] if isinstance(names, list) else []
    if not names:
        return "a cloud link is up"
    if len(names) == 1:
        return f"link {names[0]} is up again"
    return f"links {', '.join(names)} are all up again"


def previous_stop(previous: Any) -> str | None:
    """One line about how the previous run on the state directory ended (``GET /status``'s
    ``previous_stop``); ``None`` when no previous run is known."""
    if not isinstance(previous, dict) or previous.get("kind") not in ("clean", "unclean"):
        return None
    count = previous.get("unclean_stops")
    at = utc_text(previous.get("at"))
    if previous["kind"] == "clean":
        text = f"previous run: stopped cleanly at {at}"
    else:
        pid = previous.get("pid")
        text = (f"previous run: did not stop cleanly ({previous.get('cause') or 'unknown cause'}): pid"
                f" {pid if pid is not None else 'unknown'}, last known alive {at}")
    if isinstance(count, int) and count > 0:
        text += f"; unclean stops on this state directory: {count}"
        if previous["kind"] == "clean":
            text += f", the last known alive {utc_text(previous.get('last_unclean_at'))}"
    return text

