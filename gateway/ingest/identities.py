"""Devices activated through the ingest: the CIK issued to each serial, kept durably (mode 0600).

gmq activates a device when an app names it by ``X-Exosite-VMS`` and keeps its CIK; a
``POST /provision/activate`` through the ingest does the same. The CIKs are local: they
authenticate apps to this ingest, not to the cloud.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.atomic import read_json, set_aside, write_json_atomically
from gateway.errors import GatewayError
from gateway.ingest.form import valid_cik
from gateway.blocking import RunBlocking

#: ``ingest.max_devices`` when the config names none.
DEFAULT_MAX_DEVICES = 10_000


class TooManyDevices(GatewayError):
    """A new serial would take the devices activated locally past ``max_devices``."""


def parse_devices(data: Any) -> dict[str, dict[str, str]]:
    """The devices of a parsed ``devices.json``: serial -> its entry (``cik``, ``vendor``, ``model``).

    :raises ValueError: saying in words what is wrong: the file's shape, an entry that is no
        object or has no ``cik``, a ``cik`` that is no CIK.
    """
    if not isinstance(data, dict) or not isinstance(data.get("devices"), dict):
        raise ValueError('not {"devices": {serial: {"cik": ..., "vendor": ..., "model": ...}}}')
    devices: dict[str, dict[str, str]] = {}
    for serial, device in data["devices"].items():
        if not isinstance(device, dict):
            raise ValueError(f"the entry of {serial!r} is not an object")
        if "cik" not in device:
            raise ValueError(f"the entry of {serial!r} has no cik")
        if not isinstance(device["cik"], str) or not valid_cik(device["cik"]):
            raise ValueError(f"the cik of {serial!r} is not a CIK (40 hex characters)")
        devices[serial] = device
    return devices


class LocalIdentities:
    """Serial -> CIK for devices activated locally, persisted before a CIK is handed out.

    :param path: the JSON file (``{"devices": {serial: {"cik", "vendor", "model"}}}``).
    :param run_blocking: runs the atomic write off the reactor thread.
    :param extra_ciks: CIKs accepted without an activation (from config).
    :param max_devices: serials activated at most: an app naming a new serial each time (a
        counter, a timestamp) made the file, and the memory holding it, grow without end, and
        each new serial wrote the whole file again.
    """

    log = Logger()

    def __init__(self, path: Path, run_blocking: RunBlocking, extra_ciks: tuple[str, ...] = (),
                 max_devices: int = DEFAULT_MAX_DEVICES) -> None:
        self.path = path
        self.max_devices = max_devices
        self.run_blocking = run_blocking
        self.devices: dict[str, dict[str, str]] = {}
        self.extra = {cik.lower() for cik in extra_ciks}
        self._by_cik: dict[str, str] = {}
        self._saving: dict[str, list[Deferred[str]]] = {}
        self._pending: dict[str, dict[str, str]] = {}  # serial -> its device, waiting to be saved
        self._writing = False  # one write of the file at a time

    def load(self) -> None:
        """Read the file if it is there. One that cannot be used (not JSON, not the expected
        shape, an entry without its CIK or with one that is no CIK, or unreadable) is logged and, where it can be, moved
        aside to ``devices.json.damaged``; its devices activate again."""
        try:
            raw = read_json(self.path)  # (a symbolic link to nothing is damage: not taken for no file)
            if raw is None:
                return
            devices = parse_devices(raw)
        except (OSError, ValueError) as exc:
            self.log.error("ingest: unusable {path} ({error}; {kept}); devices will activate again",
                           path=str(self.path), error=str(exc) or type(exc).__name__,
                           kept=set_aside(self.path, secret=True))  # (their CIKs: 0600 where it is put)
            return
        self.devices = devices
        self._by_cik = {device["cik"].lower(): serial for serial, device in devices.items()}

    def serial_of(self, cik: str) -> str | None:
        """The serial a CIK was issued for (``None``: not issued here)."""
        return self._by_cik.get(cik.lower())

    def known(self, cik: str) -> bool:
        """Whether ``cik`` was issued here or listed in config."""
        return cik.lower() in self._by_cik or cik.lower() in self.extra

    def activate(self, vendor: str, model: str, serial: str) -> Deferred[str]:
        """The CIK of ``serial``: the one issued before, or a new one once it is on disk; a
        new serial fails with :class:`TooManyDevices` while ``max_devices`` are activated (or
        being saved). A file loaded with more keeps them all; only new serials are refused."""
        device = self.devices.get(serial)
        if device is not None:
            return succeed(device["cik"])
        waiting: Deferred[str] = Deferred()
        if serial in self._saving:  # two first requests at once get the same CIK
            self._saving[serial].append(waiting)
            return waiting
        held = len(self.devices) + len(self._saving)
        if held >= self.max_devices:
            return fail(TooManyDevices(
                f"the ingest holds {held} activated devices, its max_devices ({self.max_devices}): remove devices no"
                " longer used from devices.json while the gateway is stopped, or raise ingest.max_devices"))
        self._saving[serial] = [waiting]
        self._pending[serial] = {"cik": secrets.token_hex(20), "vendor": vendor, "model": model}
        if not self._writing:
            self._write()
        return waiting

    def _write(self) -> None:
        """Write the file once with every device saved and every one waiting (a group commit):
        a burst of first activations costs a write per burst, not a whole-file write each
        (2,000 new serials took 21 s one write at a time). Writes never overlap: several at
        once shared one temp file and each left the others out."""
        batch, self._pending = self._pending, {}
        self._writing = True
        devices = {"devices": {**self.devices, **batch}}  # (encoded in the thread: a large file is not the reactor's)

        def saved(_: Any) -> None:
            self.devices.update(batch)
            for serial, device in batch.items():
                self._by_cik[device["cik"]] = serial
                for w in self._saving.pop(serial):
                    w.callback(device["cik"])

        def failed(failure: Failure) -> None:
            for serial in batch:
                for w in self._saving.pop(serial):
                    w.errback(failure)

        def next_batch(_: Any) -> None:
            self._writing = False
            if self._pending:
                self._write()

        d = self.run_blocking(write_json_atomically, self.path, devices, 0o600)
        d.addCallbacks(saved, failed).addBoth(next_batch)
