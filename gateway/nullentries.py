"""Warnings for named entries (a link, a program, a container, a listener) set to null in a
configuration file: YAML's null keeps such an entry, with every default, instead of removing it."""

from __future__ import annotations

from typing import Any, Mapping

from gateway.configkeys import written_at

#: The mappings of named entries: ``(section, key, what an entry at null is)``.
NAMED_ENTRIES: tuple[tuple[str, str, str], ...] = (
    ("links", "links", "an MQTT link with every default (to tcp:host=127.0.0.1:port=1883, which may be"
                       " the gateway's own broker)"),
    ("http_links", "links", "an HTTP link with every default (an Exosite link to https://localhost)"),
    ("apps", "programs", "a program with every default"),
    ("containers", "containers", "a container with every default"),
    ("broker", "listeners", "a listener with every default"),
)


def null_entry_warnings(data: Mapping[str, Any]) -> list[str]:
    """One line for each named entry that the files' data merged, ``data``, holds as null (a
    file's null wins over the entry an earlier file sets: drop-ins merge so)."""
    lines = []
    for section, key, what in NAMED_ENTRIES:
        entries = written_at(data, (section, key))
        if not isinstance(entries, Mapping):
            continue
        for name, value in entries.items():
            if value is None:
                path = (section, key, str(name))
                lines.append(f"{'.'.join(path)}: set to null in a file, which keeps it as {what}"
                             f" (null does not remove an entry): to remove it, delete its key from every"
                             f" file that sets it")
    return lines
