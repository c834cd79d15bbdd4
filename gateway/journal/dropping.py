"""Deleting a whole stream's directory so that a kill midway leaves the stream or nothing.

The directory is renamed aside first (one atomic rename, made durable), then deleted; an
aside directory a killed gateway left is deleted at the next start
(:meth:`gateway.journal.service.JournalService.startService`). Both run on the journal's
I/O thread.
"""

from __future__ import annotations

import os

from gateway.filelayer import FileLayer

#: The name a dropped stream's directory takes, before its name, while it is deleted. Stream
#: names never start with a dot, so no stream is ever read from there.
ASIDE_PREFIX = ".dropped-"


def aside_path(directory: str) -> str:
    """Where stream ``directory`` goes while it is deleted: beside it, ``.dropped-<name>``."""
    parent, name = os.path.split(directory)
    return os.path.join(parent, ASIDE_PREFIX + name)


def is_aside(entry: str) -> bool:
    """Whether ``entry`` of the journal directory is a dropped stream's directory left aside."""
    return entry.startswith(ASIDE_PREFIX)


def drop_directory(files: FileLayer, directory: str) -> None:
    """Delete stream ``directory``: close the handles kept open on its files (its tail
    segment's), rename it aside and make that durable, then delete it (blocking: run on the
    journal's I/O thread).

    A kill before the rename leaves the stream whole; after it, an aside directory that the
    next start deletes.
    """
    aside = aside_path(directory)
    if files.exists(aside):  # (one a kill left, of an earlier stream of that name)
        files.remove_tree(aside)
    for sub in (directory, os.path.join(directory, "cursors")):
        if files.exists(sub):
            for entry in files.listdir(sub):
                files.close(os.path.join(sub, entry))
    files.replace(directory, aside)
    files.fsync_dir(os.path.dirname(directory))
    files.remove_tree(aside)
