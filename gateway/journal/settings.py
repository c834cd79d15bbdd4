"""The ``journal`` section of the configuration."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Literal


@dataclass(frozen=True)
class StreamSettings:
    """Durability, limits and overflow policy of one stream."""

    segment_bytes: int = field(
        default=16 * 2**20,
        metadata={"min": 4096, "doc": "segment file size in bytes"},
    )
    sync: Literal["sync", "interval", "none"] = field(
        default="sync",
        metadata={
            "doc": "sync: an append is acknowledged after fsync (group commit); "
            "interval: acknowledged at once, fsync every sync_interval_ms; "
            "none: acknowledged at once, written on the next reactor turn, fsynced only at stop"
        },
    )
    sync_interval_ms: int = field(
        default=200, metadata={"min": 1, "max": 60_000, "doc": "fsync period for sync: interval"}
    )
    max_bytes: int = field(
        default=1024 * 2**20,
        metadata={"min": 8192, "doc": "most bytes the stream keeps on disk"},
    )
    max_age_s: float = field(
        default=7 * 86400.0,
        metadata={"min": 0.0, "doc": "records older than this expire (0: never)"},
    )
    min_free_bytes: int = field(
        default=64 * 2**20,
        metadata={"min": 0, "doc": "free space to leave on the journal's filesystem"},
    )
    overflow: Literal["drop-oldest", "reject-new"] = field(
        default="drop-oldest",
        metadata={
            "doc": "over a limit: drop-oldest deletes the oldest segment; reject-new "
            "refuses the append (MQTT QoS 1/2 publishers get no ack and retry)"
        },
    )


@dataclass(frozen=True)
class JournalSettings:
    """The disk journal: where it lives and how its streams behave."""

    directory: str = field(
        default="journal",
        metadata={"path": True, "doc": "journal directory; relative paths are under the state directory"},
    )
    defaults: StreamSettings = field(
        default_factory=StreamSettings,
        metadata={"doc": "settings of every stream not named in streams"},
    )
    streams: dict[str, StreamSettings] = field(
        default_factory=dict,
        metadata={"doc": "per-stream settings, by stream name (replace defaults whole)"},
    )
    retention_check_s: float = field(
        default=10.0,
        metadata={"min": 0.1, "doc": "how often record age and free disk are checked"},
    )

    def config_problems(self) -> Iterable[tuple[tuple[str, ...], str]]:
        """Stream names must be usable as directory names (``link-<name>`` for a link)."""
        from gateway.journal.cursors import check_name

        for name in self.streams:
            try:
                check_name(name)
            except ValueError as exc:
                yield ("streams", name), str(exc)

    def for_stream(self, name: str) -> StreamSettings:
        """The settings that apply to stream ``name``."""
        return self.streams.get(name, self.defaults)
