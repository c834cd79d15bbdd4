"""The apps on disk: ``apps/<name>/<version>/``, the ``current`` link, and desired state.

Every method blocks on the file system: call them through the service's thread pool.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable

from twisted.logger import Logger

from gateway import jsontext
from gateway.apps.logs import remove_logs
from gateway.apps.names import NAME
from gateway.atomic import fsync_directory, read_json, set_aside, write_atomically, write_json_atomically

log = Logger(namespace="gateway.apps.registry")

#: The apps' directory in the state directory.
APPS_DIR = "apps"
#: An app's own state, in its directory beside its versions (kept across them).
DATA_DIR = "data"

RUNNING = "running"
STOPPED = "stopped"
#: The operator's wishes, in ``<state>/apps`` beside the apps' directories.
DESIRED_FILE = "desired.json"
#: The running programs' process groups (:mod:`gateway.apps.leftovers`), there too.
PROCESSES_FILE = "processes.json"
#: The install under way (name, version, previous version, wishes before it), there too, so that
#: the next start undoes one the gateway's end (a SIGKILL, a power cut) cut short.
INSTALLING_FILE = "installing.json"
#: The files the gateway keeps in ``<state>/apps`` beside the apps' directories: no app's name.
KEPT_FILES = (DESIRED_FILE, PROCESSES_FILE, INSTALLING_FILE)
#: What an app's directory is renamed to before it is deleted (a hidden name no app can have).
REMOVING_PREFIX = ".removing-"
#: An app's versions in the order they were installed, oldest first, in ``apps/<name>`` (a
#: hidden name no version can have).
ORDER_FILE = ".install-order.json"


class AppRegistry:
    """Installed apps and the operator's wishes, under ``<state>/apps``.

    :param state_dir: the gateway's state directory.
    """

    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / APPS_DIR
        self.desired_path = self.root / DESIRED_FILE
        self.installing_path = self.root / INSTALLING_FILE

    def app_dir(self, name: str) -> Path:
        """Where every version of ``name`` lives."""
        return self.root / name

    def data_dir(self, name: str) -> Path:
        """The app's own state (``GATEWAY_APP_STATE_DIR``), kept across versions."""
        return self.root / name / DATA_DIR

    def version_dir(self, name: str, version: str) -> Path:
        """Where one version of ``name`` is unpacked."""
        return self.root / name / version

    def install_log(self, name: str, version: str) -> Path:
        """The output of one version's ``install.sh``."""
        return self.root / name / f"install-{version}.log"

    def layout_clash(self, name: str, version: str) -> str | None:
        """Why ``apps/<name>/<version>`` would land on something the gateway keeps there (its
        files beside the apps, an app's ``current`` link, ``data`` directory or install logs),
        or None when it would not."""
        if name in KEPT_FILES:
            return f"name {name!r} is a file the gateway keeps in apps/"
        if version in ("current", DATA_DIR) or (version.startswith("install-") and version.endswith(".log")):
            return f"version {version!r} is a name the gateway keeps in apps/{name}/"
        return None

    def current(self, name: str) -> str | None:
        """The active version of ``name``, or None (also for a name no file can have)."""
        try:
            return os.readlink(self.root / name / "current")
        except (OSError, ValueError):  # ValueError: a NUL in the name
            return None

    def installed(self) -> dict[str, str]:
        """Every app that has a current version, with that version."""
        found = {}
        if self.root.is_dir():
            for entry in sorted(self.root.iterdir()):
                version = self.current(entry.name) if entry.is_dir() and NAME.match(entry.name) else None
                if version is not None:
                    found[entry.name] = version
        return found

    def set_current(self, name: str, version: str | None) -> None:
        """Point ``current`` at ``version`` atomically (None removes it)."""
        link = self.root / name / "current"
        if version is None:
            link.unlink(missing_ok=True)
        else:
            temporary = link.with_name(".current.tmp")
            temporary.unlink(missing_ok=True)
            os.symlink(version, temporary)
            os.replace(temporary, link)
        fsync_directory(link.parent)

    def versions(self, name: str) -> list[str]:
        """Installed versions of ``name``, oldest first: in the order they were installed
        (:meth:`begin_install` records it), whatever the wall clock said then (a gateway
        without a real-time clock installs at 1970 until NTP sets it). Versions that order
        does not name were installed by an earlier version of the gateway, which keeps none,
        and are ordered among themselves by their directories' modification times: without
        an order on disk (one that kept none ran before), they are all there is; with one,
        they come after the versions it names, since each install writes every version on
        disk into it (a self-update rolled back to an earlier version ran that one since)."""
        base = self.app_dir(name)
        if not base.is_dir():
            return []
        dirs = [p for p in base.iterdir()
                if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")
                and p.name != DATA_DIR]
        order = {version: rank for rank, version in enumerate(self._install_order(name))}
        unordered = sorted((p for p in dirs if p.name not in order), key=lambda p: p.stat().st_mtime)
        return sorted((p.name for p in dirs if p.name in order), key=order.__getitem__) + [p.name for p in unordered]

    def _install_order(self, name: str) -> list[str]:
        """The versions of ``name`` as :data:`ORDER_FILE` lists them, oldest first; none when
        it is absent or unusable (damaged from outside: moved aside, with a warning, so that
        the next install writes it again, a directory in its place too)."""
        path = self.app_dir(name) / ORDER_FILE
        try:
            order = read_json(path)
            if order is None:
                return []
            if not isinstance(order, list) or not all(isinstance(version, str) for version in order):
                raise ValueError(f"it holds {jsontext.kind(order)}, not a list of versions")
        except (OSError, ValueError) as exc:
            where = set_aside(path)  # (raises StateAccessError: the user may not read it)
            log.warn("apps: {name}: the order of its installs in {path} is unusable ({error}): {where};"
                     " its versions count as installed in the order of their directories' modification"
                     " times, and the next install writes it again",
                     name=name, path=str(path), error=str(exc), where=where)
            return []
        return order

    def prune(self, name: str, keep: int) -> list[str]:
        """Delete the oldest versions so ``keep`` remain, never the current one.

        :return: the versions deleted.
        """
        current = self.current(name)
        old = [v for v in self.versions(name) if v != current]
        doomed = old[: max(0, len(old) - (keep - 1))]
        for version in doomed:
            self.remove_version(name, version)
        return doomed

    def remove_version(self, name: str, version: str) -> None:
        """Delete one unpacked version and its install log, durably: a power cut afterwards
        does not bring them back (a pruned version beyond ``keep_versions``, one undone or
        rolled back beside the current one)."""
        shutil.rmtree(self.version_dir(name, version), ignore_errors=True)
        self.install_log(name, version).unlink(missing_ok=True)
        if self.app_dir(name).is_dir():
            fsync_directory(self.app_dir(name))

    def remove_app(self, name: str, logs: list[Path] | None = None) -> None:
        """Delete every version of ``name``, its data, and its log files (with backups).

        The app's directory is first renamed, durably, to a hidden name no app has: a gateway
        killed during the deletion (a large app on a slow card) leaves no half app, whose
        ``current`` the next start would load and run, but that directory, which
        :meth:`remove_leftovers` deletes.

        :param logs: the app's programs' log files.
        """
        doomed = self.root / (REMOVING_PREFIX + name)
        shutil.rmtree(doomed, ignore_errors=True)  # (one a killed deletion left)
        try:
            os.rename(self.app_dir(name), doomed)
        except FileNotFoundError:
            pass  # nothing of it on disk
        else:
            fsync_directory(self.root)
            shutil.rmtree(doomed, ignore_errors=True)
        remove_logs(logs or [])

    def remove_leftovers(self) -> None:
        """Delete what deletions of apps that the gateway's end cut short left (:meth:`remove_app`)."""
        if self.root.is_dir():
            for entry in self.root.iterdir():
                if entry.name.startswith(REMOVING_PREFIX):
                    shutil.rmtree(entry, ignore_errors=True)

    def load_desired(self) -> dict[str, str]:
        """Program name -> ``running`` or ``stopped``, as last persisted (nothing yet: none).

        :raises ValueError: when the file cannot be used (unreadable, not JSON, not the wishes:
            ``{"programs": {name: "running" or "stopped"}}``); it is moved aside to
            ``desired.json.damaged`` first, and the message names it and says so.
        """
        try:
            data = read_json(self.desired_path)
            if data is None:
                return {}
            programs = data.get("programs") if isinstance(data, dict) else None
            if not isinstance(programs, dict) or not all(v in (RUNNING, STOPPED) for v in programs.values()):
                raise ValueError("not the programs' wishes ({\"programs\": {name: \"running\" or \"stopped\"}})")
        except (OSError, ValueError) as exc:
            raise ValueError(f"{self.desired_path}: {exc}; {set_aside(self.desired_path)}") from exc
        return dict(programs)

    def save_desired(self, desired: dict[str, str]) -> None:
        """Persist the operator's wishes durably."""
        body = json.dumps({"programs": dict(sorted(desired.items()))}, indent=1)
        write_atomically(self.desired_path, body.encode())

    def begin_install(self, name: str, version: str, desired: dict[str, str]) -> None:
        """Record durably, before anything of it is unpacked, that ``version`` of ``name`` is
        being installed over its current version with the wishes ``desired`` before it, and
        that it is the latest version of ``name`` installed (:meth:`versions`)."""
        body = json.dumps({"name": name, "version": version, "previous": self.current(name),
                           "desired": desired})
        write_atomically(self.installing_path, body.encode())
        # (the versions on disk now, as they are ordered: the order forgets removed ones)
        order = [v for v in self.versions(name) if v != version] + [version]
        write_json_atomically(self.app_dir(name) / ORDER_FILE, order)

    def end_install(self) -> None:
        """The install under way ended (whatever its outcome): forget its record durably."""
        self.installing_path.unlink(missing_ok=True)
        fsync_directory(self.root)

    def undo_cut_short_install(self, logs_of: Callable[[str, str], list[Path]] = lambda name, version: []
                               ) -> tuple[str, str, str | None] | None:
        """Undo on disk the install the gateway's end cut short, as a rollback would: switch
        ``current`` back, restore the wishes from before it, remove its files (the whole app
        when it had no previous version) and the logs of the programs only it had, then forget
        its record.

        :param logs_of: the log files of the programs of an app's version (none when it cannot
            tell); blocks.
        :return: its name, version and previous version, or None when no install was under way.
        """
        try:
            text = self.installing_path.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return None
        try:
            record = jsontext.loads(text)
        except ValueError:  # (written atomically: only damage from outside does this)
            record = None
        if not isinstance(record, dict):
            record = {}
        name, version = record.get("name"), record.get("version")
        previous, desired = record.get("previous"), record.get("desired")
        if not (isinstance(name, str) and isinstance(version, str) and isinstance(desired, dict)
                and isinstance(previous, (str, type(None)))
                and all(NAME.match(n) and n not in (".", "..") for n in (name, version))):
            self.end_install()
            raise ValueError(f"{self.installing_path} holds no install record: {text[:200]!r}")
        logs: list[Path] = []
        if self.current(name) == version:  # (switched: its programs were checked, and may have run)
            kept = set(logs_of(name, previous)) if previous is not None else set()
            logs = [path for path in logs_of(name, version) if path not in kept]
            self.set_current(name, previous)
        self.save_desired({str(k): str(v) for k, v in desired.items()})
        if self.current(name) is None:
            self.remove_app(name, logs)
        else:
            self.remove_version(name, version)
            remove_logs(logs)
        self.end_install()
        return name, version, previous
