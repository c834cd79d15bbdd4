"""The container apps' desired state on disk: ``<state>/containers/state.json``.

Written atomically (temp file, fsync, rename, fsync the directory) before the runtime is
asked to act, so after a power cut the gateway knows which version of which container
should run, and which images it pulled.
Every method blocks: call them through the thread pool.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from gateway.atomic import read_json, set_aside, write_json_atomically
from gateway.containers.description import ContainerDescription
from gateway.containers.descfile import from_mapping
from gateway.containers.errors import DescriptionError

Wish = Literal["running", "stopped"]


@dataclass(frozen=True)
class Deployed:
    """One version of a container app the gateway owns.

    :param name: the app.
    :param version: its version (``config`` for a declared one).
    :param description: what runs.
    :param image_id: the image its container was created from.
    :param image_digest: that image's manifest digest.
    :param wish: ``running`` or ``stopped``: what the operator wants.
    :param source: ``config`` (declared) or ``update`` (installed).
    :param previous: the version it replaced, kept for rollback until the next update.
    """

    name: str
    version: str
    description: ContainerDescription
    image_id: str
    image_digest: str
    wish: Wish = "running"
    source: Literal["config", "update"] = "update"
    previous: Deployed | None = None

    @property
    def container_name(self) -> str:
        """The runtime container's name: the app and a hash of its version and description."""
        return f"{self.name}.{self.description.fingerprint(self.version)}"

    def to_json(self) -> dict[str, Any]:
        """The persisted form."""
        return {"name": self.name, "version": self.version, "description": self.description.to_json(),
                "image_id": self.image_id, "image_digest": self.image_digest, "wish": self.wish,
                "source": self.source,
                "previous": None if self.previous is None else self.previous.to_json()}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Deployed:
        """Read back :meth:`to_json`.

        :raises DescriptionError: when the entry is damaged.
        """
        try:
            previous = value.get("previous")
            return cls(str(value["name"]), str(value["version"]), from_mapping(value["description"]),
                       str(value["image_id"]), str(value.get("image_digest", "")),
                       "stopped" if value.get("wish") == "stopped" else "running",
                       "config" if value.get("source") == "config" else "update",
                       None if not previous else cls.from_json(previous))
        except (KeyError, TypeError, AttributeError) as exc:  # (AttributeError: not a mapping)
            raise DescriptionError(f"damaged entry: {exc}") from exc

    def with_wish(self, wish: Wish) -> Deployed:
        """A copy with another wish."""
        return replace(self, wish=wish)


@dataclass
class DesiredState:
    """Every container app, the images the gateway brought in (the only ones it prunes), the
    updates whose rollback is under way (by app, the version rolled back and why: the update run
    again after a crash in its rollback ends as a rollback, not as a second try), and the apps
    whose uninstall is under way (the next start finishes one a crash cut short).
    """

    apps: dict[str, Deployed] = field(default_factory=dict)
    images: set[str] = field(default_factory=set)
    rollbacks: dict[str, tuple[str, str]] = field(default_factory=dict)
    uninstalling: set[str] = field(default_factory=set)

    def changed(self, apps: dict[str, Deployed] | None = None, images: set[str] | None = None) -> DesiredState:
        """A copy with other ``apps`` or ``images`` (the operations under way copied as they are)."""
        return DesiredState(dict(self.apps) if apps is None else apps,
                            set(self.images) if images is None else images, dict(self.rollbacks),
                            set(self.uninstalling))


class ContainerStore:
    """Reads and writes :class:`DesiredState`.

    :param state_dir: the gateway's state directory.
    """

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "containers" / "state.json"
        #: What marks the containers this gateway made (:data:`~gateway.containers.operations.LABEL_OWNER`):
        #: its state directory, absolute (another gateway on the machine, with a state
        #: directory of its own, may use the same podman storage).
        self.owner = str(state_dir.absolute())

    def load(self) -> tuple[DesiredState, list[str]]:
        """The persisted state, and what could not be read of it: then the file is moved aside
        to ``state.json.damaged`` (the next save would write over what it could not read) and
        the last problem says where it went."""
        try:
            data = read_json(self.path)
        except (OSError, ValueError) as exc:
            return DesiredState(), [str(exc), set_aside(self.path)]
        state, problems = DesiredState(), list[str]()
        if data is None:
            return state, problems
        apps, images = (data.get("apps"), data.get("images")) if isinstance(data, dict) else (None, None)
        if not isinstance(apps, dict) or not isinstance(images, list):
            return state, ["not the containers' state (apps and images)", set_aside(self.path)]
        for name, value in apps.items():
            try:
                state.apps[str(name)] = Deployed.from_json(value)
            except DescriptionError as exc:
                problems.append(f"{name}: {exc}")
        state.images = {str(i) for i in images}
        rollbacks = data.get("rollbacks") or {}  # (none in a file an older gateway wrote)
        for name, value in rollbacks.items() if isinstance(rollbacks, dict) else ():
            if isinstance(value, dict) and isinstance(value.get("version"), str):
                state.rollbacks[str(name)] = (value["version"], str(value.get("reason", "")))
        uninstalling = data.get("uninstalling") or []
        state.uninstalling = {str(n) for n in uninstalling} if isinstance(uninstalling, list) else set()
        return state, problems + [set_aside(self.path)] if problems else problems

    def save(self, state: DesiredState) -> None:
        """Persist ``state`` durably, the gateway user's alone (0600): the descriptions hold the
        containers' ``env``, where secrets go (a database password, an API key)."""
        write_json_atomically(self.path, {
            "apps": {name: d.to_json() for name, d in sorted(state.apps.items())},
            "images": sorted(state.images),
            "rollbacks": {name: {"version": version, "reason": reason}
                          for name, (version, reason) in sorted(state.rollbacks.items())},
            "uninstalling": sorted(state.uninstalling)}, 0o600)
