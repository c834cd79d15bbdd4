"""The ``updates`` section of the configuration: downloader limits and update targets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Literal

from gateway.pemfiles import ca_file_problem


@dataclass(frozen=True)
class DownloadSettings:
    """How the resumable downloader behaves; every limit is bounded."""

    concurrency: int = field(default=2, metadata={"min": 1, "max": 16, "doc": "downloads running at once"})
    idle_timeout: float = field(
        default=30.0, metadata={"min": 1.0, "doc": "seconds without a body byte before an attempt is aborted"}
    )
    deadline: float = field(
        default=6 * 3600.0, metadata={"min": 1.0, "doc": "seconds one download may take, retries included"}
    )
    max_size: int = field(
        default=2 * 2**30, metadata={"min": 1, "doc": "largest artifact accepted, in bytes (checked while streaming)"}
    )
    max_attempts: int = field(
        default=10, metadata={"min": 1, "doc": "consecutive attempts without progress before giving up"}
    )
    retry_initial_delay: float = field(default=1.0, metadata={"min": 0.0, "doc": "first retry delay in seconds"})
    retry_max_delay: float = field(default=300.0, metadata={"min": 0.0, "doc": "longest retry delay in seconds"})
    max_redirects: int = field(default=5, metadata={"min": 0, "max": 20, "doc": "redirects followed per request"})
    allow_http: bool = field(default=False, metadata={"doc": "accept plain http:// URLs (https is always accepted)"})
    ca_file: str | None = field(
        default=None,
        metadata={"path": True, "doc": "PEM file of the CAs trusted for https instead of the system store"},
    )
    write_batch: int = field(
        default=2 * 2**20, metadata={"min": 4096, "doc": "bytes gathered before one write+hash off the reactor"}
    )
    checkpoint_bytes: int = field(
        default=8 * 2**20, metadata={"min": 4096, "doc": "bytes between fsyncs that make a resume point durable"}
    )

    def config_problems(self) -> Iterable[tuple[tuple[str, ...], str]]:
        """The CA file is read at start: it must be there and hold a certificate."""
        problem = ca_file_problem(self.ca_file) if self.ca_file is not None else None
        if problem is not None:
            yield ("ca_file",), problem
        if self.retry_max_delay < self.retry_initial_delay:
            yield ("retry_max_delay",), f"must be at least retry_initial_delay ({self.retry_initial_delay})"


@dataclass(frozen=True)
class UpdatesSettings:
    """Over-the-air updates: where statuses go and how artifacts are installed."""

    download: DownloadSettings = field(default_factory=DownloadSettings)
    status_topic: str = field(
        default="edge/gateway/updates/lastOperation",
        metadata={"doc": "local topic of operation statuses (retained, QoS 1)"},
    )
    script_timeout: float = field(
        default=600.0, metadata={"min": 1.0, "doc": "seconds a script artifact may run before it is killed"}
    )
    deb_installer: Literal["auto", "helper", "unit"] = field(
        default="auto",
        metadata={"doc": "helper: a detached helper runs deb_install_command (needs root); unit: the .deb "
                         "is handed to the package's root-owned gateway-selfupdate.service through "
                         "<state_dir>/updates/deb-request.json (the packaged config sets this); auto: unit when "
                         "the gateway does not run as root and that unit is installed, else helper"},
    )
    deb_install_command: tuple[str, ...] = field(
        default=("dpkg", "--force-confold", "-i"),
        metadata={"controls": True,
                  "doc": "command that installs a gateway .deb (deb_installer: helper); the artifact path is appended"},
    )
    swupdate_command: tuple[str, ...] = field(
        default=(),
        metadata={"controls": True, "doc": "hands .swu bundles with handlers the gateway lacks to this program (e.g. "
                         "[swupdate, -v, -i]; the bundle path is appended); empty: such bundles are refused"},
    )
    keep_downloads: int = field(
        default=10,
        metadata={"min": 1, "doc": "downloads kept for a later install, at most: when one more ends, the files of "
                                   "the oldest to end are removed"},
    )
    use_systemd_run: bool = field(
        default=True,
        metadata={"doc": "run the .deb installer through systemd-run when systemd is running (deb_installer: helper)"},
    )

    def config_problems(self) -> Iterable[tuple[tuple[str, ...], str]]:
        """The status topic is published to; the installer command needs a program."""
        from gateway.mqtt.topics import valid_topic

        if not valid_topic(self.status_topic):
            yield ("status_topic",), f"not a valid topic name: {self.status_topic!r}"
        if not self.deb_install_command or not self.deb_install_command[0]:
            yield ("deb_install_command",), "needs at least the program to run"
