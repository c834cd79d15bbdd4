"""The status page: one self-contained HTML page (no scripts, no external assets) that
shows links, journal streams with a depth sparkline, apps and running operations, and
reloads itself."""

from __future__ import annotations

import base64
import hashlib
import time
from html import escape
from typing import Any, Iterable

from gateway.admin.history import DepthHistory, pick, stream_depth
from gateway.admin.interfaces import ReadSideLike
from gateway.admin.router import NO_FRAMES_BASE_OR_FORMS
from gateway.admin.tables import duration, link_problem, pending_change, previous_stop, stream_problem
from gateway.readside import to_jsonable

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.3em;margin:0 0 .2em}h2{font-size:1.05em;margin:1.4em 0 .4em}
table{border-collapse:collapse;min-width:28em;background:#fff}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left}th{background:#f0f0f0}
.up{color:#186a1e;font-weight:600}.down{color:#a11;font-weight:600}.muted{color:#777}
svg.spark{vertical-align:middle}progress{width:10em}
"""
#: The page's ``Content-Security-Policy``: its one ``<style>`` element (by its hash), nothing
#: else: no scripts, images, fonts, frames, forms or connections; it is framed by no page.
#: (Its inline SVG is markup, its refresh a ``<meta>``: neither needs a source.)
PAGE_POLICY = ("default-src 'none'; style-src 'sha256-"
               + base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
               + "'; " + NO_FRAMES_BASE_OR_FORMS)


def sparkline(series: list[tuple[float, int]], now: float, window: float,
              width: int = 160, height: int = 28) -> str:
    """An inline SVG polyline of depth over the last ``window`` seconds."""
    label = f"depth over the last {int(window // 60)} min"
    if not series:
        return (f'<svg class="spark" width="{width}" height="{height}" role="img" aria-label="{label}">'
                f'<title>{label}: no samples yet</title></svg>')
    top = max(d for _, d in series) or 1
    points = " ".join(
        f"{width * max(0.0, 1 - (now - t) / window):.1f},{height - 2 - (height - 4) * d / top:.1f}"
        for t, d in series)
    return (f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}"'
            f' role="img" aria-label="{label}"><title>{label}: max {top}</title>'
            f'<polyline fill="none" stroke="#2a6fdb" stroke-width="1.5" points="{points}"/></svg>')


def _table(table_id: str, headers: Iterable[str], rows: list[str], empty: str) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    if not rows:
        return f'<p id="{table_id}" class="muted">{escape(empty)}</p>'
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _cells(*values: str) -> str:
    return "<tr>" + "".join(f"<td>{v}</td>" for v in values) + "</tr>"


def _program_state(state: str, error: str) -> str:
    """A program's state cell: in red with why as its tooltip when its last start failed."""
    return f'<span class="down" title="{escape(error)}">{escape(state)}</span>' if error else escape(state)


def _service(state: Any) -> str:
    """A service's name, up or down; one started but kept from its job (an ingest that could
    not listen) is down, and says why in its title; one off for an ordinary reason (the per-app
    accounting, not root) is muted, and says why in its title."""
    name = escape(str(pick(state, "name", default="?")))
    error = str(pick(state, "error", default="") or "")
    off = str(pick(state, "off", default="") or "")
    if not pick(state, "running"):
        return f'<span class="down">{name}</span>'
    if error:
        return f'<span class="down" title="{escape(error)}">{name}</span>'
    return f'<span class="muted" title="off ({escape(off)})">{name}</span>' if off else f'<span class="up">{name}</span>'


def _safe(call: Any) -> Any:
    try:
        return to_jsonable(call())
    except Exception:  # a service that cannot answer must not take the page down
        return None


def render_page(readside: ReadSideLike, history: DepthHistory, now: float, refresh: int,
                pending: Any = None) -> bytes:
    """The status page as UTF-8 HTML.

    :param readside: the snapshots shown.
    :param history: journal depth samples for the sparklines.
    :param now: the steady clock's time (``steady_seconds``: the samples' time base, which a
        step of the wall clock does not move).
    :param refresh: seconds until the page reloads itself.
    :param pending: a configuration change waiting for confirmation, if any.
    """
    status = _safe(readside.status) or {}
    links = pick(_safe(readside.links) or {}, "links", default=[])
    streams = pick(_safe(readside.journal) or {}, "streams", default=[])
    apps = pick(_safe(readside.apps) or {}, "apps", default=[])
    operations = pick(_safe(readside.updates) or {}, "operations", default=[])

    services = " ".join(_service(s) for s in pick(status, "services", default=[]))
    by_stream = {str(pick(s, "name", default="")): s for s in streams}
    link_rows = []
    for link in links:
        name = str(pick(link, "name", default="?"))
        state = str(pick(link, "state", default="?"))
        stream = by_stream.get(f"link-{name}", {})
        link_rows.append(_cells(
            escape(name),
            '<span class="up">up</span>' if state == "connected"
            else f'<span class="down" title="{escape(state)}">down</span>',
            escape(str(pick(link, "backlog", default="-"))),
            escape(duration(pick(stream, "oldest_unacked_age_s", default=None))),
            escape(str(pick(link, "last_error", default=""))),
            f'<span class="down">{escape(problem)}</span>' if (problem := link_problem(link)) else "",
        ))
    stream_rows = []
    for stream in streams:
        name = str(pick(stream, "name", default="?"))
        stream_rows.append(_cells(
            escape(name), escape(str(stream_depth(stream))), escape(str(pick(stream, "bytes", default="-"))),
            sparkline(history.series(name, now), now, history.window),
            f'<span class="down">{escape(problem)}</span>' if (problem := stream_problem(stream)) else "",
        ))
    app_rows = [_cells(
        escape(str(pick(app, "name", default="?"))), escape(str(pick(app, "app", default=""))),
        escape(str(pick(app, "version", default=""))),
        _program_state(str(pick(app, "status", default="?")), str(pick(app, "error", default="") or "")),
        escape(duration(pick(app, "uptime_s", default=None))),
        escape(str(pick(app, "restarts", default=0))),
    ) for app in apps]
    op_rows = []
    for op in operations:
        if not pick(op, "active", default=False):
            continue
        progress = pick(op, "progress_percent", default=None)
        bar = (f'<progress max="100" value="{int(progress)}">{int(progress)}%</progress> {int(progress)}%'
               if isinstance(progress, (int, float)) else '<span class="muted">-</span>')
        op_rows.append(_cells(escape(str(pick(op, "correlation_id", default="?"))),
                              escape(str(pick(op, "action", default=""))),
                              escape(str(pick(op, "status", default="?"))), bar))
    note = ""
    if pending:
        note = (f'<p id="pending" class="down">Configuration: '
                f'{escape(pending_change(to_jsonable(pending), time.time()))}</p>')
    previous = pick(status, "previous_stop", default=None)
    line = previous_stop(previous)
    if line:  # (unclean: in the colour of a problem)
        css = "down" if pick(previous, "kind", default="") == "unclean" else "muted"
        note += f'<p id="previous-stop" class="{css}">{escape(line[0].upper() + line[1:])}</p>'
    generated = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    body = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{int(refresh)}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>gateway {escape(str(pick(status, "version", default="")))}</title>
<style>{STYLE}</style></head><body>
<h1>gateway {escape(str(pick(status, "version", default="")))}</h1>
<p id="summary">pid {escape(str(pick(status, "pid", default="-")))}, up
{escape(duration(pick(status, "uptime_s", default=None)))}; services: {services}
<br><span class="muted">generated {generated}; reloads every {int(refresh)} s</span></p>
{note}
<h2>Links</h2>
{_table("links", ("link", "state", "backlog", "oldest", "last error", "problem"), link_rows,
         "no cloud links configured")}
<h2>Journal streams</h2>
{_table("streams", ("stream", "depth", "bytes", "last hour", "problem"), stream_rows, "no journal streams")}
<h2>Apps</h2>
{_table("apps", ("program", "app", "version", "state", "uptime", "restarts"), app_rows, "no apps")}
<h2>Operations</h2>
{_table("operations", ("operation", "action", "status", "progress"), op_rows, "no operations running")}
</body></html>
"""
    return body.encode("utf-8")
