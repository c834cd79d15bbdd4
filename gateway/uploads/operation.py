"""Upload operations shaped after Kanto's AutoUploadable: one per trigger, one child per file,
their persisted form, the ``lastUpload`` status and the outbox ``request`` message."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from gateway.operations.fieldtypes import check_fields

#: Go's zero time, which Kanto's statuses carry for a time not reached yet.
ZERO_TIME = "0001-01-01T00:00:00Z"


class UploadState(str, enum.Enum):
    """Kanto's upload states (PAUSED is never reported: the gateway does not pause)."""

    PENDING = "PENDING"
    UPLOADING = "UPLOADING"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"
    CANCELED = "CANCELED"

    @property
    def final(self) -> bool:
        """True for the states that end an upload."""
        return self in (UploadState.SUCCESS, UploadState.FAILED, UploadState.CANCELED)


def rfc3339(seconds: float | None) -> str:
    """``seconds`` since the epoch as RFC 3339 UTC, or Go's zero time for None."""
    if seconds is None:
        return ZERO_TIME
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class FileUpload:
    """One file of an upload.

    :param correlation_id: ``<upload id>#<n>``, as Kanto numbers them (from 1).
    :param path: the file.
    :param size: its size when the upload was triggered.
    :param state: how far it got.
    :param options: the cloud's ``start`` options (provider, URL, headers or SAS), once started.
    :param message: why it failed or was canceled.
    :param sent: bytes handed to the connection so far (progress; a file that then fails may
        show all of them sent).
    :param md5: base64 MD5 of the uploaded bytes, once known.
    :param sha256: hex SHA-256 of the uploaded bytes, once known.
    :param temporary: a file the gateway made (the diagnostics bundle): removed once finished.
    """

    correlation_id: str
    path: str
    size: int
    state: UploadState = UploadState.PENDING
    options: dict[str, str] = field(default_factory=dict)
    message: str = ""
    sent: int = 0
    md5: str | None = None
    sha256: str | None = None
    temporary: bool = False


@dataclass
class Upload:
    """An upload operation (one trigger) and how far it got; persisted after every step.

    :param correlation_id: the trigger's id (given by the cloud, or made by the gateway).
    :param files: the files, each with its own child id.
    :param state: the operation's state (Kanto reports the parent's).
    :param status_code: the code a ``cancel`` gave.
    :param message: a person-readable detail of the state.
    :param start_time: when the first file started (seconds since the epoch).
    :param end_time: when it ended.
    :param info: the ``info.*`` start options, reported back in every status.
    :param delete: delete the files once uploaded.
    :param checksum: announce checksums in the requests and send Content-MD5.
    :param request_options: ``options.*`` of the trigger, forwarded in each request.
    :param triggered_at: when it was triggered (seconds since the epoch; 0 in a record
        persisted before it was kept), the order the admin API lists uploads in.
    :param ended: the order in which it ended among the gateway's uploads (1, 2, ...), which
        decides the ones kept (not ``end_time``: a gateway without a real-time clock may end
        uploads at 1970 after others ended at the right time); 0 while it runs, and in a
        record persisted before there was one.
    """

    correlation_id: str
    files: list[FileUpload]
    state: UploadState = UploadState.PENDING
    status_code: str = ""
    message: str = ""
    start_time: float | None = None
    end_time: float | None = None
    info: dict[str, str] = field(default_factory=dict)
    delete: bool = False
    checksum: bool = False
    request_options: dict[str, str] = field(default_factory=dict)
    triggered_at: float = 0.0
    ended: int = 0

    def to_json(self) -> dict[str, Any]:
        """The persisted form."""
        value = asdict(self)
        value["state"] = self.state.value
        for item in value["files"]:
            item["state"] = item["state"].value
        return value

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Upload:
        """Rebuild an upload persisted by :meth:`to_json`.

        :param value: the persisted form.
        :raises ValueError: for a field that holds what an upload never saves there (a record
            damaged from outside); ``TypeError`` for one it lacks, or does not know.
        """
        check_fields(cls, value)
        files = [FileUpload(**{**f, "state": UploadState(f["state"])}) for f in value["files"]]
        return cls(**{**value, "files": files, "state": UploadState(value["state"])})

    def child(self, correlation_id: str) -> FileUpload | None:
        """The file with this child id, if it is one of this upload's."""
        return next((f for f in self.files if f.correlation_id == correlation_id), None)

    @property
    def progress(self) -> int:
        """Percent of the bytes sent (by file count when every file is empty)."""
        total = sum(f.size for f in self.files)
        if total == 0:
            done = sum(1 for f in self.files if f.state == UploadState.SUCCESS)
            return int(100 * done / len(self.files)) if self.files else 100
        return min(100, int(100 * sum(min(f.sent, f.size) for f in self.files) / total))

    def status_payload(self) -> dict[str, Any]:
        """The Kanto ``lastUpload`` form of the current state, with each file's digests."""
        return {
            "correlationId": self.correlation_id,
            "state": self.state.value,
            "startTime": rfc3339(self.start_time),
            "endTime": rfc3339(self.end_time),
            "statusCode": self.status_code,
            "message": self.message,
            "progress": 100 if self.state == UploadState.SUCCESS else self.progress,
            "info": dict(self.info),
            "files": [
                {"correlationId": f.correlation_id, "path": f.path, "size": f.size, "state": f.state.value,
                 **({"message": f.message} if f.message else {}),
                 **({"md5": f.md5, "sha256": f.sha256} if f.md5 and f.sha256 else {})}
                for f in self.files
            ],
        }

    def request_options_for(self, item: FileUpload) -> dict[str, str]:
        """The ``options`` of the outbox ``request`` for one file (Kanto's names)."""
        options = dict(self.request_options)
        options["storage.providers"] = "aws, azure, generic"
        options["file.path"] = item.path
        options["file.size"] = str(item.size)
        if self.checksum and item.md5 and item.sha256:
            options["file.checksum.md5"] = item.md5
            options["file.checksum.sha256"] = item.sha256
        return options
