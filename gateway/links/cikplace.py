"""Where an Exosite link keeps its CIK, and whether that place keeps it across a reboot.

Exosite activates a serial once: the CIK it answers is the device's only key, and a new one is
refused for an activated serial until the device is re-enabled on the platform. A ``cik_file`` on
a file system held in memory (``/run``, ``/dev/shm``: tmpfs) is written and read as any other, so
the link runs, until the next boot loses it. That is allowed (a box may be meant to start afresh),
so it is told, not refused: by the configuration's check and once when the links start.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from gateway.links.http_settings import HTTPLinkSettings
from gateway.virtualfs import memory_fs_at


def cik_path(name: str, settings: HTTPLinkSettings, state_dir: Path) -> Path:
    """The file link ``name`` keeps its CIK in: its ``cik_file`` (a relative one under
    ``state_dir``), or ``<state_dir>/links/<name>.cik`` when it names none."""
    return state_dir / (settings.cik_file or Path("links") / f"{name}.cik")


def volatile_cik_warnings(links: Mapping[str, HTTPLinkSettings], state_dir: Path) -> list[str]:
    """One warning for each Exosite link whose CIK file lies on a file system in memory
    (:func:`gateway.virtualfs.memory_fs_at`), in the configuration's order; none when each is
    kept on a disk, or when that cannot be told.

    :param links: the HTTP links by name (``http_links.links``).
    :param state_dir: the state directory, absolute.
    """
    warnings = []
    for name, settings in links.items():
        if settings.mode != "exosite":
            continue
        path = cik_path(name, settings, state_dir)
        memory = memory_fs_at(path)
        if memory is not None:
            kind, mounted_on = memory
            warnings.append(
                f"link {name}: its CIK file {path} is on {kind} (mounted on {mounted_on}), which keeps nothing"
                " across a reboot: the CIK is lost at the next boot, and Exosite activates a serial once, so the"
                " link could not activate again until the device is re-enabled on the platform; name a"
                " cik_file on a disk, or leave it out (<state_dir>/links/<name>.cik) with the state directory"
                " on a disk (exosite.md)")
    return warnings
