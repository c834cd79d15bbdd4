"""The twin's read-side snapshot: what it holds and how its shadow sync stands (no I/O)."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.degraded import Degraded


@dataclass(frozen=True)
class ShadowSyncSnapshot:
    """The shadow sync of one link.

    :ivar thing: the AWS thing name.
    :ivar connected: whether the link's connection is up.
    :ivar pending: shadow requests read from the stream and not yet answered.
    :ivar inflight: requests awaiting an answer now (gets included).
    :ivar refused: requests the cloud refused for good (each logged).
    :ivar versions: shadows whose version is known.
    :ivar behind: shadows the cloud is behind on (a request of theirs the journal refused: the
        twin holds the change and the sync corrects the shadow later), kept across restarts.
    :ivar behind_since: when the first of those fell behind (seconds since the epoch), or
        ``None`` when none is.
    :ivar unreadable: shadows behind whose last get the cloud refused for good (403, 400...):
        they stay behind, read again on a backoff of at most five minutes.
    :ivar gets_refused: gets of shadows behind the cloud refused for good, since the start.
    """

    thing: str
    connected: bool
    pending: int
    inflight: int
    refused: int
    versions: int
    behind: int = 0
    behind_since: float | None = None
    unreadable: int = 0
    gets_refused: int = 0


@dataclass(frozen=True)
class TwinSnapshot:
    """The local digital twin.

    :ivar root: the gateway's thing id.
    :ivar things: how many things it holds (the gateway's and its children).
    :ivar revision: the gateway's thing's revision.
    :ivar sync: the shadow sync, when one runs.
    :ivar save_failing: while writes of ``things.json`` fail (a full or read-only disk: changes
        are answered 503), reason ``not-saved``, the last error, since when and how many
        failed; else ``None``.
    :ivar save_s: how long the last write of ``things.json`` that worked took (encoded,
        written, fsynced and renamed in a thread), in seconds from its hand-over to the thread
        until it was durable; ``None`` until one is written.
    :ivar save_bytes: that file's size in bytes; ``None`` until one is written.
    :ivar max_things: the things it holds at most (``twin.max_things``).
    :ivar things_refused: commands refused (403) since the start because they would have
        created a thing past ``max_things``.
    """

    root: str
    things: int
    revision: int
    sync: ShadowSyncSnapshot | None
    save_failing: Degraded | None = None
    save_s: float | None = None
    save_bytes: int | None = None
    max_things: int = 0
    things_refused: int = 0
