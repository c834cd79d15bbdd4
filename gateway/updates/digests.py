"""Artifact digests: pick the strongest one announced, hash streams and files, compare."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from pathlib import Path

from gateway.shown import shown, shown_repr

#: Accepted algorithms, strongest first. MD5 and SHA-1 are used only when nothing better is given.
ALGORITHMS = ("sha256", "sha1", "md5")
_READ_SIZE = 1 << 20


def normalise_digests(digests: Mapping[str, object]) -> dict[str, str]:
    """Lower-case names (``SHA256``, ``sha-256`` -> ``sha256``) and hex values; drop unknown ones.

    :param digests: algorithm name -> hex digest, as a cloud announces them.
    :raises ValueError: when a known algorithm's value is not a string of hex digits of the
        right length.
    """
    result = {}
    for name, value in digests.items():
        key = name.lower().replace("-", "").replace("_", "")
        if key not in ALGORITHMS:
            continue
        if not isinstance(value, str):
            raise ValueError(f"{shown(name)} digest must be a string of hex digits, not {shown_repr(value)}")
        value = value.strip().lower()
        if len(value) != hashlib.new(key).digest_size * 2 or not all(c in "0123456789abcdef" for c in value):
            raise ValueError(f"{shown(name)} digest {shown_repr(value)} is not valid hex of the right length")
        result[key] = value
    return result


class DigestChecker:
    """Hashes a stream with the strongest announced algorithm (SHA-256 when none is announced).

    :param digests: normalised digests (see :func:`normalise_digests`).
    """

    def __init__(self, digests: Mapping[str, str]) -> None:
        self.algorithm = next((a for a in ALGORITHMS if a in digests), "sha256")
        self.expected = digests.get(self.algorithm)
        self._hash = hashlib.new(self.algorithm)

    def update_all(self, chunks: Iterable[bytes]) -> None:
        """Feed chunks in order (hashlib releases the GIL on big chunks, so call this off the reactor).

        :param chunks: consecutive pieces of the stream.
        """
        update = self._hash.update
        for chunk in chunks:
            update(chunk)

    def rehash_file(self, path: Path, length: int) -> None:
        """Restart the hash from the first ``length`` bytes of ``path`` (blocking).

        :param path: the part file kept from before a restart.
        :param length: how many bytes of it to hash.
        """
        self._hash = hashlib.new(self.algorithm)
        remaining = length
        with open(path, "rb") as f:
            while remaining:
                block = f.read(min(_READ_SIZE, remaining))
                if not block:
                    raise ValueError(f"{path} is shorter than {length} bytes")
                self._hash.update(block)
                remaining -= len(block)

    def reset(self) -> None:
        """Forget everything hashed so far."""
        self._hash = hashlib.new(self.algorithm)

    def hexdigest(self) -> str:
        """The digest of what was fed so far."""
        return self._hash.hexdigest()

    def matches(self) -> bool:
        """True when no digest was announced or the stream's digest equals it."""
        return self.expected is None or hmac.compare_digest(self.expected, self.hexdigest())
