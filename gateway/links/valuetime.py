"""The time a routed value carries: when the gateway received it, or the time its sender gave it.

The local HTTP ingest's record requests carry each value's own timestamp (a backlog an app
sends late). That time goes into the journal record's ``timestamp`` header, and an HTTP
link sends it; the record's ``received`` stays the moment the gateway received the value,
so the journal's ages and its ``max_age_s`` expiry go by arrival, as they assume (an old
timestamp in ``received`` that started a segment made the fresh segment before it expire).
"""

from __future__ import annotations

from gateway.journal.record import Record

#: The record header holding a value's own time (epoch seconds).
TIMESTAMP_HEADER = "timestamp"


def timestamp_headers(timestamp: float | None) -> tuple[tuple[str, str], ...]:
    """The headers of a record whose value carries ``timestamp`` (none when it is ``None``)."""
    return () if timestamp is None else ((TIMESTAMP_HEADER, repr(float(timestamp))),)


def value_time(record: Record) -> float:
    """The time ``record``'s value carries: its ``timestamp`` header, else when it was received."""
    for key, value in record.headers:
        if key == TIMESTAMP_HEADER:
            return float(value)
    return record.received
