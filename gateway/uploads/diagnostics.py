"""The diagnostics bundle: the config with secrets redacted, the services' stats and the
apps' recent logs, as one ``.tar.gz`` written in a thread (never on the reactor)."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger

from gateway.atomic import write_parts_atomically
from gateway.redaction import redact

BUNDLE_MODE = 0o600
"""The bundle's permissions: it holds the configuration and the apps' logs, for the gateway's eyes only."""

BUNDLES_DIR = "bundles"
"""Where the bundles are written, under the uploads' directory (``<state_dir>/uploads/bundles``)."""


def plain(value: Any) -> Any:
    """Dataclasses, mappings, tuples and paths as JSON-able values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def write_bundle(destination: Path, documents: dict[str, Any], logs: list[Path], max_log_bytes: int) -> Path:
    """Write the bundle (blocking: run it in a thread), durably: an upload's record names it,
    and a restart sends it again from the disk (:func:`gateway.atomic.write_parts_atomically`).

    :param destination: the ``.tar.gz`` to write (atomically: a temp name, fsynced, then a
        rename), mode 0600.
    :param documents: name -> JSON-able value, each stored as ``<name>.json``.
    :param logs: log files; the last ``max_log_bytes`` of each are stored under ``logs/``.
    :param max_log_bytes: the tail kept per log.
    """
    write_parts_atomically(destination, _bundle_parts(documents, logs, max_log_bytes), BUNDLE_MODE)
    return destination


def remove_unnamed_bundles(directory: Path, named: set[str]) -> list[str]:
    """Remove what ``directory`` holds that no upload names (blocking: run it in a thread): a
    bundle written, or half written under its temporary name, by a gateway killed before the
    upload's record named it, or kept once the record that named it was forgotten. Nothing
    else ever removes them.

    :param directory: the bundles' directory (absent is fine).
    :param named: the names of the bundles that uploads' records name.
    :return: the names removed.
    :raises OSError: when the directory cannot be listed or a file removed.
    """
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    removed = []
    for entry in entries:
        if entry.name not in named:
            os.unlink(entry.path)
            removed.append(entry.name)
    return removed


def _bundle_parts(documents: dict[str, Any], logs: list[Path], max_log_bytes: int) -> Iterator[bytes]:
    """The bundle's bytes, a document or a log tail at a time (never the whole bundle at once)."""
    import tarfile  # not at import: an idle gateway writes no bundle

    now = int(time.time())
    sink = io.BytesIO()

    def taken() -> bytes:
        data = sink.getvalue()
        sink.seek(0)
        sink.truncate()
        return data

    with tarfile.open(fileobj=sink, mode="w:gz") as tar:
        for name, value in documents.items():
            data = json.dumps(value, indent=1, sort_keys=True, default=str).encode()
            info = tarfile.TarInfo(f"{name}.json")
            info.size, info.mtime = len(data), now
            tar.addfile(info, io.BytesIO(data))
            yield taken()
        for log in logs:
            try:
                with open(log, "rb") as f:
                    size = f.seek(0, io.SEEK_END)
                    f.seek(max(0, size - max_log_bytes))
                    data = f.read(max_log_bytes)
            except OSError:
                continue  # rotated away meanwhile
            info = tarfile.TarInfo("logs/" + "_".join(log.parts[-3:]))
            info.size, info.mtime = len(data), now
            tar.addfile(info, io.BytesIO(data))
            yield taken()
    yield taken()


class DiagnosticsBundle:
    """Builds the bundle from snapshots taken on the reactor thread, then writes it in a thread.

    :param state_dir: the gateway's state directory (log globs are relative to it).
    :param config: the loaded configuration (redacted before it is written).
    :param sources: name -> callable returning a snapshot (stats, statuses); failures are recorded.
    :param log_globs: globs of the logs to include.
    :param run_blocking: runs blocking work in a thread.
    :param max_log_bytes: the tail kept per log.
    """

    log = Logger()

    def __init__(self, state_dir: Path, config: Any, sources: Mapping[str, Callable[[], Any]],
                 log_globs: tuple[str, ...], run_blocking: Callable[..., Deferred[Any]],
                 max_log_bytes: int = 1 << 20) -> None:
        self.state_dir, self.config, self.sources = state_dir, config, sources
        self.log_globs, self.run_blocking, self.max_log_bytes = log_globs, run_blocking, max_log_bytes

    def build(self, destination: Path) -> Deferred[Path]:
        """Write the bundle to ``destination``; fires with its path."""
        documents: dict[str, Any] = {"config": redact(plain(self.config))}
        for name, source in self.sources.items():
            try:
                documents[name] = plain(source())
            except Exception as error:  # a broken snapshot must not stop the bundle
                documents[name] = {"error": repr(error)}
        return maybeDeferred(self.run_blocking, self._write, destination, documents)

    def _write(self, destination: Path, documents: dict[str, Any]) -> Path:
        logs = sorted({p for pattern in self.log_globs for p in self.state_dir.glob(pattern) if p.is_file()})
        return write_bundle(destination, documents, logs, self.max_log_bytes)
