"""The configuration check of a CA file that an HTTP client (downloads, uploads, HTTP links,
the fleet channel) reads at start: readable, and holding at least one PEM certificate."""

from __future__ import annotations

from pathlib import Path


def ca_file_problem(path: str) -> str | None:
    """Why the CA file at ``path`` cannot be used, or ``None`` when it can."""
    try:
        pem = Path(path).read_bytes()
    except OSError as exc:
        return f"cannot read {path!r}: {exc.strerror or exc}"
    from cryptography import x509  # (only where a CA file is configured)

    try:
        x509.load_pem_x509_certificates(pem)
    except ValueError:
        return f"no PEM certificate in {path!r}"
    return None
