"""Update operations shaped after Kanto's SoftwareUpdatable: requests, statuses, JSON forms."""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Literal, TypeGuard, cast, get_args

from gateway import jsontext
from gateway.shown import id_problem, shown, shown_repr
from gateway.updates.digests import normalise_digests
from gateway.updates.errors import InvalidOperation

Target = Literal["app", "script", "gateway", "container", "swu"]
Action = Literal["download", "install"]
#: The longest artifact file name in bytes: the download's ``<file>.part.json`` must fit the
#: file system's 255.
MAX_FILENAME_BYTES = 255 - len(".part.json")
#: The correlation ids of the fleet's hawkBit deployments begin with this (``ddi-<actionId>``,
#: :mod:`gateway.fleet`): the fleet takes every operation so named for its own and reports it
#: to the server, so an ``install`` or ``download`` request may not use it.
FLEET_PREFIX = "ddi-"


#: What builds up to 47daafe1 (2026-12-07) published for a canceled operation, a status Kanto's
#: SoftwareUpdatable does not have. Still the word on disk (operation records, the fleet's state),
#: read as FINISHED_CANCELED: those builds, run again by a rollback, take an unknown status for a
#: damaged record (set aside) or an action not ended (installed again when offered again).
EARLIER_CANCELED = "CANCELED"


def recorded_status(status: str) -> str:
    """``status`` (a :class:`Status` value) as the state on disk holds it: FINISHED_CANCELED as
    :data:`EARLIER_CANCELED`, which every build reads."""
    return EARLIER_CANCELED if status == Status.FINISHED_CANCELED.value else status


class Status(str, enum.Enum):
    """Kanto's operation statuses (the subset the gateway reports)."""

    STARTED = "STARTED"
    DOWNLOADING = "DOWNLOADING"
    DOWNLOADED = "DOWNLOADED"
    INSTALLING = "INSTALLING"
    INSTALLED = "INSTALLED"
    FINISHED_SUCCESS = "FINISHED_SUCCESS"
    FINISHED_ERROR = "FINISHED_ERROR"
    FINISHED_CANCELED = "FINISHED_CANCELED"

    @classmethod
    def _missing_(cls, value: object) -> Status | None:
        """An earlier version's ``CANCELED`` (:data:`EARLIER_CANCELED`) is FINISHED_CANCELED."""
        return cls.FINISHED_CANCELED if value == EARLIER_CANCELED else None

    @property
    def final(self) -> bool:
        """True for the statuses that end an operation."""
        return self in (Status.FINISHED_SUCCESS, Status.FINISHED_ERROR, Status.FINISHED_CANCELED)


@dataclass
class Artifact:
    """One file of a software module.

    :param filename: its name (no directories).
    :param url: where it is downloaded from.
    :param size: its announced size, when given.
    :param digests: normalised announced digests.
    """

    filename: str
    url: str
    size: int | None = None
    digests: dict[str, str] = field(default_factory=dict)


@dataclass
class SoftwareModule:
    """A named, versioned piece of software and where its artifacts go.

    :param name: the module name (the app name for ``app`` targets).
    :param version: its version.
    :param target: ``app`` (hosted-apps installer), ``script`` (run it), ``gateway`` (.deb),
        ``container`` (a container description, maybe with an OCI archive) or ``swu`` (an
        SWUpdate bundle whose images go to the other targets).
    :param artifacts: its files.
    """

    name: str
    version: str
    target: Target
    artifacts: list[Artifact]


