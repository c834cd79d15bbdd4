"""The ``uploads`` section of the configuration: what is uploaded, when, and how hard to try."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal

from gateway.configurl import URLForm, url_problem
from gateway.mqtt.topics import valid_topic
from gateway.pemfiles import ca_file_problem

_TIME_OF_DAY = re.compile(r"^([01]\d|2[0-3]):[0-5]\d\Z", re.ASCII)  # (ASCII: int() reads ٠٦:٣٠ too)

#: The bucket and key go after the S3-compatible endpoint, which takes neither a path nor a query.
_AWS_ENDPOINT = URLForm("https://host[:port]", path=False, query=False, goes_after="the bucket and key go after it",
                        authenticates="each upload is signed with the AWS credentials the cloud sends")


@dataclass(frozen=True)
class PeriodicSettings:
    """Uploads triggered by the gateway itself: every ``period`` seconds, optionally only
    inside a daily window (local time; ``from`` after ``to`` spans midnight; equal: the whole day)."""

    active: bool = field(default=False, metadata={"doc": "trigger uploads periodically from the start"})
    period: float = field(default=36000.0, metadata={"min": 1.0, "doc": "seconds between periodic triggers"})
    window_from: str | None = field(default=None, metadata={"doc": "HH:MM the daily window opens"})
    window_to: str | None = field(default=None, metadata={"doc": "HH:MM the daily window closes"})

    def config_problems(self) -> Iterable[tuple[tuple[str, ...], str]]:
        """Each window bound is a time of day (see ``gateway.config.ChecksItself``)."""
        for name in ("window_from", "window_to"):
            value = getattr(self, name)
            if value is not None and not _TIME_OF_DAY.match(value):
                yield (name,), f"{value!r} is not a time of day HH:MM"


@dataclass(frozen=True)
class UploadsSettings:
    """File upload as Kanto's AutoUploadable feature does it."""

    files: tuple[str, ...] = field(default=(), metadata={"doc": "globs uploaded by a trigger without upload.files"})
    mode: Literal["strict", "scoped", "lax"] = field(
        default="strict",
        metadata={"doc": "what upload.files may name: only `files` (strict), a glob within them (scoped), anything"},
    )
    diagnostics: bool = field(default=False, metadata={
        "doc": "add the diagnostics bundle to every trigger without upload.files"})
    diagnostics_logs: tuple[str, ...] = field(
        default=("logs/apps/*.log*",), metadata={"doc": "globs (under the state dir) of logs put in the bundle"}
    )
    feature_id: str = field(default="AutoUploadable", metadata={"doc": "the Ditto feature id of the messages"})
    status_topic: str = field(
        default="edge/gateway/uploads/lastUpload", metadata={"doc": "local topic of upload statuses (retained)"}
    )
    request_topic: str = field(
        default="edge/gateway/uploads/request", metadata={"doc": "local topic of the outbox 'request' messages"}
    )
    checksum: bool = field(default=False, metadata={"doc": "announce MD5/SHA-256 in requests, send Content-MD5"})
    delete: bool = field(default=False, metadata={"doc": "delete files once uploaded"})
    single_upload: bool = field(default=False, metadata={"doc": "refuse a trigger while an upload is UPLOADING (unless force)"})
    concurrency: int = field(default=2, metadata={"min": 1, "max": 16, "doc": "files transferred at once"})
    max_attempts: int = field(default=5, metadata={"min": 1, "doc": "failed attempts in a row without progress before FAILED"})
    retry_initial_delay: float = field(default=1.0, metadata={"min": 0.0, "doc": "first retry delay in seconds"})
    retry_max_delay: float = field(default=120.0, metadata={"min": 0.0, "doc": "longest retry delay in seconds"})
    idle_timeout: float = field(default=120.0, metadata={
        "min": 1.0, "doc": "seconds an attempt may go without a byte sent or an answer before it is aborted"})
    azure_block_threshold: int = field(
        default=64 * 2**20, metadata={"min": 1, "doc": "Azure blobs above this size go up in blocks"}
    )
    azure_block_size: int = field(
        default=8 * 2**20, metadata={"min": 65536, "max": 4000 * 2**20, "doc": "Azure block size in bytes"}
    )
    azure_parallel_blocks: int = field(
        default=2, metadata={"min": 1, "max": 8, "doc": "Azure blocks of one file sent at once"}
    )
    chunk_size: int = field(default=2**20, metadata={"min": 4096, "max": 16 * 2**20,
                                                     "doc": "bytes per read (and hash, in a thread) and per write"})
    allow_http: bool = field(default=False, metadata={"doc": "accept plain http:// upload URLs"})
    aws_endpoint: str | None = field(
        default=None,
        metadata={"doc": "S3-compatible endpoint (https://host[:port]) for uploads with AWS credentials, "
                         "instead of AWS's regional one"},
    )
    ca_file: str | None = field(default=None, metadata={
        "path": True, "doc": "PEM CAs trusted for https instead of the system"})
    periodic: PeriodicSettings = field(default_factory=PeriodicSettings)

    @property
    def auto_upload_topic(self) -> str:
        """Where Kanto's ``autoUpload`` property goes: beside ``status_topic`` (``lastUpload``),
        as both are properties of the one feature in Kanto (``<its parent>/autoUpload``, or
        ``autoUpload`` for a status topic of one level)."""
        if "/" not in self.status_topic:
            return "autoUpload"
        return self.status_topic.rsplit("/", 1)[0] + "/autoUpload"

    def config_problems(self) -> Iterable[tuple[tuple[str, ...], str]]:
        """The feature id is one segment of the messages' path; the topics statuses and requests
        are published on must be topic names, and not the ``autoUpload`` topic beside
        ``status_topic``; the ``files`` globs are absolute; the log globs are relative (to the state
        dir); the CA file is read and parsed; ``aws_endpoint`` is ``https://host[:port]``
        (``http`` with ``allow_http``); the retry delays are bounds of one backoff."""
        if not self.feature_id.strip() or "/" in self.feature_id:
            yield ("feature_id",), (f"must name the feature, not {self.feature_id!r}: it is one segment of the "
                                    "messages' path (/features/<feature_id>/inbox/messages/<operation>)")
        for key in ("status_topic", "request_topic"):
            topic = getattr(self, key)
            if not valid_topic(topic):
                yield (key,), f"not a valid topic name: {topic!r}"
            elif topic == self.auto_upload_topic:
                yield (key,), f"{topic!r} is where the autoUpload property goes (beside status_topic)"
        for pattern in self.files:  # (relative: against the working directory, / under systemd)
            if not pattern.strip() or not Path(pattern).is_absolute():
                yield ("files",), (f"{pattern!r} is not an absolute glob (/var/log/app/*.log): a relative one would be"
                                   " matched from the gateway's working directory, / under systemd")
        for pattern in self.diagnostics_logs:  # pathlib's glob raises on both
            if not pattern or Path(pattern).is_absolute():
                yield ("diagnostics_logs",), f"{pattern!r} is not a glob relative to the state dir"
        problem = ca_file_problem(self.ca_file) if self.ca_file is not None else None
        if problem is not None:
            yield ("ca_file",), problem
        problem = (url_problem(self.aws_endpoint, _AWS_ENDPOINT, allow_http=self.allow_http)
                   if self.aws_endpoint is not None else None)
        if problem is not None:
            yield ("aws_endpoint",), problem
        if self.retry_max_delay < self.retry_initial_delay:
            yield ("retry_max_delay",), f"must be at least retry_initial_delay ({self.retry_initial_delay})"
