"""hawkBit's ``deploymentBase`` resource read into a :class:`Deployment`, and a deployment
turned into the update service's :class:`~gateway.updates.operation.Operation`.

A DDI *chunk* is one software module; its artifacts are downloaded by the same downloader
(Range resume, digests) and installed by the same targets as a Kanto request's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, cast

from gateway.updates.errors import InvalidOperation
from gateway.updates.operation import FLEET_PREFIX, Action, Artifact, Operation, SoftwareModule, Target, parse_artifact

Mode = Literal["skip", "attempt", "forced"]
_MODES = ("skip", "attempt", "forced")
#: chunk ``part`` -> target, when the chunk's metadata does not name one.
_PARTS: dict[str, Target] = {"os": "gateway", "bApp": "app", "application": "app", "app": "app"}
_TARGETS = ("app", "script", "gateway", "swu")


@dataclass(frozen=True)
class Deployment:
    """One deployment action offered by the server.

    :param action_id: the action's id (a string, as in the URL).
    :param download: ``skip`` (not yet), ``attempt`` or ``forced``.
    :param update: ``skip`` (download only), ``attempt`` or ``forced``.
    :param window: ``available``, ``unavailable``, or None when there is no maintenance window.
    :param modules: the chunks as software modules.
    """

    action_id: str
    download: Mode
    update: Mode
    window: str | None
    modules: list[SoftwareModule] = field(default_factory=list)

    @property
    def correlation_id(self) -> str:
        """The update operation's id for this action."""
        return correlation_id(self.action_id)

    @property
    def install_now(self) -> bool:
        """True when the server lets the install start now."""
        return self.update != "skip" and self.window in (None, "available")

    def operation(self, action: Action) -> Operation:
        """The update operation (``download`` or ``install``) of this deployment."""
        return Operation(self.correlation_id, action, self.modules)


def correlation_id(action_id: str) -> str:
    """The update operation's id for a DDI action id."""
    return f"{FLEET_PREFIX}{action_id}"


def _metadata(where: str, chunk: dict[str, Any]) -> dict[str, str]:
    raw = chunk.get("metadata") or []
    if isinstance(raw, dict):
        return {str(k): str(v) for k, v in raw.items()}
    if not isinstance(raw, list):
        raise InvalidOperation(f"{where}.metadata: a list of key/value objects is required")
    return {str(m.get("key")): str(m.get("value")) for m in raw if isinstance(m, dict)}


def _target(where: str, chunk: dict[str, Any], artifacts: list[Artifact]) -> Target:
    target = _metadata(where, chunk).get("target")
    first = artifacts[0].filename if artifacts else ""
    if target is None:
        if first.endswith(".swu"):
            target = "swu"
        elif first.endswith(".deb"):
            target = "gateway"
        elif first.endswith(".sh"):
            target = "script"
        else:
            target = _PARTS.get(str(chunk.get("part")), "app")
    if target not in _TARGETS:
        raise InvalidOperation(f"{where}.metadata.target: {target!r} is not one of {', '.join(_TARGETS)}")
    return cast(Target, target)


def _ddi_url(raw: dict[str, Any]) -> Any:
    links = raw.get("_links") or {}
    if not isinstance(links, dict):
        return None
    return next((links[k].get("href") for k in ("download", "download-http")
                 if isinstance(links.get(k), dict) and links[k].get("href")), None)


def _artifact(where: str, raw: Any) -> Artifact:
    return parse_artifact(where, raw, _ddi_url, "_links.download: a download href is required", "hashes")


def parse_deployment(body: Any) -> Deployment:
    """Read a ``deploymentBase`` answer.

    :param body: the decoded JSON: ``{"id", "deployment": {"download", "update",
        "maintenanceWindow", "chunks": [{"part", "name", "version", "metadata",
        "artifacts": [{"filename", "hashes", "size", "_links": {"download": {"href"}}}]}]}}``.
    :raises InvalidOperation: naming the first wrong field.
    """
    if not isinstance(body, dict) or body.get("id") in (None, ""):
        raise InvalidOperation("id: the action id is required")
    action_id = str(body["id"])
    deployment = body.get("deployment")
    if not isinstance(deployment, dict):
        raise InvalidOperation("deployment: an object is required")
    modes = []
    for key in ("download", "update"):
        mode = deployment.get(key, "forced")
        if mode not in _MODES:
            raise InvalidOperation(f"deployment.{key}: {mode!r} is not skip, attempt or forced")
        modes.append(mode)
    window = deployment.get("maintenanceWindow")
    if window not in (None, "available", "unavailable"):
        raise InvalidOperation(f"deployment.maintenanceWindow: {window!r} is not available or unavailable")
    chunks = deployment.get("chunks")
    if not isinstance(chunks, list) or not chunks:
        raise InvalidOperation("deployment.chunks: a non-empty list is required")
    modules = []
    for i, chunk in enumerate(chunks):
        where = f"deployment.chunks[{i}]"
        if not isinstance(chunk, dict) or not isinstance(chunk.get("name"), str) or not chunk["name"]:
            raise InvalidOperation(f"{where}.name: a name is required")
        for key in ("name", "version"):
            if "\0" in str(chunk.get(key, "")):
                raise InvalidOperation(f"{where}.{key}: no NUL character")
        raw = chunk.get("artifacts")
        if not isinstance(raw, list) or not raw:
            raise InvalidOperation(f"{where}.artifacts: a non-empty list is required")
        artifacts = [_artifact(f"{where}.artifacts[{j}]", a) for j, a in enumerate(raw)]
        modules.append(SoftwareModule(chunk["name"], str(chunk.get("version", "")),
                                      _target(where, chunk, artifacts), artifacts))
    return Deployment(action_id, cast(Mode, modes[0]), cast(Mode, modes[1]), window, modules)
