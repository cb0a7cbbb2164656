"""The agent's own credential on disk (``runagent --credential-file``).

Guarantees: the file is written whole or not at all (a temporary file, fsynced, then renamed over
the old one) and is readable by its owner only (mode 0600) from the moment it exists.
Does NOT: hide it from other processes of the same user (docs/operations.md, "What a workspace's
Terraform can reach").
"""

from __future__ import annotations

import os
from pathlib import Path


class ExposedCredential(Exception):
    pass


def load_credential(path: Path) -> str | None:
    """The stored credential, or None when there is none yet. Refuses (as ssh does with a key) a
    file that others than its owner may read or write: the credential may have leaked."""
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    if mode & 0o077:
        raise ExposedCredential("%s is accessible to others (mode %o); it must be 0600" % (path, mode & 0o777))
    return text or None


def save_credential(path: Path, credential: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(".%s.tmp" % path.name)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # a leftover temporary file keeps its old mode through O_CREAT
        os.write(fd, (credential + "\n").encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