@dataclass
class Operation:
    """An update operation and how far it got; persisted after every step.

    :param correlation_id: the backend's id, echoed in every status.
    :param action: ``download`` only, or ``install``.
    :param modules: the software modules.
    :param status: the last status reached.
    :param message: a person-readable detail of that status.
    :param installed: how many modules are installed so far.
    :param helper: where the detached .deb installer reports (for ``gateway`` targets).
    :param ended: the order in which it ended among the gateway's operations (1, 2, ...), which
        decides the ones kept; 0 while it runs (and in a record written before there was one).
    :param failed: the index of the module whose artifact failed its download, when one did.
    :param received: the order in which the gateway received it among its operations (1, 2,
        ...), which orders them in the read side across restarts; 0 in a record written before
        there was one.
    :param files_removed: whether the files a ``download`` that succeeded kept for a later install
        were removed (more than ``keep_downloads`` were kept, or its fleet action was canceled).
    """

    correlation_id: str
    action: Action
    modules: list[SoftwareModule]
    status: Status = Status.STARTED
    message: str = ""
    installed: int = 0
    helper: dict[str, Any] | None = None
    ended: int = 0
    failed: int | None = None
    received: int = 0
    files_removed: bool = False

    def to_json(self) -> dict[str, Any]:
        """The persisted form (FINISHED_CANCELED as :data:`EARLIER_CANCELED`: :func:`recorded_status`)."""
        value = asdict(self)
        value["status"] = recorded_status(self.status.value)
        return value

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Operation:
        """Rebuild an operation persisted by :meth:`to_json`.

        :param value: the persisted form.
        :raises ValueError: for an order (``ended``, ``received``) that is not a whole number.
        """
        for key in ("ended", "received"):
            if type(value.get(key, 0)) is not int:  # (they are sorted on: bool is no order either)
                raise ValueError(f"{key}: a whole number is required")
        if value.get("action") not in get_args(Action):
            # (another would be resumed as a download and reported with it)
            raise ValueError(f"action: 'download' or 'install' is required, not {jsontext.given(value.get('action'))}")
        if not isinstance(value.get("message", ""), str):
            raise ValueError(f"message: text is required, not {jsontext.given(value.get('message'))}")
        modules = [
            SoftwareModule(m["name"], m["version"], m["target"], [Artifact(**a) for a in m["artifacts"]])
            for m in value["modules"]
        ]
        return cls(value["correlation_id"], value["action"], modules, Status(value["status"]),
                   value.get("message", ""), value.get("installed", 0), value.get("helper"),
                   value.get("ended", 0), value.get("failed"), value.get("received", 0),
                   value.get("files_removed") is True)

    def status_payload(self, timestamp: float, progress: int | None = None) -> dict[str, Any]:
        """The Kanto ``lastOperation`` form of the current status: Kanto's ``softwareModule``
        (the module the step is about) and, beside it, every module in ``softwareModules``.

        :param timestamp: seconds since the epoch.
        :param progress: download progress in percent, when known.
        """
        payload: dict[str, Any] = {
            "correlationId": self.correlation_id,
            "status": self.status.value,
            "message": self.message,
            "softwareModules": [{"name": m.name, "version": m.version} for m in self.modules],
            "timestamp": int(timestamp * 1000),
        }
        current = self.current_module()
        if current is not None:
            payload["softwareModule"] = {"name": current.name, "version": current.version}
        if progress is not None:
            payload["progress"] = progress
        return payload

    def current_module(self) -> SoftwareModule | None:
        """The module the current status is about, as Kanto's per-module ``lastOperation`` names
        it: the one just installed for ``INSTALLED``, the last one for ``FINISHED_SUCCESS``, the
        one whose artifact failed its download for ``FINISHED_ERROR``, else the first one not
        installed yet (the first one while downloading; the last one when all are installed).
        None for an operation without modules."""
        if not self.modules:
            return None
        if self.status == Status.FINISHED_SUCCESS:
            return self.modules[-1]
        if self.status == Status.FINISHED_ERROR and self.failed is not None and self.failed < len(self.modules):
            return self.modules[self.failed]
        index = self.installed - 1 if self.status == Status.INSTALLED else self.installed
        return self.modules[max(0, min(index, len(self.modules) - 1))]

    def process_name(self, program: str) -> str:
        """What ``program`` (a script's file name, ``swupdate``), run for this operation, is
        recorded as in the apps' ``processes.json`` while it runs, and named as in the log when
        the next start stops what a killed gateway left of it: ``update <correlationId> <program>``."""
        return f"update {self.correlation_id} {program}"


def _target(where: str, module: dict[str, Any], artifacts: list[Artifact]) -> Target:
    """The module's ``metaData.target`` (Kanto's key; ``metadata`` is read when there is no
    ``metaData``), else the target its first artifact's name suggests.

    :param where: the module's place in the request, for the errors.
    :raises InvalidOperation: naming ``<where>.metaData`` (or ``.metadata``: not an object) or
        ``<where>.metaData.target`` (no such target).
    """
    key = "metaData" if "metaData" in module else "metadata"
    metadata = module.get(key) or {}
    if not isinstance(metadata, dict):
        raise InvalidOperation(f"{where}.{key}: an object is required")
    target = metadata.get("target")
    if target is None:
        first = artifacts[0].filename if artifacts else ""
        target = ("gateway" if first.endswith(".deb") else "script" if first.endswith(".sh")
                  else "swu" if first.endswith(".swu") else "app")
    if target not in ("app", "script", "gateway", "container", "swu"):
        raise InvalidOperation(f"{where}.{key}.target: {shown_repr(target)} is not app, script, gateway, container"
                               " or swu")
    return cast(Target, target)


def parse_artifact(where: str, raw: Any, find_url: Callable[[dict[str, Any]], Any], url_error: str,
                   hashes_key: str) -> Artifact:
    """One artifact of an update request (Ditto's or hawkBit's DDI shape).

    :param where: the artifact's place in the request, for the errors.
    :param find_url: picks the download URL out of the artifact object.
    :param url_error: ``"<key>: <what is required>"`` when it finds none.
    :param hashes_key: the key holding the digests (``checksums``, ``hashes``).
    :raises InvalidOperation: naming the first thing that is wrong.
    """
    if not isinstance(raw, dict):
        raise InvalidOperation(f"{where}: an artifact must be an object")
    filename = raw.get("filename")
    if not _plain_file_name(filename):
        raise InvalidOperation(f"{where}.filename: a plain file name is required")
    if len(filename.encode()) > MAX_FILENAME_BYTES:
        raise InvalidOperation(f"{where}.filename: at most {MAX_FILENAME_BYTES} bytes")
    url = find_url(raw)
    if not isinstance(url, str):
        raise InvalidOperation(f"{where}.{url_error}")
    size = raw.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise InvalidOperation(f"{where}.size: a byte count is required")
    hashes = raw.get(hashes_key) or {}
    if not isinstance(hashes, dict):
        raise InvalidOperation(f"{where}.{hashes_key}: an object is required")
    try:
        digests = normalise_digests(hashes)
    except ValueError as error:
        raise InvalidOperation(f"{where}.{hashes_key}: {error}") from error
    return Artifact(filename, url, size, digests)


