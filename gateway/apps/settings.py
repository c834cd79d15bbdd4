"""The ``apps`` section of the gateway configuration: hosted-application knobs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Autorestart = Literal["true", "false", "unexpected"]


@dataclass(frozen=True)
class ProgramSettings:
    """One supervised program, with supervisord's ``[program:x]`` names and meanings.

    A GWE ``supervisor.conf`` section, an ``app.yaml`` manifest and a program declared
    in the gateway config all become one of these.
    """

    command: str = field(
        default="", metadata={"doc": "argv as a shell-like string (shlex split, no shell)"}
    )
    directory: str | None = field(
        default=None, metadata={"doc": "working directory (default: the app's directory)"}
    )
    environment: dict[str, str] = field(
        default_factory=dict, metadata={"doc": "added to the gateway's environment"}
    )
    autostart: bool = field(default=True, metadata={"doc": "start when the gateway starts"})
    autorestart: Autorestart = field(
        default="unexpected",
        metadata={"doc": "restart after an exit: always, never, or on an unexpected code"},
    )
    exitcodes: tuple[int, ...] = field(
        default=(0,), metadata={"doc": "expected exit codes (for autorestart=unexpected)"}
    )
    startsecs: float = field(
        default=1.0, metadata={"min": 0, "doc": "seconds up before a start counts as RUNNING"}
    )
    startretries: int = field(
        default=3, metadata={"min": 0, "doc": "failed starts in a row before FATAL"}
    )
    stopsignal: Literal["TERM", "HUP", "INT", "QUIT", "KILL", "USR1", "USR2"] = field(
        default="TERM", metadata={"doc": "signal sent to the process group to stop it"}
    )
    stopwaitsecs: float = field(
        default=10.0, metadata={"min": 0, "doc": "seconds after stopsignal before SIGKILL"}
    )
    stdout_logfile: str | None = field(
        default=None,
        metadata={"doc": "log path (default: <state>/logs/apps/<program>.log; NONE: discard)"},
    )
    stdout_logfile_maxbytes: int = field(
        default=1024 * 1024, metadata={"min": 1024, "doc": "rotate the log at this size"}
    )
    stdout_logfile_backups: int = field(
        default=3, metadata={"min": 0, "doc": "rotated log files kept"}
    )
    redirect_stderr: bool = field(
        default=False, metadata={"doc": "write stderr into the stdout log"}
    )
    stderr_logfile: str | None = field(
        default=None,
        metadata={"doc": "stderr log path (default: <state>/logs/apps/<program>.err.log)"},
    )
    user: str | None = field(
        default=None, metadata={"doc": "run as this user (only when the gateway is root)"}
    )


@dataclass(frozen=True)
class AppsSettings:
    """Supervisor, installer and spool settings for hosted applications."""

    programs: dict[str, ProgramSettings] = field(
        default_factory=dict,
        metadata={"doc": "programs declared here rather than installed as packages"},
    )
    backoff_initial: float = field(
        default=1.0, metadata={"min": 0.01, "doc": "first restart delay after a quick exit"}
    )
    backoff_max: float = field(
        default=60.0, metadata={"min": 0.01, "doc": "cap of the doubling restart delay"}
    )
    health_window: float = field(
        default=10.0,
        metadata={"min": 0, "doc": "seconds a new version must stay RUNNING after install"},
    )
    install_timeout: float = field(
        default=300.0, metadata={"min": 1, "doc": "seconds install.sh may run"}
    )
    keep_versions: int = field(
        default=2, metadata={"min": 1, "doc": "installed versions kept per app, current included"}
    )
    max_archive_bytes: int = field(
        default=512 * 2**20, metadata={"min": 1024, "doc": "largest package file accepted"}
    )
    max_unpacked_bytes: int = field(
        default=2 * 2**30, metadata={"min": 1024, "doc": "largest unpacked package accepted"}
    )
    max_members: int = field(
        default=20000, metadata={"min": 1, "doc": "most files in one package"}
    )
    logs_max_total_bytes: int = field(
        default=256 * 2**20,
        metadata={"min": 4096, "doc": "cap on all app logs together (oldest backups go first)"},
    )
    spool_interval: float = field(
        default=2.0, metadata={"min": 0.1, "doc": "seconds between looks at incoming/"}
    )
