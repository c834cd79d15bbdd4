"""Telemetry errors."""

from __future__ import annotations

from gateway.errors import GatewayError
from gateway.shown import shown_repr


class TelemetryError(GatewayError):
    """Telemetry could not start or serve (e.g. the metrics endpoint cannot listen)."""


class UnknownReport(TelemetryError, KeyError):
    """A report was requested by a name the gateway does not build.

    :param name: the name asked for (a JSON request's ``report`` may be no string: ``5``,
        ``None``, named as it is; a long one is cut as :func:`gateway.shown.shown` cuts it).
    :param known: the names it does build.
    """

    def __init__(self, name: object, known: tuple[str, ...]) -> None:
        super().__init__(f"unknown report {shown_repr(name)} (known: {', '.join(known)})")
        self.name = name
        self.known = known

    def __str__(self) -> str:
        return str(self.args[0])


class ReportNotPublished(TelemetryError):
    """A report was built, but the local broker or the journal refused it: it is on neither
    its local topic nor its way to the cloud (a stream full under ``overflow: reject-new``,
    a disk error, the broker stopping)."""


class ReportTooLarge(ReportNotPublished):
    """A report no journal stream that carries it can ever hold: it is larger than the
    stream's ``max_bytes`` on its own (``gateway.journal.errors.RecordTooLargeError``), so
    building it again does not help; the stream's ``max_bytes`` must grow."""
