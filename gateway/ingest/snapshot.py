"""The ingest's read-side snapshot: whether the device API listens and what it has taken in (no I/O)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class IngestSnapshot:
    """What the local HTTP ingest is doing (counters since the ingest service started: the
    gateway's start, or the last configuration change applied or reverted while it runs, which
    restarts every service; they start again from zero then).

    :ivar listening: the endpoint is bound.
    :ivar error: why it is not, if it is not (``""`` otherwise, and when the ingest is off).
    :ivar writes: write and record requests answered 204.
    :ivar values: values stored by them, and the other values of those answered 413 for one
        that never fits (stored all the same).
    :ivar unrouted: of those, values no link routes (kept only as last values).
    :ivar refused: requests answered 503 (the journal refused the write).
    :ivar bad: requests answered 4xx.
    :ivar aliases: last values held for reads.
    :ivar waiting: long-polls waiting now.
    :ivar off: why it does not listen when that is the configuration's choice, not a failure
        (``ingest.enabled: false``); else ``""``.
    :ivar devices: devices activated locally (serials whose CIK is kept), at most ``max_devices``.
    """

    listening: bool
    error: str
    writes: int
    values: int
    unrouted: int
    refused: int
    bad: int
    aliases: int
    waiting: int
    off: str = ""
    devices: int = 0
