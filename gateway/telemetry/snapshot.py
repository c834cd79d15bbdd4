"""The per-app accounting's read-side snapshot: whether it counts, and if not why (no I/O)."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.degraded import Degraded


@dataclass(frozen=True)
class AccountingSnapshot:
    """Bytes per hosted app (:mod:`gateway.telemetry.appbytes`), since its service started.

    :ivar counting: its nftables table is made: the apps' bytes are counted.
    :ivar off: why it does not count, when that is an ordinary reason rather than a failure
        (the gateway not root, no ``nft`` command, no usable cgroup v2, ``app_accounting:
        off``); else ``""``.
    :ivar failing: while ``nft`` fails it: reason ``table-not-made`` (its table could not be
        made at start, or ``nft`` not even run: nothing is counted until the services next
        start) or ``counters-not-read`` (a read of the counters failed; ``None`` again once
        one works), the last error, since when and how many failed; else ``None``.
    """

    counting: bool
    off: str
    failing: Degraded | None = None