def _plain_file_name(name: Any) -> TypeGuard[str]:
    """Whether ``name`` can name a file in a directory: no ``/``, no NUL, not ``.`` or ``..``,
    valid UTF-8 text (no lone surrogates from JSON's ``\\ud800``)."""
    if not isinstance(name, str) or not name or "/" in name or "\0" in name or name in (".", ".."):
        return False
    try:
        name.encode()
    except UnicodeEncodeError:
        return False
    return True


def _ditto_url(raw: dict[str, Any]) -> Any:
    download = raw.get("download") or {}
    links = [download.get(k) for k in ("HTTPS", "HTTP")] if isinstance(download, dict) else []
    return next((link.get("url") for link in links if isinstance(link, dict) and link.get("url")), None)


def _artifact(where: str, raw: Any) -> Artifact:
    return parse_artifact(where, raw, _ditto_url, "download: an HTTPS (or HTTP) url is required", "checksums")


def kanto_message(message: Any) -> Any:
    """The Kanto message in a decoded request: the ``value`` of a Ditto envelope (``{"topic",
    "path", "value"}``, as Kanto's backends send it), else the request as it is."""
    if isinstance(message, dict) and "value" in message and ("path" in message or "topic" in message):
        return message["value"]
    return message


def correlation_id_of(request: dict[str, Any]) -> str:
    """The ``correlationId`` of a request: a non-empty string.

    :raises InvalidOperation: when it is missing, empty or not a string.
    """
    correlation_id = request.get("correlationId")
    if correlation_id is not None and not isinstance(correlation_id, str):
        raise InvalidOperation(f"correlationId: must be a string, not {shown_repr(correlation_id)}")
    if not correlation_id:
        raise InvalidOperation("correlationId: a non-empty string is required")
    return correlation_id


def parse_request(action: Action, payload: Any) -> Operation:
    """Turn a Kanto ``install`` or ``download`` message into an :class:`Operation`.

    :param action: which message it is.
    :param payload: the decoded JSON body: ``{"correlationId", "softwareModules": [{"softwareModule":
        {"name", "version"}, "artifacts": [{"filename", "download": {"HTTPS": {"url"}}, "checksums",
        "size"}], "metaData": {"target"}}]}`` (``metadata`` is read when there is no ``metaData``).
    :raises InvalidOperation: naming the first field that is wrong.
    """
    if not isinstance(payload, dict):
        raise InvalidOperation("the request must be a JSON object")
    correlation_id = correlation_id_of(payload)
    problem = id_problem(correlation_id)
    if problem is not None:
        raise InvalidOperation(f"correlationId: {problem}")
    if correlation_id.startswith(FLEET_PREFIX):
        raise InvalidOperation(f"correlationId: {correlation_id!r} begins with {FLEET_PREFIX!r}, which is reserved "
                               "for the fleet's hawkBit deployments; use another id")
    raw_modules = payload.get("softwareModules")
    if not isinstance(raw_modules, list) or not raw_modules:
        raise InvalidOperation("softwareModules: a non-empty list is required")
    modules = []
    for i, raw in enumerate(raw_modules):
        where = f"softwareModules[{i}]"
        ident = raw.get("softwareModule") if isinstance(raw, dict) else None
        if not isinstance(ident, dict) or not isinstance(ident.get("name"), str) or not ident.get("name"):
            raise InvalidOperation(f"{where}.softwareModule.name: a name is required")
        version = ident.get("version", "")
        if not isinstance(version, str):
            # (JSON's 2.10 is the number 2.1 once read: the version written is lost)
            raise InvalidOperation(f"{where}.softwareModule.version: a string is required, "
                                   f"not {shown(json.dumps(version))}")
        for key in ("name", "version"):  # (they reach a script's environment and every status)
            problem = id_problem(ident.get(key, ""))
            if problem is not None:
                raise InvalidOperation(f"{where}.softwareModule.{key}: {problem}")
        raw_artifacts = raw.get("artifacts")
        if not isinstance(raw_artifacts, list) or not raw_artifacts:
            raise InvalidOperation(f"{where}.artifacts: a non-empty list is required")
        artifacts = [_artifact(f"{where}.artifacts[{j}]", a) for j, a in enumerate(raw_artifacts)]
        for j, artifact in enumerate(artifacts):  # (a module's artifacts share one directory)
            if any(other.filename == artifact.filename for other in artifacts[:j]):
                raise InvalidOperation(f"{where}.artifacts[{j}].filename: {artifact.filename!r} is the name of "
                                       "an earlier artifact of the module")
        modules.append(SoftwareModule(ident["name"], version, _target(where, raw, artifacts),
                                      artifacts))
    return Operation(correlation_id, action, modules)
