"""The admin API's bearer token for its TCP endpoint: made once, kept in a 0600 file."""

from __future__ import annotations

import secrets
import stat
from pathlib import Path

from gateway.atomic import write_atomically
from gateway.errors import GatewayError
from gateway.filelayer import makedirs_durably


class TokenFileError(GatewayError):
    """The token file cannot be read or made, or others may read it."""


def load_or_create_token(path: Path) -> bytes:
    """The token in ``path``; a new random one is written there first if it does not exist.

    The file is written atomically with mode 0600 (:func:`~gateway.atomic.write_atomically`),
    so a crash leaves no file or a complete one, and a refused write no temp file. Blocking:
    call it off the reactor thread.

    :param path: the token file.
    :raises TokenFileError: when it is empty, its group or others have access to it, or it cannot be made.
    """
    try:
        info = path.stat()
    except FileNotFoundError:
        return _create(path)
    except OSError as exc:
        raise TokenFileError(f"cannot read the admin token file {path}: {exc.strerror}") from exc
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise TokenFileError(f"the admin token file {path} has mode {mode:04o}, which gives its group or other"
                             " users access: chmod 600 it")
    try:
        token = path.read_bytes().strip()
    except OSError as exc:  # (a directory in its place)
        raise TokenFileError(f"cannot read the admin token file {path}: {exc.strerror}") from exc
    if len(token) < 16:
        raise TokenFileError(f"the admin token file {path} holds no token (16 characters at least)")
    return token


def _create(path: Path) -> bytes:
    token = secrets.token_urlsafe(32).encode()
    try:
        makedirs_durably(str(path.parent), 0o700)
        write_atomically(path, token + b"\n", 0o600)
    except OSError as exc:
        raise TokenFileError(f"cannot write the admin token file {path}: {exc.strerror}") from exc
    return token
