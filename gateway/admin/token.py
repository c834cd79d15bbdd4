"""The admin API's bearer token for its TCP endpoint: made once, kept in a 0600 file."""

from __future__ import annotations

import secrets
import stat
from pathlib import Path

from gateway.atomic import write_atomically
from gateway.errors import GatewayError
from gateway.filelayer import makedirs_durably

#: The fewest characters a token file's token may have (one made here has 43).
MIN_TOKEN_CHARACTERS = 16


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
    if len(token) < MIN_TOKEN_CHARACTERS:
        held = "no token (it is empty)" if not token else \
            f"a token of {len(token)} character{'' if len(token) == 1 else 's'}, too short"
        raise TokenFileError(f"the admin token file {path} holds {held}: a token takes {MIN_TOKEN_CHARACTERS}"
                             " characters at least (delete the file and restart to have one made)")
    return token


def _create(path: Path) -> bytes:
    token = secrets.token_urlsafe(32).encode()
    try:
        makedirs_durably(str(path.parent), 0o700)
        write_atomically(path, token + b"\n", 0o600)
    except OSError as exc:
        raise TokenFileError(f"cannot write the admin token file {path}: {exc.strerror}") from exc
    return token
