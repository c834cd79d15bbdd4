"""The ``apps`` section of the gateway configuration: hosted-application knobs."""

from __future__ import annotations

import pwd
import shlex
from dataclasses import dataclass, field
from typing import Iterable, Literal

from gateway.apps.names import check_program_name
from gateway.apps.registry import KEPT_FILES

Autorestart = Literal["true", "false", "unexpected"]


@dataclass(frozen=True)
class ProgramSettings:
    """One supervised program, with supervisord's ``[program:x]`` names and meanings.

    A GWE ``supervisor.conf`` section, an ``app.yaml`` manifest and a program declared
    in the gateway config all become one of these.
    """

    command: str = field(
        default="", metadata={"controls": True, "doc": "argv as a shell-like string (shlex split, no shell)"}
    )
    directory: str | None = field(
        default=None, metadata={"path": True, "doc": "working directory (default: the app's directory)"}
    )
    environment: dict[str, str] = field(
        default_factory=dict, metadata={"controls": True, "doc": "added to the gateway's environment"}
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
        metadata={"path": True, "doc": "log path (default: <state>/logs/apps/<program>.log; NONE: discard)"},
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
        metadata={"path": True, "doc": "stderr log path (default: <state>/logs/apps/<program>.err.log)"},
    )
    user: str | None = field(
        default=None, metadata={"doc": "run as this user (only when the gateway is root)"}
    )

    def config_problems(self) -> Iterable[tuple[tuple[str, ...], str]]:
        """What would stop the program at start: no command, one that does not split, an
        unknown user, exit codes no process can have (checked when declared in the config)."""
        try:
            if not shlex.split(self.command):
                yield ("command",), "required: the program's command line"
        except ValueError as exc:
            yield ("command",), f"not a command line: {exc}"
        if self.user is not None:
            try:
                pwd.getpwnam(self.user)
            except KeyError:
                yield ("user",), f"no user {self.user!r} on this system"
        for key, value in self.environment.items():
            if not environment_entry_fits(key, str(value)):
                yield ("environment", key), ENVIRONMENT_PROBLEM
        for i, code in enumerate(self.exitcodes):
            problem = exit_code_problem(code)
            if problem is not None:
                yield ("exitcodes", str(i)), problem



def exit_code_problem(code: object) -> str | None:
    """Why ``code`` cannot be a process's exit status (None when it can: 0 to 255)."""
    if isinstance(code, int) and not 0 <= code <= 255:
        return f"must be from 0 to 255, not {code}"
    return None


#: Why an environment entry :func:`environment_entry_fits` refuses cannot be.
ENVIRONMENT_PROBLEM = "an environment variable's name needs no '=' and neither part a NUL"


def environment_entry_fits(name: str, value: str) -> bool:
    """Whether ``name=value`` can be in a process's environment (``exec`` refuses a name that
    is empty or holds ``=``, and a NUL in either part)."""
    return bool(name) and "=" not in name and "\0" not in name and "\0" not in value


def program_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a program of ``apps.programs`` (``None`` when it can): it becomes
    an app name and log file names, one safe path component each and no other's log."""
    from gateway.errors import AppError

    try:
        check_program_name(name)
    except AppError as exc:
        return str(exc)
    if name in KEPT_FILES:  # (its app's directory, apps/<name>/data, would be that file's)
        return f"{name!r} is a file the gateway keeps in apps/: no app's name"
    return None

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
    process_reserve: int = field(
        default=256, metadata={"min": 16, "doc": "processes and threads of the gateway's user kept"
                                                 " for the gateway: programs' forks fail before"}
    )
    spool_interval: float = field(
        default=2.0, metadata={"min": 0.1, "doc": "seconds between looks at incoming/ while it is not"
                                                  " watched (inotify) or a retry waits"}
    )

    def config_problems(self) -> Iterable[tuple[tuple[str, ...], str]]:
        """The restart backoff's bounds. Program names are checked beside the programs' own
        problems (:func:`program_name_problem`, gateway.config)."""
        if self.backoff_max < self.backoff_initial:
            yield ("backoff_max",), f"must be at least backoff_initial ({self.backoff_initial})"
