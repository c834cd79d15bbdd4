"""The broker's password file (amqtt's ``FileAuthPlugin``: ``user:hash`` lines), checked with the
configuration so that a line amqtt cannot use is a configuration error that names its line,
never one that quotes it.

amqtt itself logs a line without ``:`` whole, as a warning (``Malformed line in password file:
...``), and a password written in clear (``bob:s3cret``) made every connection of that user fail
with a traceback: both put what may be a password in the log.
"""

from __future__ import annotations

from collections.abc import Iterator

from amqtt.plugins.authentication import DeprecatedSHA512CryptHasher
from pwdlib.hashers.argon2 import Argon2Hasher

#: The hashes amqtt's ``FileAuthPlugin`` verifies (argon2, and sha512-crypt, which it deprecates).
_HASHERS = (Argon2Hasher(), DeprecatedSHA512CryptHasher())


def password_file_problems(text: str) -> Iterator[str]:
    """What keeps the lines of a password file from being used, one message per line, each
    naming its line by number (and the user, when there is one) and never quoting it.

    :param text: the file's content; empty lines and ``#`` comments are skipped, as amqtt does.
    """
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if not sep or not user:
            yield f"line {number} is not user:hash (it is not shown: it may be a password)"
        elif not any(hasher.identify(hashed) for hasher in _HASHERS):
            yield (f"line {number} (user {user!r}): not an argon2 (or sha512-crypt) hash, which is all amqtt "
                   "verifies (a password written in clear?); it is not shown")
